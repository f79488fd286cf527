#!/usr/bin/env bash
# Reload under load: oha sends a steady rate through shardgate to a fast upstream
# while the config is reloaded every 100 ms (SIGHUP), alternately adding
# and removing routes; the same run without reloads is the baseline. Rounds
# alternate the two so drift hits both alike; the table gives medians.
#
#   load-tests/reload-under-load.sh                 # ROUNDS=2 DURATION=30 RATE=10000
#   ROUNDS=3 DURATION=10 load-tests/reload-under-load.sh
#
# Reported per phase: requests, non-2xx responses, connection errors, p50/p99
# latency, the gateway's CPU time per request (utime+stime from /proc over the run),
# and for the reload phase the reloads done and refused. The bars (issue 8): zero
# non-2xx on the unchanged route, zero connection errors, p99 within 10% of the
# baseline. shardgate runs one worker pinned to CPU 0; the upstream nginx and oha
# share CPU 1. Writes load-tests/results/reload-under-load-$MACHINE.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-30}
RATE=${RATE:-10000}
CONNS=${CONNS:-50}
[ "$(nproc)" -ge 2 ] || { echo "needs 2 or more CPUs (gateway on CPU 0, load on CPU 1)"; exit 1; }
ulimit -n "$(ulimit -Hn)"
. load-tests/lib.sh
need_apt nginx:nginx curl:curl python3:python3
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || { echo "installing oha (cargo install, a few minutes)"; cargo install oha --locked --quiet; }
cargo build --release --quiet
SG=./target/release/shardgate

ports_free '18081|1809[67]'

run_dir
mkdir -p "$RUN/www"
sed "s#__RUN__#$RUN#g" load-tests/peers/upstream-nginx.conf >"$RUN/upstream-nginx.conf"
taskset -c 1 nginx -c "$RUN/upstream-nginx.conf" -p "$RUN" &
TOKEN=reload-load-test-token

# The config: the route under load (GET /) never changes; `extra` routes come and
# go, and a throttle on one of them changes, on every reload.
config() { # $1: 0 or 1
  cat <<EOF
workers: 1
listeners:
  - name: bench
    bind: 127.0.0.1:18096
admin: { bind: 127.0.0.1:18097, token: "$TOKEN" }
apis:
  - name: bench
    routes:
      - route: GET /
        integration: { type: http_proxy, uri: "http://127.0.0.1:18081/" }
EOF
  if [ "$1" = 1 ]; then
    for n in 1 2 3 4 5 6 7 8; do
      echo "      - { route: \"GET /extra$n/{id}\", integration: { type: http_proxy, uri: \"http://127.0.0.1:18081/x/{id}\" } }"
    done
  fi
  cat <<EOF
      - { route: GET /toggle, integration: { type: mock, body: "v$1" } }
    stages:
      - name: \$default
        routes:
          "GET /toggle": { throttle: { rate: $((1000 + $1)), burst: 100 } }
EOF
}
config 0 >"$RUN/sg.yaml"
taskset -c 0 "$SG" run --config "$RUN/sg.yaml" --runtime epoll 2>"$RUN/sg.log" &
SGPID=$!
serving http://127.0.0.1:18096/ "$RUN/sg.log"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SGPID/stat"; }
HZ=$(getconf CLK_TCK)

reloader() { # a reload every 100 ms until $RUN/stop exists
  # Beside the load generator, and with shell builtins only (printf, kill, read):
  # a fork and exec per reload would take CPU from the upstream and oha on CPU 1
  # and show up as gateway latency. SIGHUP is the trigger; the log counts them.
  taskset -p -c 1 $BASHPID >/dev/null
  local i=0 c0 c1
  c0=$(config 0)
  c1=$(config 1)
  exec 9<> <(:)
  while [ ! -e "$RUN/stop" ]; do
    i=$((i + 1))
    if [ $((i % 2)) = 1 ]; then printf '%s\n' "$c1" >"$RUN/sg.yaml"; else printf '%s\n' "$c0" >"$RUN/sg.yaml"; fi
    kill -HUP "$SGPID"
    read -r -t 0.1 -u 9 || true
  done
}

phase() { # $1: base|reload; prints one result line
  rm -f "$RUN/stop"
  local before_ok before_bad
  before_ok=$(grep -c ' reloaded ' "$RUN/sg.log" || true)
  before_bad=$(grep -c 'reload refused' "$RUN/sg.log" || true)
  [ "$1" = reload ] && { reloader & }
  local t0 t1
  t0=$(cpu_ticks)
  taskset -c 1 oha -z "${DURATION}s" -q "$RATE" -c "$CONNS" --no-tui --latency-correction \
    --output-format json http://127.0.0.1:18096/ >"$RUN/oha.json" 2>/dev/null
  t1=$(cpu_ticks)
  touch "$RUN/stop"
  sleep 0.5
  if [ "$1" = reload ]; then
    echo "$(($(grep -c ' reloaded ' "$RUN/sg.log") - before_ok)) $(($(grep -c 'reload refused' "$RUN/sg.log" || true) - before_bad))" >"$RUN/reloads"
  else
    rm -f "$RUN/reloads"
  fi
  python3 - "$1" "$RUN/oha.json" "$t0" "$t1" "$HZ" "$RUN/reloads" <<'EOF'
import json, os, sys
phase, path, t0, t1, hz, rl = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
d = json.load(open(path))
codes = {int(k): v for k, v in d.get("statusCodeDistribution", {}).items()}
ok = sum(v for k, v in codes.items() if 200 <= k < 300)
non2xx = sum(v for k, v in codes.items() if not 200 <= k < 300)
# Requests still open when -z ends are cut by oha itself, not failures.
errors = sum(v for k, v in d.get("errorDistribution", {}).items() if "deadline" not in k)
lat = d["latencyPercentiles"]
total = ok + non2xx
cpu_us = (t1 - t0) / hz * 1e6 / max(total, 1)
reloads = open(rl).read().split() if os.path.exists(rl) else ["-", "-"]
print(f"{phase:7s} requests={total} non2xx={non2xx} errors={errors} "
      f"p50_us={lat['p50'] * 1e6:.0f} p99_us={lat['p99'] * 1e6:.0f} cpu_us_per_req={cpu_us:.2f} "
      f"reloads_ok={reloads[0]} reloads_failed={reloads[1]}")
EOF
}

# Warm-up.
taskset -c 1 oha -z 2s -q "$RATE" -c "$CONNS" --no-tui --output-format quiet http://127.0.0.1:18096/ >/dev/null 2>&1 || true
LINES=()
for r in $(seq "$ROUNDS"); do
  for p in base reload; do
    line=$(phase "$p")
    echo "round $r $line"
    LINES+=("$line")
  done
done

OUT="load-tests/results/reload-under-load-${MACHINE:-$(nproc)core}.txt"  # MACHINE=2core-amd-epyc
{
  echo "# reload under load: $(date -u +%F) $(uname -r), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "# shardgate $(git rev-parse --short HEAD), 1 worker on CPU 0; oha -q $RATE -c $CONNS for ${DURATION}s on CPU 1 with the upstream nginx"
  echo "# reload phase: SIGHUP every 100 ms, 8 routes added/removed and a throttle changed each time"
  printf '%s\n' "${LINES[@]}"
  printf '%s\n' "${LINES[@]}" | python3 -c '
import re, statistics, sys
rows = {}
for line in sys.stdin:
    phase = line.split()[0]
    kv = dict(re.findall(r"(\w+)=(\S+)", line))
    rows.setdefault(phase, []).append(kv)
med = lambda p, k: statistics.median(float(r[k]) for r in rows[p])
tot = lambda p, k: sum(int(r[k]) for r in rows[p])
b99, r99 = med("base", "p99_us"), med("reload", "p99_us")
bc, rc = med("base", "cpu_us_per_req"), med("reload", "cpu_us_per_req")
print("median p99: base %.0f us, reload %.0f us: %.3fx (bar <= 1.10)" % (b99, r99, r99 / b99))
print("median CPU/request: base %.2f us, reload %.2f us" % (bc, rc))
print("non-2xx in reload phases: %d (bar 0); connection errors: %d (bar 0)" % (tot("reload", "non2xx"), tot("reload", "errors")))
print("reloads done: %d, refused: %d" % (tot("reload", "reloads_ok"), tot("reload", "reloads_failed")))
'
} | tee "$OUT"
echo "reload times (ms) from the gateway's log:"
grep -o 'ms=[0-9]*' "$RUN/sg.log" | cut -d= -f2 | sort -n | awk '{a[NR]=$1} END {if (NR) printf "  n=%d median=%s p90=%s max=%s\n", NR, a[int(NR/2)+1], a[int(NR*0.9)+1], a[NR]}'
grep -E "refused|panicked|ERROR" "$RUN/sg.log" | tail -5 || true
