#!/usr/bin/env bash
# Two shardgate binaries served at once, for changes too small for
# before-after.sh (about 1%, where drift between its rounds is larger): A and B
# each run one worker on CPU 0 (ports 18083 and 18085), nginx proxies beside them
# (18082), the upstream nginx and wrk share CPU 1. Each round measures A, B and
# nginx back to back (A first in odd rounds, B in even ones; 1 s warm-up,
# DURATION s measured, wrk -t1 -c50); per run,
# the process's CPU per request. The table gives each one's median and the
# median of B/A over the rounds, with every round's ratio.
#
#   load-tests/ab.sh /tmp/shardgate-before ./target/release/shardgate
#   ROUNDS=20 URLPATH=/files/1k load-tests/ab.sh A B
#   CLOSE=1 load-tests/ab.sh A B        # a new connection per request
#
# Writes load-tests/results/ab-$(nproc)core-<cpu>.txt (rename it to keep it).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: load-tests/ab.sh BINARY_A BINARY_B"; exit 2; }
A=$1 B=$2
ROUNDS=${ROUNDS:-10}
DURATION=${DURATION:-2}
URLPATH=${URLPATH:-/}
CLOSE=${CLOSE:-}
WRK_EXTRA=()
[ -z "$CLOSE" ] || WRK_EXTRA=(-H "Connection: close")
[ "$(nproc)" -ge 2 ] || { echo "needs 2 or more CPUs (proxies on CPU 0, load on CPU 1)"; exit 1; }
. load-tests/lib.sh
need_apt wrk:wrk nginx:nginx curl:curl python3:python3
ports_free '1808[1-5]'
run_dir
sed 's/18083/18085/' load-tests/peers/shardgate.yaml >"$RUN/b.yaml"
side_by_side "$A" load-tests/peers/shardgate.yaml "$B" "$RUN/b.yaml" "$URLPATH"

declare -A CPU
ratios=""
for r in $(seq "$ROUNDS"); do
  line="round $r:"
  # A first in odd rounds, B first in even ones: neither always follows nginx.
  order=("A:18083:$APID" "B:18085:$BPID")
  [ $((r % 2)) -eq 1 ] || order=("B:18085:$BPID" "A:18083:$APID")
  for p in "${order[@]}" "nginx:18082:$NPID"; do
    IFS=: read -r name port pid <<<"$p"
    taskset -c 1 wrk -t1 -c50 -d1s "${WRK_EXTRA[@]}" "http://127.0.0.1:$port$URLPATH" >/dev/null
    c0=$(cpu_ticks "$pid")
    req=$(taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" "${WRK_EXTRA[@]}" "http://127.0.0.1:$port$URLPATH" | awk '/requests in/ {print $1}')
    c1=$(cpu_ticks "$pid")
    v=$(awk -v d=$((c1 - c0)) -v hz="$(getconf CLK_TCK)" -v n="$req" 'BEGIN { printf "%.2f", d / hz * 1e6 / n }')
    CPU[$name]+="$v "
    line+=" $name $v"
  done
  a=$(echo "$line" | awk '{for (i = 3; i < NF; i += 2) if ($i == "A") print $(i + 1)}')
  b=$(echo "$line" | awk '{for (i = 3; i < NF; i += 2) if ($i == "B") print $(i + 1)}')
  ratio=$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.3f", b / a }')
  ratios+="$ratio "
  echo "$line  B/A $ratio"
done

OUT="load-tests/results/ab-$(nproc)core-$(machine_tag).txt"
{
  echo "# load-tests/ab.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(lscpu | awk -F: '/Model name/ {gsub(/^ +/, "", $2); print $2; exit}'); kernel $(uname -r)"
  echo "A: $A; B: $B"
  echo "wrk -t1 -c50 ${DURATION}s $URLPATH${CLOSE:+ (Connection: close)}, $ROUNDS rounds (A and B in turn first, then nginx), all served at once"
  echo "CPU per request (us), medians: A $(echo "${CPU[A]}" | median)  B $(echo "${CPU[B]}" | median)  nginx $(echo "${CPU[nginx]}" | median)"
  echo "B/A, median of the rounds: $(echo "$ratios" | median)  (B lower in $(echo "$ratios" | tr ' ' '\n' | awk '$1 != "" && $1 < 1' | wc -l) of $ROUNDS)"
  echo "per round B/A: $ratios"
} | tee "$OUT"
