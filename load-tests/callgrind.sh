#!/usr/bin/env bash
# User-space instructions per proxied request (issue 23's profile of what stands
# between shardgate and the CPU bar): shardgate (one worker, epoll) and nginx (one
# worker), each run under valgrind's callgrind, proxying to the same nginx
# upstream (run natively) over a keep-alive pool. Counters are zeroed after a
# warm-up, wrk makes requests for DURATION seconds, the counters are dumped, and
# the instructions counted (all the process's threads) are divided by the
# requests wrk completed. The kernel's part is not counted here: see syscalls.sh
# and compare.sh's sys_us.
#
#   load-tests/callgrind.sh                  # small GET, ROUNDS=2 DURATION=5 CONNS=4
#   URLPATH=/files/16k load-tests/callgrind.sh   # also 1k, 64k
#   CLOSE=1 load-tests/callgrind.sh              # a new connection per request
#   CONNS=1000 load-tests/callgrind.sh           # 1,000 connections
#
# Under callgrind a process runs ~50x slower, so its event loop gathers more
# events per wake-up than at full speed; both proxies are measured the same way.
# Writes load-tests/results/callgrind-<scenario>-$(nproc)core-<cpu>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
DURATION=${DURATION:-5}
CONNS=${CONNS:-4}
URLPATH=${URLPATH:-/}
CLOSE=${CLOSE:-}
TOPN=${TOPN:-14}
WRK_EXTRA=()
[ -z "$CLOSE" ] || WRK_EXTRA=(-H "Connection: close")
. load-tests/lib.sh
need_apt nginx:nginx wrk:wrk curl:curl valgrind:valgrind
ports_free '1816[0-2]'
REV="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!load-tests/results' || echo +changes)"
cargo build --release --quiet
run_dir
one_worker_confs 18160 18161 18162
nginx -c "$RUN/up.conf" -p "$RUN" &
serving http://127.0.0.1:18160/ "$RUN/up-error.log"

# up PORT LOG: waits up to 60 s (valgrind starts slowly) for the proxy to answer.
up() {
  for _ in $(seq 600); do
    curl -fs -o /dev/null "http://127.0.0.1:$1$URLPATH" && return 0
    sleep 0.1
  done
  echo "proxy on $1 did not start"; cat "$2"; exit 1
}
declare -A IR TOP MEMCPY
for r in $(seq "$ROUNDS"); do
  for p in shardgate nginx; do
    rm -f "$RUN"/cg.*
    case $p in
      shardgate)
        valgrind --tool=callgrind --callgrind-out-file="$RUN/cg.%p" \
          ./target/release/shardgate run --config "$RUN/sg.yaml" --runtime epoll 2>"$RUN/p.log" &
        PORT=18161 ;;
      nginx)
        valgrind --tool=callgrind --callgrind-out-file="$RUN/cg.%p" \
          nginx -c "$RUN/proxy.conf" -p "$RUN" 2>"$RUN/p.log" &
        PORT=18162 ;;
    esac
    VG=$!
    up "$PORT" "$RUN/p.log"
    wrk -t1 -c"$CONNS" -d3s "${WRK_EXTRA[@]}" "http://127.0.0.1:$PORT$URLPATH" >/dev/null
    callgrind_control -z "$VG" >/dev/null
    n=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "${WRK_EXTRA[@]}" "http://127.0.0.1:$PORT$URLPATH" | awk '/requests in/ {print $1}')
    callgrind_control -d "$VG" >/dev/null
    kill "$VG"; wait "$VG" 2>/dev/null || true
    # The dump taken after the zeroing: the highest-numbered part.
    dump=$(ls "$RUN"/cg.*.[0-9]* 2>/dev/null | sort -t. -k3 -n | tail -1)
    [ -n "$dump" ] || { echo "no callgrind dump for $p"; cat "$RUN/p.log"; exit 1; }
    # The dump's own cost lines (tools/callgrind_self.py: callgrind_annotate puts
    # a dump after a zeroing all under `clone`).
    python3 load-tests/tools/callgrind_self.py "$dump" "$n" "$TOPN" >"$RUN/self.txt"
    per=$(head -1 "$RUN/self.txt")
    echo "round $r $p: $n requests, $per instructions per request (user space)"
    IR[$p]+="$per "
    TOP[$p]=$(tail -n +2 "$RUN/self.txt" | sed 's/^/      /')
    MEMCPY[$p]=$(python3 load-tests/tools/callgrind_self.py "$dump" "$n" --callers __memcpy_avx_unaligned_erms 5 | sed 's/^/      /')
  done
done
tag=$(machine_tag)
scenario=small-get
[ "$URLPATH" = / ] || scenario=$(basename "$URLPATH")
[ -z "$CLOSE" ] || scenario="$scenario-new-conn"
[ "$CONNS" = 4 ] || scenario="$scenario-c$CONNS"
dest="load-tests/results/callgrind-$scenario-$(nproc)core-${tag:-unknown}.txt"
{
  echo "# load-tests/callgrind.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); kernel $(uname -r); $(nginx -v 2>&1); $(valgrind --version)"
  echo "shardgate $REV; one worker each (shardgate on epoll), under callgrind, a \$default proxy route to one nginx upstream (native, keep-alive pool), wrk -t1 -c$CONNS, ${DURATION}s, GET $URLPATH${CLOSE:+, Connection: close}"
  echo "user-space instructions per request (all threads), median of $ROUNDS rounds:"
  for p in shardgate nginx; do
    printf '  %-10s %8s   (rounds: %s)\n' "$p" "$(echo "${IR[$p]}" | median)" "${IR[$p]}"
  done
  a=$(echo "${IR[shardgate]}" | median); b=$(echo "${IR[nginx]}" | median)
  echo "  shardgate / nginx: $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}')"
  for p in shardgate nginx; do
    echo "  $p, last round, the heaviest functions (own instructions per request):"
    echo "${TOP[$p]}"
    echo "    callers of memcpy (instructions in it and calls, per request):"
    echo "${MEMCPY[$p]}"
  done
} >"$dest"
echo; cat "$dest"; echo "written to $dest"
