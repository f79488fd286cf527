#!/usr/bin/env bash
# Soak: DURATION seconds (default 3600) of mixed traffic at a steady RATE
# (default 200 requests/s) through shardgate, with a config reload every
# RELOAD_EVERY seconds (default 60). The traffic (load-tests/tools/soak.py):
# keep-alive and new connections, keyed (API key + usage plan) and unkeyed,
# cache hits and misses, malformed requests (400/431), unknown routes, slow
# upstream answers, and upstream faults (reset before answering, close midway
# through the body, a body that stalls 2 s) from a fault-injecting upstream.
#
#   load-tests/soak.sh                          # 60 minutes
#   DURATION=120 RATE=100 load-tests/soak.sh    # a short check
#
# Reported: requests, statuses, unexpected answers (a status its class may not get,
# or a cut connection outside the fault routes), p50/p99/p999 latency per window
# (slow, fault and malformed requests left out), the gateway's RSS and open file
# descriptors every minute, RSS growth from the end of the first window to the
# end, and descriptors after the load against before it (once the upstream pool's
# 30 s idle timeout has passed). Bars (issue 16): RSS growth under 10%, descriptors
# back to the baseline, 0 unexpected 5xx. Writes
# load-tests/results/soak-$MACHINE.txt; exits 1 if a bar is missed.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-3600}
RATE=${RATE:-200}
RELOAD_EVERY=${RELOAD_EVERY:-60}
MACHINE=${MACHINE:-$(hostname)}
ulimit -n "$(ulimit -Hn)"
. load-tests/lib.sh
need_apt curl:curl python3:python3
cargo build --release --quiet
SG=./target/release/shardgate
GW=18121 ADMIN=18122 UP=18123
ports_free '18121|18122|18123'

COMMIT=$(git rev-parse --short HEAD)
run_dir
TOKEN=soak-admin-token-0123456789
export SOAK_API_KEY=soakkey0123456789abcdefXYZ

python3 load-tests/tools/soak.py upstream $UP &
config() { # $1: 0 or 1 (a reload toggles a route and a throttle)
  cat <<EOF
workers: auto
listeners:
  - name: public
    bind: 127.0.0.1:$GW
admin: { bind: 127.0.0.1:$ADMIN, token: "$TOKEN" }
store: { path: $RUN/store }
apis:
  - name: soak
    routes:
      - { route: GET /ok, integration: { type: http_proxy, uri: "http://127.0.0.1:$UP/ok" } }
      - { route: GET /big, integration: { type: http_proxy, uri: "http://127.0.0.1:$UP/big" } }
      - { route: GET /slow, integration: { type: http_proxy, uri: "http://127.0.0.1:$UP/slow" } }
      - { route: GET /cached, integration: { type: http_proxy, uri: "http://127.0.0.1:$UP/cached" } }
      - { route: "GET /fault/{kind}", integration: { type: http_proxy, uri: "http://127.0.0.1:$UP/fault/{kind}" } }
      - { route: POST /keyed, api_key_required: true, integration: { type: http_proxy, uri: "http://127.0.0.1:$UP/keyed" } }
      - { route: GET /mock, integration: { type: mock, headers: { content-type: application/json }, body: '{"mock":true}' } }
EOF
  [ "$1" = 1 ] && echo "      - { route: GET /extra, integration: { type: mock, body: extra } }"
  cat <<EOF
    stages:
      - name: prod
        throttle: { rate: $((100000 + $1)), burst: 100000 }
        cache: { capacity_mb: 16, ttl_s: 5 }
        access_log: { path: $RUN/access.log, format: json }
        routes:
          "GET /cached": { cache: { ttl_s: 5, key: [query.k] } }
usage_plans:
  - name: soak
    stages: [soak/prod]
    throttle: { rate: 100000, burst: 100000 }
    quota: { limit: 100000000, period: day }
api_keys:
  - { name: soak, value: { env: SOAK_API_KEY }, plans: [soak] }
EOF
}
config 0 >"$RUN/sg.yaml"
"$SG" run --config "$RUN/sg.yaml" 2>"$RUN/sg.log" &
SGPID=$!
serving "http://127.0.0.1:$GW/prod/mock" "$RUN/sg.log"

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$SGPID/status"; }
fds() { ls "/proc/$SGPID/fd" | wc -l; }
sleep 1
RSS0=$(rss_kb) FDS0=$(fds)

# Every 10 s: elapsed, RSS (KiB), open descriptors.
sampler() {
  local t0=$SECONDS
  while [ ! -e "$RUN/stop" ]; do
    echo "$((SECONDS - t0)) $(rss_kb) $(fds)" >>"$RUN/samples"
    sleep 10
  done
}
reloader() {
  local i=0 code
  while [ ! -e "$RUN/stop" ]; do
    sleep "$RELOAD_EVERY"
    [ -e "$RUN/stop" ] && break
    i=$((i + 1))
    config $((i % 2)) >"$RUN/sg.yaml.new" && mv "$RUN/sg.yaml.new" "$RUN/sg.yaml"
    code=$(curl -s -o "$RUN/reload.json" -w '%{http_code}' -X POST \
      -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$ADMIN/admin/reload")
    echo "$code" >>"$RUN/reloads"
  done
}
sampler &
reloader &
python3 load-tests/tools/soak.py load "127.0.0.1:$GW" "$DURATION" "$RATE" "$SOAK_API_KEY" "$RUN/load.json" >"$RUN/seconds.jsonl"
touch "$RUN/stop"
# The load generator closed its connections; the upstream pool's idle connections
# close 30 s after their last use (swept once a second).
sleep 35
RSS1=$(rss_kb) FDS1=$(fds)
kill -0 $SGPID 2>/dev/null || { echo "the gateway died"; tail -50 "$RUN/sg.log"; exit 1; }

mkdir -p load-tests/results
OUTFILE=load-tests/results/soak-$MACHINE.txt
python3 - "$RUN" "$RSS0" "$FDS0" "$RSS1" "$FDS1" "$DURATION" "$RATE" "$RELOAD_EVERY" "$COMMIT" >"$OUTFILE" <<'PY'
import json, sys, platform
run, rss0, fds0, rss1, fds1, duration, rate, every, commit = sys.argv[1:]
rss0, fds0, rss1, fds1 = int(rss0), int(fds0), int(rss1), int(fds1)
load = json.load(open(f"{run}/load.json"))
samples = [tuple(map(int, l.split())) for l in open(f"{run}/samples")]
reloads = open(f"{run}/reloads").read().split() if __import__("os").path.exists(f"{run}/reloads") else []
log = open(f"{run}/sg.log").read()
first_window_end = load["windows"][0]["until_s"] if load["windows"] else 0
after_warmup = next((s for s in samples if s[0] >= first_window_end), samples[0])
peak = max(s[1] for s in samples)
growth = (rss1 - after_warmup[1]) / after_warmup[1] * 100
print(f"# shardgate soak: {int(float(duration))} s at {rate} requests/s, a reload every {every} s")
print(f"# machine: {platform.node()}, {platform.machine()}, kernel {platform.release()}, {__import__('os').cpu_count()} CPUs")
print(f"# commit: {commit}")
print()
print(f"requests            {load['requests']}")
print(f"statuses            {json.dumps(load['status'])}  (cut: a fault route cut midway, or a malformed request answered by a close)")
print(f"unexpected answers  {load['unexpected']}  {load['unexpected_kinds']}")
print(f"client errors       {load['errors']}  (a cut connection outside the fault and malformed classes)")
print(f"reloads             {len(reloads)}, answered {dict((c, reloads.count(c)) for c in sorted(set(reloads)))}")
print(f"gateway panics      {log.count('panicked')}")
print(f"latency (ms)        p50 {load['p50_ms']}  p99 {load['p99_ms']}  p999 {load['p999_ms']}  (slow, fault and malformed requests left out)")
print()
print("window_end_s  requests  p50_ms  p99_ms  p999_ms  unexpected")
for w in load["windows"]:
    print(f"{w['until_s']:>12}  {w['requests']:>8}  {w['p50_ms']:>6}  {w['p99_ms']:>6}  {w['p999_ms']:>7}  {w['unexpected']:>10}")
print()
print("elapsed_s  rss_kib  fds")
for s in samples[::6]:
    print(f"{s[0]:>9}  {s[1]:>7}  {s[2]:>3}")
print()
print(f"RSS (KiB): before load {rss0}, after the first window {after_warmup[1]}, peak {peak}, end {rss1}: growth {growth:+.1f}% (bar: under 10%)")
print(f"open fds: before load {fds0}, 35 s after the load {fds1} (bar: back to the baseline)")
ok = growth < 10 and fds1 <= fds0 and load["unexpected"] == 0 and log.count("panicked") == 0
print(f"verdict: {'PASS' if ok else 'FAIL'}")
PY
cat "$OUTFILE"
grep -q "verdict: PASS" "$OUTFILE"
