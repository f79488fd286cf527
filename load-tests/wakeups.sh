#!/usr/bin/env bash
# Who pays for waking the proxy (issue 23, the 16 KiB p99): compare.sh's 16k
# scenario (one proxy worker on CPU 0; wrk -c50 and the upstream nginx on CPU 1),
# with per request: requests/s, p99, the proxy's CPU, CPU 1's CPU (wrk and the
# upstream's worker), and the interrupts CPU 0 received from CPU 1 (function-call
# and rescheduling IPIs, /proc/interrupts: each is a wake-up of an idle CPU 0,
# paid for on CPU 1, and on a virtual machine an exit to the hypervisor).
# Proxies: shardgate as configured (busy_poll_us 0), shardgate with
# busy_poll_us: 20, nginx. Interleaved rounds; medians.
#
#   load-tests/wakeups.sh                       # ROUNDS=5 DURATION=4 URLPATH=/files/16k
#   SG=/tmp/shardgate-old load-tests/wakeups.sh
#   POST=1 load-tests/wakeups.sh                # compare.sh's post-4k: POST /post, 4 KiB
#
# Writes load-tests/results/wakeups-<16k|1k|64k|small|post-4k>-$(nproc)core-<cpu>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-4}
URLPATH=${URLPATH:-/files/16k}
WRK_SCRIPT=()
if [ -n "${POST:-}" ]; then
  URLPATH=/post
  WRK_SCRIPT=(-s load-tests/wrk/post-4k.lua)
fi
[ "$(nproc)" -ge 2 ] || { echo "needs 2 or more CPUs (proxy on CPU 0, load on CPU 1)"; exit 1; }
. load-tests/lib.sh
need_apt wrk:wrk nginx:nginx curl:curl python3:python3
ports_free '1808[1-5]'
if [ -z "${SG:-}" ]; then
  cargo build --release --quiet
  SG=./target/release/shardgate
fi
REV="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!load-tests/results' || echo +changes)"
run_dir
{ echo "busy_poll_us: 20"; sed 's/18083/18085/' load-tests/peers/shardgate.yaml; } >"$RUN/sg-poll.yaml"
side_by_side "$SG" load-tests/peers/shardgate.yaml "$SG" "$RUN/sg-poll.yaml" "$URLPATH"
# IPIs CPU 0 received (function call + rescheduling).
ipis0() { awk '/^ *(CAL|RES):/ {n += $2} END {print n}' /proc/interrupts; }

PROXIES=("shardgate:18083:$APID" "shardgate+poll20:18085:$BPID" "nginx:18082:$NPID")
declare -A R
for r in $(seq "$ROUNDS"); do
  for p in "${PROXIES[@]}"; do
    IFS=: read -r name port pid <<<"$p"
    taskset -c 1 wrk -t1 -c50 -d1s "${WRK_SCRIPT[@]}" "http://127.0.0.1:$port$URLPATH" >/dev/null
    i0=$(ipis0); c0=$(cpu_ticks "$pid"); u0=$(cpu_ticks "$UPW")
    taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" --latency "${WRK_SCRIPT[@]}" "http://127.0.0.1:$port$URLPATH" >"$RUN/wrk.txt" &
    W=$!
    # wrk's own CPU: read while it runs (it is gone once it exits).
    w0=$(cpu_ticks "$W"); w1=$w0
    while kill -0 "$W" 2>/dev/null; do w1=$(cpu_ticks "$W" 2>/dev/null || echo "$w1"); sleep 0.1; done
    wait "$W"
    i1=$(ipis0); c1=$(cpu_ticks "$pid"); u1=$(cpu_ticks "$UPW")
    req=$(awk '/requests in/ {print $1}' "$RUN/wrk.txt")
    errs=$(awk '/Non-2xx|Socket errors/' "$RUN/wrk.txt")
    [ -z "$errs" ] || { echo "$name: $errs"; exit 1; }
    hz=$(getconf CLK_TCK)
    line=$(python3 - "$req" "$DURATION" "$((c1 - c0))" "$((u1 - u0 + w1 - w0))" "$((i1 - i0))" "$hz" "$RUN/wrk.txt" <<'EOF'
import re, sys
req, dur, proxy, cpu1, ipis, hz = (float(x) for x in sys.argv[1:7])
p99 = next(l.split()[1] for l in open(sys.argv[7]) if l.strip().startswith("99%"))
m = re.match(r"([\d.]+)(us|ms|s)", p99)
us = float(m.group(1)) * {"us": 1, "ms": 1e3, "s": 1e6}[m.group(2)]
print(f"{req / dur:.0f} {us:.0f} {proxy / hz * 1e6 / req:.2f} {cpu1 / hz * 1e6 / req:.2f} {ipis / req:.3f}")
EOF
)
    echo "round $r $name: req/s p99_us proxy_cpu_us cpu1_us ipis_to_cpu0 = $line"
    R[$name]+="$line"$'\n'
  done
done

tag=$(machine_tag)
name=${URLPATH##*/}
[ -z "${POST:-}" ] || name=post-4k
OUT="load-tests/results/wakeups-${name:-small}-$(nproc)core-${tag:-unknown}.txt"
{
  echo "# load-tests/wakeups.sh, $(date -u +%Y-%m-%dT%H:%MZ), shardgate $REV"
  echo "machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'); kernel $(uname -r)"
  echo "wrk -t1 -c50 ${DURATION}s ${POST:+POST 4 KiB }$URLPATH, $ROUNDS interleaved rounds, medians; per request:"
  printf '%-18s %9s %8s %10s %9s %13s\n' proxy req/s p99_us proxy_us cpu1_us ipis_to_cpu0
  for p in "${PROXIES[@]}"; do
    name=${p%%:*}
    printf '%-18s' "$name"
    for col in 1 2 3 4 5; do
      printf ' %9s' "$(printf '%s' "${R[$name]}" | awk -v c=$col '{print $c}' | median)"
    done
    echo
  done
  echo "proxy_us: the proxy process's CPU; cpu1_us: wrk's and the upstream worker's CPU, both on CPU 1;"
  echo "ipis_to_cpu0: function-call and rescheduling interrupts CPU 0 received (wake-ups of an idle CPU 0)."
} | tee "$OUT"
