#!/usr/bin/env bash
# Two shardgate binaries in one sitting: did a change cost speed? Alternates
# BEFORE and AFTER, ROUNDS times each, each time one round of load-tests/compare.sh
# on the scenarios below (ROUNDS=1, same machine, same peers). Within each round,
# shardgate's process CPU per request, p99 and requests/s are divided by nginx's
# measured in that same round (the reference named below), so drift between rounds
# cancels; the table gives, per scenario, the median of those paired ratios for
# BEFORE and for AFTER, and the median of AFTER/BEFORE over adjacent round pairs.
#
#   BEFORE=/tmp/shardgate-old load-tests/before-after.sh          # AFTER: this tree
#   BEFORE=/tmp/a AFTER=/tmp/b ROUNDS=5 DURATION=3 load-tests/before-after.sh
#   BEFORE=/tmp/a SCENARIOS="cache-hit" ROUNDS=8 load-tests/before-after.sh  # a closer look
#
# BEFORE_LABEL and AFTER_LABEL (default: the paths) name the binaries in the table.
#
# Writes load-tests/results/before-after-$MACHINE.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BEFORE:?BEFORE=path to the binary to compare against}"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-3}
MACHINE=${MACHINE:-$(hostname)}
if [ -z "${AFTER:-}" ]; then
  cargo build --release --quiet
  AFTER=$(mktemp /tmp/shardgate-after.XXXXXX)
  cp ./target/release/shardgate "$AFTER"
  chmod +x "$AFTER"  # cp onto mktemp's file keeps its 0600
fi
# scenario | shardgate proxy | reference scenario | reference proxy
PAIRS=(
  "small-get|sg-epoll|small-get|nginx"
  "small-get-keyed|sg-keyed|small-get|nginx"
  "small-get-jwt|sg-jwt|small-get|nginx"
  "cache-hit|sg-cache|cache-hit|nginx-cache"
  "https-get|sg-tls|https-get|nginx-tls"
  "1k|sg-epoll|1k|nginx"
  "16k|sg-epoll|16k|nginx"
  "64k|sg-epoll|64k|nginx"
  "post-4k|sg-epoll|post-4k|nginx"
  "new-conn|sg-epoll|new-conn|nginx"
  "c1000|sg-epoll|c1000|nginx"
)
SCENARIOS=${SCENARIOS:-small-get small-get-keyed small-get-jwt cache-hit https-get}
kept=()
for p in "${PAIRS[@]}"; do
  for s in $SCENARIOS; do [ "${p%%|*}" = "$s" ] && kept+=("$p"); done
done
PAIRS=("${kept[@]}")
# The scenarios measured: those kept, and the references they are divided by.
ONLY=$(for p in "${PAIRS[@]}"; do IFS='|' read -r s _ rs _ <<<"$p"; echo "$s $rs"; done | tr ' ' '\n' | sort -u | xargs)
LOGS=$(mktemp -d)
for r in $(seq "$ROUNDS"); do
  for side in before after; do
    bin=$BEFORE; [ "$side" = after ] && bin=$AFTER
    echo "-- round $r: $side ($bin)"
    SG=$bin ONLY=$ONLY ROUNDS=1 DURATION=$DURATION load-tests/compare.sh >"$LOGS/$side-$r.log" 2>&1 || {
      tail -20 "$LOGS/$side-$r.log"; exit 1; }
    grep -E '^  [a-z0-9-]+ +[a-z-]+ +[0-9.]+ req/s' "$LOGS/$side-$r.log" | sed 's/^  //'
  done
done
OUT=load-tests/results/before-after-$MACHINE.txt
python3 - "$LOGS" "$ROUNDS" "${PAIRS[@]}" >"$OUT" <<'PY'
import re, statistics, sys
logs, rounds, pairs = sys.argv[1], int(sys.argv[2]), [p.split("|") for p in sys.argv[3:]]
line = re.compile(r"^  (\S+)\s+(\S+)\s+([\d.]+) req/s\s+p50\s+(\d+)us\s+p99\s+(\d+)us\s+cpu\s+([\d.]+)us/req")
def runs(side, r):
    out = {}
    for l in open(f"{logs}/{side}-{r}.log"):
        m = line.match(l)
        if m:
            s, p, rps, _, p99, cpu = m.groups()
            out[(s, p)] = {"rps": float(rps), "p99": float(p99), "cpu": float(cpu)}
    return out
data = {side: [runs(side, r) for r in range(1, rounds + 1)] for side in ("before", "after")}
med = lambda xs: statistics.median(xs) if xs else float("nan")
print(f"# load-tests/before-after.sh: {rounds} alternating rounds per side, one compare.sh round each")
print("# ratio = shardgate / reference proxy in the same round; median over rounds")
print(f"{'scenario':<16} {'metric':<7} {'before':>7} {'after':>7} {'after/before':>13}  (per-round pairs)")
for s, sg, rs, rp in pairs:
    for metric in ("cpu", "p99", "rps"):
        per = {}
        for side in ("before", "after"):
            per[side] = [d[(s, sg)][metric] / d[(rs, rp)][metric] for d in data[side]
                         if (s, sg) in d and (rs, rp) in d and d[(rs, rp)][metric] > 0]
        pair = [a / b for a, b in zip(per["after"], per["before"]) if b > 0]
        print(f"{s:<16} {metric:<7} {med(per['before']):>7.3f} {med(per['after']):>7.3f} {med(pair):>13.3f}  "
              + " ".join(f"{x:.2f}" for x in pair))
PY
{ echo; echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); kernel $(uname -sr)"
  echo "before: ${BEFORE_LABEL:-$BEFORE}; after: ${AFTER_LABEL:-$AFTER}; ${DURATION}s runs"; } >>"$OUT"
cat "$OUT"
rm -rf "$LOGS"
