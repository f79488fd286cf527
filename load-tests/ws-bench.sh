#!/usr/bin/env bash
# WebSocket API benchmarks, in one run:
#
#   load-tests/ws-bench.sh             # CONNS=1000 DURATION=10 ROUNDS=3
#
# 1. @connections fan-out: CONNS WebSocket connections held open (one Python
#    process, load-tests/tools/ws_fanout.py, counting what arrives); wrk POSTs
#    to them in turn with pre-signed SigV4 requests (signed once by botocore,
#    replayed) over 16 keep-alive connections, spread over the gateway's two
#    workers by the kernel, so about half the posts reach a connection held by
#    the other worker. Figures: messages delivered per second (counted by the
#    receivers), the gateway's CPU microseconds per delivered message
#    (/proc/PID/stat), the POSTs' p99.
# 2. Echo round trips, one message in flight per connection, 16 connections
#    (load-tests/tools/ws_rtt.py): through a WebSocket API whose `$default`
#    route answers with a route response (a mock; and an HTTP integration to
#    nginx), against a direct WebSocket echo server (the `websockets` package's,
#    the same library the client uses) in the same run: p50/p99 and, for the
#    gateway, CPU microseconds per message. One gateway worker and the direct
#    server on CPU 0, the client and nginx on CPU 1.
#
# Writes load-tests/results/ws-bench-$(nproc)core-<cpu>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-1000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
RTT_N=${RTT_N:-10000}
. load-tests/lib.sh
need_apt nginx:nginx wrk:wrk curl:curl
ports_free '1816[0-9]'
REV="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!load-tests/results' || echo +changes)"
cargo build --release --quiet
ulimit -n $((CONNS * 2 + 1000)) 2>/dev/null || true
run_dir
python3 load-tests/tools/ws_echo_backend.py >"$RUN/echo.port" &
for _ in $(seq 50); do [ -s "$RUN/echo.port" ] && break; sleep 0.1; done
ECHO=$(cat "$RUN/echo.port")
cat >"$RUN/nginx.conf" <<CONF
master_process off;
worker_processes 1;
daemon off;
error_log $RUN/nginx-error.log;
pid $RUN/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:18162; location / { return 200 "ok"; } }
}
CONF
nginx -c "$RUN/nginx.conf" &
cat >"$RUN/sg.yaml" <<YAML
workers: 2
listeners: [ { name: ws, bind: "127.0.0.1:18160" } ]
apis:
  - name: fan
    type: websocket
    connections_authorizer: machines
    authorizers:
      - name: machines
        type: sigv4
        region: us-east-1
        access_keys:
          - { id: AKIDBENCH0123456789, secret: bench-secret-0123456789, allow: ["fan/prod/*/@connections/*"] }
    routes:
      - { route: \$default, route_response: true, integration: { type: http_proxy, uri: "http://127.0.0.1:$ECHO/echo" } }
      - { route: echo, route_response: true, integration: { type: mock, body: ok } }
      - { route: nginx, route_response: true, integration: { type: http_proxy, uri: "http://127.0.0.1:18162/" } }
    stages: [ { name: prod, limits: { idle_timeout_s: 3600 } } ]
YAML
target/release/shardgate run --config "$RUN/sg.yaml" 2>"$RUN/sg.log" &
GW=$!
for _ in $(seq 100); do grep -q "addr=" "$RUN/sg.log" 2>/dev/null && break; sleep 0.1; done
taskset -c 0 python3 tests/support/ws_echo.py serve >"$RUN/direct.port" &
for _ in $(seq 50); do [ -s "$RUN/direct.port" ] && break; sleep 0.1; done
DIRECT=$(cat "$RUN/direct.port")
CLK=$(getconf CLK_TCK)
ms() { awk '{v = $1; if (v ~ /us$/) {sub("us", "", v); v /= 1000} else if (v ~ /ms$/) {sub("ms", "", v)} else if (v ~ /s$/) {sub("s", "", v); v *= 1000}; printf "%.2f", v}'; }

echo "== fan-out: $CONNS connections"
mkfifo "$RUN/ctl"
python3 load-tests/tools/ws_fanout.py listen ws://127.0.0.1:18160/prod "$CONNS" "$RUN/ids" <"$RUN/ctl" >"$RUN/listen.out" &
exec 7>"$RUN/ctl"
for _ in $(seq 600); do grep -q READY "$RUN/listen.out" 2>/dev/null && break; sleep 0.1; done
grep -q READY "$RUN/listen.out" || { echo "receivers not ready"; cat "$RUN/sg.log" | tail; exit 1; }
python3 load-tests/tools/ws_fanout.py sign http://127.0.0.1:18160/prod "$RUN/ids" AKIDBENCH0123456789 bench-secret-0123456789 us-east-1 "$RUN/fan.lua"
declare -A V
# Warm-up: its posts are delivered too, and counted.
posts=$(wrk -t1 -c16 -d1 -s "$RUN/fan.lua" http://127.0.0.1:18160 | awk '/requests in/ {print $1}')
for r in $(seq "$ROUNDS"); do
  t0=$(cpu_ticks "$GW")
  out=$(wrk -t1 -c16 -d"$DURATION" --latency -s "$RUN/fan.lua" http://127.0.0.1:18160)
  t1=$(cpu_ticks "$GW")
  if echo "$out" | grep -q 'Non-2xx'; then echo "errors:"; echo "$out"; exit 1; fi
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  V[fan_rps]+="$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}') "
  V[fan_p99]+="$(echo "$out" | awk '$1 == "99%" {print $2}' | ms) "
  V[fan_cpu]+="$(awk -v a="$t0" -v b="$t1" -v n="$n" -v k="$CLK" 'BEGIN {printf "%.2f", (b - a) / k * 1e6 / n}') "
  posts=$((posts + n))
  echo "  round $r: $n posts"
done
echo >&7
for _ in $(seq 300); do [ "$(wc -l <"$RUN/listen.out")" -ge 2 ] && break; sleep 0.1; done
delivered=$(tail -1 "$RUN/listen.out")
echo "  delivered $delivered of $posts posts"

echo "== echo round trips"
# One worker on CPU 0 (the direct server there too); the client and nginx on
# CPU 1, so no process waits for a core.
kill "$GW"; wait "$GW" 2>/dev/null || true
sed -i 's/^workers: 2/workers: 1/' "$RUN/sg.yaml"
taskset -c 0 target/release/shardgate run --config "$RUN/sg.yaml" 2>"$RUN/sg1.log" &
GW=$!
for _ in $(seq 100); do grep -q "addr=" "$RUN/sg1.log" 2>/dev/null && break; sleep 0.1; done
taskset -pc 1 "$(cat "$RUN/nginx.pid")" >/dev/null
rtt() {
  local name=$1 url=$2 msg=$3 t0 t1 out
  t0=$(cpu_ticks "$GW")
  out=$(taskset -c 1 python3 load-tests/tools/ws_rtt.py "$url" 16 $((RTT_N / 16)) "$msg")
  t1=$(cpu_ticks "$GW")
  V[${name}_p50]+="$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p50"])') "
  V[${name}_p99]+="$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["p99"])') "
  V[${name}_cpu]+="$(awk -v a="$t0" -v b="$t1" -v n="$RTT_N" -v k="$CLK" 'BEGIN {printf "%.2f", (b - a) / k * 1e6 / n}') "
  echo "  $name: $out"
}
for r in $(seq "$ROUNDS"); do
  rtt direct "ws://127.0.0.1:$DIRECT/" '{"action":"echo"}'
  rtt mock ws://127.0.0.1:18160/prod '{"action":"echo"}'
  rtt nginx ws://127.0.0.1:18160/prod '{"action":"nginx"}'
done
tag=$(machine_tag)
dest="load-tests/results/ws-bench-$(nproc)core-${tag:-unknown}.txt"
{
  echo "# load-tests/ws-bench.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(python3 --version); websockets $(python3 -m pip show websockets 2>/dev/null | awk '/^Version/ {print $2}')"
  echo "shardgate $REV, runtime as detected (io_uring, else epoll)"
  echo
  echo "@connections fan-out to $CONNS connections (2 gateway workers; wrk -t1 -c16, pre-signed POSTs; $ROUNDS rounds of ${DURATION}s, medians; no pinning)"
  echo "  posts/s: $(echo "${V[fan_rps]}" | median)   messages delivered: $delivered of $posts posts answered 200 (warm-up included)"
  echo "  gateway cpu us per delivered message: $(echo "${V[fan_cpu]}" | median)   POST p99 ms: $(echo "${V[fan_p99]}" | median)"
  echo
  echo "echo round trips, 16 connections, one message in flight each, $RTT_N messages per round, $ROUNDS rounds, medians"
  echo "(one gateway worker and the direct server on CPU 0; the client and nginx on CPU 1)"
  printf "  %-44s %8s %8s %18s\n" target "p50 ms" "p99 ms" "gateway cpu us/msg"
  printf "  %-44s %8s %8s %18s\n" "direct (websockets echo server)" "$(echo "${V[direct_p50]}" | median)" "$(echo "${V[direct_p99]}" | median)" "-"
  printf "  %-44s %8s %8s %18s\n" "gateway, route response from a mock" "$(echo "${V[mock_p50]}" | median)" "$(echo "${V[mock_p99]}" | median)" "$(echo "${V[mock_cpu]}" | median)"
  printf "  %-44s %8s %8s %18s\n" "gateway, route response from nginx (http)" "$(echo "${V[nginx_p50]}" | median)" "$(echo "${V[nginx_p99]}" | median)" "$(echo "${V[nginx_cpu]}" | median)"
  echo "  per round (p99): direct ${V[direct_p99]}/ mock ${V[mock_p99]}/ nginx ${V[nginx_p99]}"
} >"$dest"
echo; cat "$dest"; echo "written to $dest"
