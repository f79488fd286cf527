#!/usr/bin/env bash
# System calls per keep-alive request (issue 23, goals 2 and 6): shardgate
# (epoll and io_uring drivers) and nginx, each one worker proxying a small GET to
# the same nginx upstream over a keep-alive pool, counted while wrk makes
# keep-alive requests; each count is divided by the requests wrk completed.
#
#   load-tests/syscalls.sh            # ROUNDS=3 DURATION=3 CONNS=50
#   URLPATH=/files/64k load-tests/syscalls.sh   # a 64 KiB response (also 1k, 16k)
#   CLOSE=1 load-tests/syscalls.sh              # a new connection per request
#
# The default (a small GET on kept-alive connections) writes the results file;
# URLPATH or CLOSE print their figures only.
#
# Two counters: `perf stat` on the kernel's syscall tracepoints (all the
# process's threads, at full speed: the figure that matters, with the receives
# that failed, EAGAIN, counted by a filter on their return value), and
# `strace -c -f` (each call by name; it slows the process severalfold, so its
# reads seldom find an empty socket and it undercounts failed reads). Writes
# load-tests/results/syscalls-$(nproc)core-<cpu>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-3}
CONNS=${CONNS:-50}
URLPATH=${URLPATH:-/}
CLOSE=${CLOSE:-}
WRK_EXTRA=()
[ -z "$CLOSE" ] || WRK_EXTRA=(-H "Connection: close")
. load-tests/lib.sh
need_apt nginx:nginx wrk:wrk strace:strace curl:curl perf:linux-perf
ports_free '1815[5-8]'
REV="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!load-tests/results' || echo +changes)"
cargo build --release --quiet
run_dir
one_worker_confs 18155 18157 18156
nginx -c "$RUN/up.conf" -p "$RUN" &
serving http://127.0.0.1:18155/ "$RUN/up-error.log"
declare -A CALLS TOP PERF PTOP
# perf's events: every call, the ones a proxy makes per request, failed receives.
CALLS_OF="recvfrom sendto read write readv writev recvmsg sendmsg epoll_wait epoll_pwait getsockopt io_uring_enter"
EVENTS=(-e raw_syscalls:sys_enter)
for c in $CALLS_OF; do EVENTS+=(-e "syscalls:sys_enter_$c"); done
EVENTS+=(-e syscalls:sys_exit_recvfrom --filter 'ret < 0' -e syscalls:sys_exit_read --filter 'ret < 0')
start() { # start sg-epoll|sg-io_uring|nginx → GW, PORT
  case $1 in
    nginx) nginx -c "$RUN/proxy.conf" -p "$RUN" & GW=$!; PORT=18156 ;;
    sg-*) ./target/release/shardgate run --config "$RUN/sg.yaml" --runtime "${1#sg-}" 2>"$RUN/sg.log" &
          GW=$!; PORT=18157 ;;
  esac
  serving "http://127.0.0.1:$PORT/" "$RUN/sg.log"
}
for r in $(seq "$ROUNDS"); do
  for p in sg-epoll sg-io_uring nginx; do
    start "$p"
    # Warm the upstream pool, then count at full speed with perf.
    wrk -t1 -c"$CONNS" -d1s "${WRK_EXTRA[@]}" "http://127.0.0.1:$PORT$URLPATH" >/dev/null
    perf stat -x, "${EVENTS[@]}" -p "$GW" -o "$RUN/perf.txt" &
    PS=$!
    sleep 0.3
    n=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "${WRK_EXTRA[@]}" "http://127.0.0.1:$PORT$URLPATH" | awk '/requests in/ {print $1}')
    kill -INT "$PS"; wait "$PS" 2>/dev/null || true
    pper=$(awk -F, -v n="$n" '$3 == "raw_syscalls:sys_enter" {print $1 / n}' "$RUN/perf.txt")
    ptop=$(awk -F, -v n="$n" '$3 ~ /^syscalls:/ && $1 + 0 > 0.05 * n {
             name = $3; sub(/^syscalls:sys_/, "", name); sub(/^enter_/, "", name);
             if (name ~ /^exit_/) { sub(/^exit_/, "", name); name = name " failed" }
             printf "%s %.2f; ", name, $1 / n }' "$RUN/perf.txt")
    echo "round $r $p (perf, full speed): $n requests, $pper calls/request: $ptop"
    PERF[$p]+="$pper "
    PTOP[$p]="$ptop"
    # The same under strace, by name.
    strace -c -f -q -o "$RUN/strace.txt" -p "$GW" &
    ST=$!
    sleep 0.5
    n=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "${WRK_EXTRA[@]}" "http://127.0.0.1:$PORT$URLPATH" | awk '/requests in/ {print $1}')
    kill -INT "$ST"; wait "$ST" 2>/dev/null || true
    kill "$GW"; wait "$GW" 2>/dev/null || true
    # strace -c's table: calls are the 4th column (5th when errors are shown).
    per=$(awk -v n="$n" '$NF == "total" {print $4 / n}' "$RUN/strace.txt")
    top=$(awk -v n="$n" 'NF >= 5 && $1 ~ /^[0-9.]+$/ && $NF != "total" {
            calls = $4; errs = (NF == 6 ? $5 : 0);
            if (calls / n >= 0.05) printf "%s %.2f%s; ", $NF, calls / n, (errs > 0 ? sprintf(" (%.2f failed)", errs / n) : "") }' "$RUN/strace.txt")
    echo "round $r $p (strace): $n requests, $per calls/request: $top"
    CALLS[$p]+="$per "
    TOP[$p]="$top"
  done
done
tag=$(machine_tag)
dest="load-tests/results/syscalls-$(nproc)core-${tag:-unknown}.txt"
[ "$URLPATH" = / ] && [ -z "$CLOSE" ] || dest="$RUN/syscalls.txt"
m() { echo "${CALLS[$1]}" | median; }
{
  echo "# load-tests/syscalls.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); kernel $(uname -r); $(nginx -v 2>&1)"
  echo "shardgate $REV; one worker each, a \$default proxy route to one nginx upstream (keep-alive pool), wrk -t1 -c$CONNS, ${DURATION}s, GET $URLPATH${CLOSE:+, Connection: close}"
  echo "system calls per keep-alive request, median of $ROUNDS rounds (the floor is 4: a receive and a send on each side):"
  pm() { echo "${PERF[$1]}" | median; }
  for p in sg-epoll sg-io_uring nginx; do
    printf '  %-12s perf %6.2f   strace %6.2f   (perf rounds: %s)\n' "$p" "$(pm "$p")" "$(m "$p")" "${PERF[$p]}"
    echo "      perf, last round, per request: ${PTOP[$p]}"
    echo "      strace, last round, per request: ${TOP[$p]}"
  done
} >"$dest"
echo; cat "$dest"; [ "$dest" = "$RUN/syscalls.txt" ] || echo "written to $dest"
