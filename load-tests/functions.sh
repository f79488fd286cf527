#!/usr/bin/env bash
# A function behind shardgate against the same handler behind a plain http_proxy:
#
#   load-tests/functions.sh               # ROUNDS=5 DURATION=5
#
# The handler is examples/functions/app.py:constant (a 2.0 response "ok").
#  lambda: a `lambda` route; the gateway runs the function with AWS's runtime
#          client (python3 -m awslambdaric, concurrency 4) through its Lambda
#          Runtime API.
#  proxy:  an `http_proxy` route to load-tests/tools/handler_http.py (the same
#          handler in a small keep-alive Python HTTP server).
#  mock:   a `mock` route: the gateway alone, for reference.
# One gateway worker pinned to CPU 0; the Python processes and wrk (-c8) on
# CPU 1. Reports, per scenario, medians over alternating rounds: requests/s,
# the gateway's CPU microseconds per request (/proc/PID/stat) and p99; and the
# per-invocation overhead: the lambda route's gateway CPU per request minus the
# proxy route's.
# Writes load-tests/results/functions-$(nproc)core-<cpu>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
. load-tests/lib.sh
need_apt wrk:wrk curl:curl
python3 -c 'import awslambdaric' 2>/dev/null || python3 -m pip install --quiet awslambdaric
ports_free '1812[0-9]'
# The commit measured (read before the results file is rewritten).
REV="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!load-tests/results' || echo +changes)"
cargo build --release --quiet
SG=./target/release/shardgate
run_dir
cat >"$RUN/gw.yaml" <<YAML
workers: 1
listeners: [ { name: bench, bind: "127.0.0.1:18120" } ]
functions:
  - name: constant
    runtime_api: 127.0.0.1:18121
    command: [taskset, -c, "1", python3, -m, awslambdaric, app.constant]
    working_dir: $PWD/examples/functions
    concurrency: 4
apis:
  - name: bench
    routes:
      - { route: GET /lambda, integration: { type: lambda, function: constant } }
      - { route: GET /proxy, integration: { type: http_proxy, uri: "http://127.0.0.1:18122/proxy" } }
      - { route: GET /mock, integration: { type: mock, body: ok } }
    stages: [ { name: \$default } ]
YAML
taskset -c 1 python3 load-tests/tools/handler_http.py 18122 &
taskset -c 0 "$SG" run --config "$RUN/gw.yaml" --runtime epoll 2>"$RUN/gw.log" &
GW=$!
serving http://127.0.0.1:18120/lambda "$RUN/gw.log"
serving http://127.0.0.1:18120/proxy "$RUN/gw.log"
CLK=$(getconf CLK_TCK)
declare -A RPS CPU P99
measure() {
  local name=$1 out t0 t1 reqs secs
  taskset -c 1 wrk -t1 -c8 -d1 "http://127.0.0.1:18120/$name" >/dev/null
  t0=$(cpu_ticks "$GW")
  out=$(taskset -c 1 wrk -t1 -c8 -d"$DURATION" --latency "http://127.0.0.1:18120/$name")
  t1=$(cpu_ticks "$GW")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  if echo "$out" | grep -q 'Non-2xx'; then echo "$name: errors"; echo "$out"; exit 1; fi
  RPS[$name]+="$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}') "
  CPU[$name]+="$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v k="$CLK" 'BEGIN {printf "%.2f", (b - a) / k * 1e6 / n}') "
  P99[$name]+="$(echo "$out" | awk '$1 == "99%" {v = $2; if (v ~ /us$/) {sub("us", "", v); v /= 1000} else if (v ~ /ms$/) {sub("ms", "", v)} else if (v ~ /s$/) {sub("s", "", v); v *= 1000}; printf "%.2f", v}') "
  echo "  $name: $reqs requests"
}
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  for s in lambda proxy mock; do measure "$s"; done
done
tag=$(machine_tag)
dest="load-tests/results/functions-$(nproc)core-${tag:-unknown}.txt"
lc=$(echo "${CPU[lambda]}" | median); pc=$(echo "${CPU[proxy]}" | median); mc=$(echo "${CPU[mock]}" | median)
{
  echo "# load-tests/functions.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(python3 --version); awslambdaric $(python3 -m pip show awslambdaric 2>/dev/null | awk '/^Version/ {print $2}')"
  echo "shardgate $REV"
  echo "one gateway worker on CPU 0; Python and wrk -t1 -c8 on CPU 1; $ROUNDS alternating rounds of ${DURATION}s, medians"
  echo
  printf "%-8s %10s %22s %10s\n" scenario "req/s" "gateway cpu us/req" "p99 ms"
  for s in lambda proxy mock; do
    printf "%-8s %10s %22s %10s\n" "$s" "$(echo "${RPS[$s]}" | median)" "$(echo "${CPU[$s]}" | median)" "$(echo "${P99[$s]}" | median)"
  done
  echo
  echo "per-invocation overhead the gateway adds (lambda - proxy, gateway cpu): $(awk -v a="$lc" -v b="$pc" 'BEGIN {printf "%.2f", a - b}') us/req"
  echo "lambda route's gateway cpu against a mock route's: $(awk -v a="$lc" -v b="$mc" 'BEGIN {printf "%.2f", a / b}')x"
  echo "per round: lambda ${RPS[lambda]}/ ${CPU[lambda]}; proxy ${RPS[proxy]}/ ${CPU[proxy]}; mock ${RPS[mock]}/ ${CPU[mock]}"
} >"$dest"
echo; cat "$dest"; echo "written to $dest"
