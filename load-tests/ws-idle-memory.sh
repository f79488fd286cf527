#!/usr/bin/env bash
# Memory per idle connection: a WebSocket API connection on shardgate, against an
# idle HTTP keep-alive connection on shardgate and on nginx, in one run:
#
#   load-tests/ws-idle-memory.sh          # CONNS=20000 ROUNDS=3
#
# One shardgate worker (a mock `$default` route answering route responses); nginx
# with one worker answering 200 itself. load-tests/tools/idle_rss.py opens CONNS
# connections one by one (a handshake, or one GET), leaves them idle, and reads
# the process's RSS growth per connection; the first and last are checked to be
# served still. Writes load-tests/results/ws-idle-memory-$(nproc)core-<cpu>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-20000}
ROUNDS=${ROUNDS:-3}
. load-tests/lib.sh
need_apt nginx:nginx curl:curl
ports_free '1813[0-9]'
REV="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!load-tests/results' || echo +changes)"
cargo build --release --quiet
ulimit -n $((CONNS * 2 + 1000)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# The client and the server each hold CONNS descriptors: stay under the limit.
if [ "$CONNS" -gt $(( $(ulimit -n) - 500 )) ]; then
  CONNS=$(( $(ulimit -n) - 500 ))
  echo "open files are limited to $(ulimit -n) here: $CONNS connections"
fi
run_dir
cat >"$RUN/sg.yaml" <<YAML
workers: 1
listeners: [ { name: bench, bind: "127.0.0.1:18130" } ]
apis:
  - name: chat
    type: websocket
    routes:
      - { route: \$default, integration: { type: mock, body: ok }, route_response: true }
    stages: [ { name: prod, limits: { idle_timeout_s: 3600 } } ]
  - name: web
    routes: [ { route: \$default, integration: { type: mock, body: ok } } ]
    stages: [ { name: \$default } ]
YAML
cat >"$RUN/nginx.conf" <<CONF
master_process off;
worker_processes 1;
worker_rlimit_nofile $((CONNS * 2 + 1000));
daemon off;
error_log $RUN/nginx-error.log;
pid $RUN/nginx.pid;
events { worker_connections $((CONNS + 1000)); }
http {
  access_log off;
  keepalive_timeout 3600s;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18131 reuseport; location / { return 200 "ok"; } }
}
CONF
declare -A R
measure() {
  local name=$1 pid=$2 port=$3 path=${4:-} out
  # 5 s idle before RSS is read: a WebSocket connection sleeps with no task
  # after 1 s idle (proxy::dormant), and what its task held goes back to the
  # system at the worker's next once-a-second collect.
  out=$(python3 load-tests/tools/idle_rss.py "$pid" "$port" "$CONNS" 5 $path)
  echo "  $name: $out"
  R[$name]+="${out##*per_conn_kib=} "
}
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  for kind in websocket http; do
    ./target/release/shardgate run --config "$RUN/sg.yaml" --runtime epoll 2>"$RUN/sg.log" &
    SG=$!
    serving "http://127.0.0.1:18130/" "$RUN/sg.log"
    if [ "$kind" = websocket ]; then
      measure sg-websocket "$SG" 18130 /prod
    else
      measure sg-http "$SG" 18130
    fi
    kill "$SG"; wait "$SG" 2>/dev/null || true
  done
  nginx -c "$RUN/nginx.conf" -p "$RUN" &
  NG=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:18131/ >/dev/null && break; sleep 0.1; done
  measure nginx-http "$NG" 18131
  kill "$NG"; wait "$NG" 2>/dev/null || true
done
tag=$(machine_tag)
dest="load-tests/results/ws-idle-memory-$(nproc)core-${tag:-unknown}.txt"
ws=$(echo "${R[sg-websocket]}" | median); http=$(echo "${R[sg-http]}" | median); ng=$(echo "${R[nginx-http]}" | median)
{
  echo "# load-tests/ws-idle-memory.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(nginx -v 2>&1)"
  echo "shardgate $REV"
  echo "$CONNS connections opened one by one, then idle 5 s; RSS growth per connection (KiB), medians of $ROUNDS rounds:"
  echo "  shardgate, WebSocket API connection: $ws"
  echo "  shardgate, HTTP keep-alive (mock):   $http"
  echo "  nginx, HTTP keep-alive (return 200): $ng"
  echo "  WebSocket connection against nginx's keep-alive connection: $(awk -v a="$ws" -v b="$ng" 'BEGIN {printf "%.2f", a / b}')x (target: at most 2 KiB, below nginx's)"
  echo "  per round: websocket ${R[sg-websocket]}; http ${R[sg-http]}; nginx ${R[nginx-http]}"
} >"$dest"
echo; cat "$dest"; echo "written to $dest"
