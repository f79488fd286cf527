#!/usr/bin/env bash
# Proxy benchmark of shardgate's two monoio drivers (io_uring, epoll) beside nginx
# and issue 23's io_uring prototype (load-tests/tools/uring-proxy),
# small GET over 50 keep-alive connections. One proxy worker pinned to CPU 0; the
# upstream (nginx) and wrk share CPU 1. Rounds are interleaved so drift hits all alike.
# Prints requests/s, p50/p99 and the proxy's CPU-microseconds per request (utime+stime
# from /proc/PID/stat over the run / requests; the kernel's part, stime, beside it),
# medians over ROUNDS, and the median over rounds of CPU per request / nginx's.
#   load-tests/drivers.sh [ROUNDS=3] [SECONDS=10]
#   BEFORE=/tmp/shardgate-old load-tests/drivers.sh   # also that binary's io_uring
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
DURATION=${2:-10}
CONNS=${CONNS:-50}
need() { command -v "$1" >/dev/null || { echo "installing $2"; apt-get install -y -qq "$2" >/dev/null; }; }
need wrk wrk
need nginx nginx
cargo build --release --quiet
# Issue 23's prototype: the worker loop on the io-uring crate itself (a floor: a
# byte relay, no HTTP), for the same small GET.
(cd load-tests/tools/uring-proxy && cargo build --release --quiet)
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$RUN"' EXIT
sed "s#__RUN__#$RUN#g" load-tests/peers/upstream-nginx.conf >"$RUN/upstream.conf"
sed "s#__RUN__#$RUN#g" load-tests/peers/proxy-nginx.conf >"$RUN/proxy-nginx.conf"
taskset -c 1 nginx -c "$RUN/upstream.conf" -p "$RUN" &
sleep 0.5

clk=$(getconf CLK_TCK)
. load-tests/lib.sh  # cpu_ticks, sys_ticks

# start_proxy NAME -> sets PID and PORT
start_proxy() {
  case "$1" in
    nginx) taskset -c 0 nginx -c "$RUN/proxy-nginx.conf" -p "$RUN" & PID=$!; PORT=18082 ;;
    before-io_uring) taskset -c 0 "$BEFORE" run --config load-tests/peers/shardgate.yaml --runtime io_uring 2>"$RUN/sg-$1.log" & PID=$!; PORT=18083 ;;
    uring-proto) taskset -c 0 load-tests/tools/uring-proxy/target/release/uring-proxy 18084 127.0.0.1:18081 2>"$RUN/proto.log" & PID=$!; PORT=18084 ;;
    io_uring|epoll) taskset -c 0 ./target/release/shardgate run --config load-tests/peers/shardgate.yaml --runtime "$1" 2>"$RUN/sg-$1.log" & PID=$!; PORT=18083 ;;
  esac
  MAIN=$PID
  case "$1" in nginx) ;; *) ;;
  esac
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && break; sleep 0.1; done
  # nginx forks its worker: measure the worker process.
  if [ "$1" = nginx ]; then sleep 0.2; PID=$(pgrep -P "$PID" | head -1); fi
}
stop_proxy() {
  kill "$MAIN"
  wait "$MAIN" 2>/dev/null || true
  sleep 0.3
}

declare -A RPS P50 P99 CPU SYS RATIO LAST
NAMES=(io_uring epoll nginx uring-proto)
if [ -n "${BEFORE:-}" ]; then NAMES=(before-io_uring "${NAMES[@]}"); fi
for r in $(seq "$ROUNDS"); do
  for name in "${NAMES[@]}"; do
    start_proxy "$name"
    taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PORT/" >/dev/null  # warm-up
    t0=$(cpu_ticks "$PID"); s0=$(sys_ticks "$PID")
    out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$PORT/")
    t1=$(cpu_ticks "$PID"); s1=$(sys_ticks "$PID")
    stop_proxy "$name"
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}')
    cpu_us=$(awk -v d="$((t1 - t0))" -v c="$clk" -v n="$reqs" 'BEGIN { printf "%.2f", d / c * 1e6 / n }')
    sys_us=$(awk -v d="$((s1 - s0))" -v c="$clk" -v n="$reqs" 'BEGIN { printf "%.2f", d / c * 1e6 / n }')
    RPS[$name]+="$rps "; P50[$name]+="$p50 "; P99[$name]+="$p99 "; CPU[$name]+="$cpu_us "; SYS[$name]+="$sys_us "; LAST[$name]=$cpu_us
    echo "round $r $name: $rps req/s p50 $p50 p99 $p99 cpu ${cpu_us}us/req (kernel ${sys_us}) ${errs}"
  done
  # This round's CPU per request as a ratio to nginx's in the same round.
  for name in "${NAMES[@]}"; do
    RATIO[$name]+="$(awk -v a="${LAST[$name]}" -v b="${LAST[nginx]}" 'BEGIN { printf "%.2f", a / b }') "
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# Latencies come as e.g. 1.23ms / 850.00us: normalise to microseconds for the median.
to_us() { for v in $1; do case "$v" in *us) echo "${v%us}";; *ms) awk -v x="${v%ms}" 'BEGIN{print x*1000}';; *s) awk -v x="${v%s}" 'BEGIN{print x*1000000}';; esac; done | tr '\n' ' '; }
echo
echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS interleaved rounds, medians"
printf '%-16s %12s %10s %10s %12s %12s %10s\n' proxy req/s p50_us p99_us cpu_us/req kernel_us/req vs_nginx
for name in "${NAMES[@]}"; do
  printf '%-16s %12s %10s %10s %12s %12s %10s\n' "$name" \
    "$(echo "${RPS[$name]}" | median)" "$(to_us "${P50[$name]}" | median)" \
    "$(to_us "${P99[$name]}" | median)" "$(echo "${CPU[$name]}" | median)" "$(echo "${SYS[$name]}" | median)" "$(echo "${RATIO[$name]}" | median)"
done
