#!/usr/bin/env bash
# Memory per idle keep-alive connection on a proxied route (issue 23, goal 1):
# shardgate and nginx, each with one worker proxying to the same upstream with a
# keep-alive pool, in one run:
#
#   load-tests/idle-memory.sh          # CONNS=4000 ROUNDS=3
#
# Two shapes: "one by one" (load-tests/tools/idle_rss.py: each connection makes
# one request, answered at once, and stays idle) and "burst"
# (load-tests/tools/burst_rss.py: every connection sends its request at once to
# an upstream answering after 200 ms, so CONNS requests are in flight together;
# RSS 1 s and 5 s after the last answer). Writes
# load-tests/results/idle-memory-$(nproc)core-<cpu>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-4000}
ROUNDS=${ROUNDS:-3}
. load-tests/lib.sh
need_apt nginx:nginx curl:curl
ports_free '1814[0-9]'
REV="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!load-tests/results' || echo +changes)"
cargo build --release --quiet
ulimit -n $((CONNS * 3 + 1000)) 2>/dev/null || ulimit -n "$(ulimit -Hn)"
run_dir
cat >"$RUN/sg.yaml" <<YAML
workers: 1
listeners: [ { name: bench, bind: "127.0.0.1:18140" } ]
apis:
  - name: web
    routes: [ { route: \$default, integration: { type: http_proxy, uri: "http://127.0.0.1:18142" } } ]
    stages: [ { name: \$default } ]
YAML
cat >"$RUN/nginx.conf" <<CONF
master_process off;
worker_processes 1;
worker_rlimit_nofile $((CONNS * 3 + 1000));
daemon off;
error_log $RUN/nginx-error.log;
pid $RUN/nginx.pid;
events { worker_connections $((CONNS * 2 + 1000)); }
http {
  access_log off;
  keepalive_timeout 3600s;
  keepalive_requests 1000000;
  upstream up { server 127.0.0.1:18142; keepalive 1024; }
  server {
    listen 127.0.0.1:18141 reuseport;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
declare -A R
record() { echo "  $1: $2"; R[$1]+="$3 "; }
gateway() { # gateway sg|nginx → PID in GW, port in PORT
  if [ "$1" = sg ]; then
    ./target/release/shardgate run --config "$RUN/sg.yaml" --runtime epoll 2>"$RUN/sg.log" &
    GW=$!; PORT=18140
  else
    nginx -c "$RUN/nginx.conf" -p "$RUN" &
    GW=$!; PORT=18141
  fi
  serving "http://127.0.0.1:$PORT/" "$RUN/sg.log"
}
for r in $(seq "$ROUNDS"); do
  echo "== round $r"
  for shape in one burst; do
    delay=0; [ "$shape" = burst ] && delay=200
    python3 load-tests/tools/slow_upstream.py 18142 "$delay" &
    UP=$!
    for _ in $(seq 50); do curl -sf http://127.0.0.1:18142/ >/dev/null && break; sleep 0.1; done
    for gw in sg nginx; do
      gateway "$gw"
      if [ "$shape" = one ]; then
        out=$(python3 load-tests/tools/idle_rss.py "$GW" "$PORT" "$CONNS" 2)
        record "$gw-one" "$out" "${out##*per_conn_kib=}"
      else
        out=$(python3 load-tests/tools/burst_rss.py "$GW" "$PORT" "$CONNS")
        p1=${out##*per_conn_1s_kib=}; p1=${p1%% *}
        record "$gw-burst1" "$out" "$p1"
        R[$gw-burst5]+="${out##*per_conn_5s_kib=} "
      fi
      kill "$GW"; wait "$GW" 2>/dev/null || true
    done
    kill "$UP"; wait "$UP" 2>/dev/null || true
  done
done
tag=$(machine_tag)
dest="load-tests/results/idle-memory-$(nproc)core-${tag:-unknown}.txt"
m() { echo "${R[$1]}" | median; }
ratio() { awk -v a="$(m "$1")" -v b="$(m "$2")" 'BEGIN {printf "%.2f", a / b}'; }
{
  echo "# load-tests/idle-memory.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(nginx -v 2>&1)"
  echo "shardgate $REV; one worker each, a \$default proxy route to one upstream (keep-alive pool)"
  echo "RSS growth per client connection (KiB), medians of $ROUNDS rounds, $CONNS connections:"
  echo "  one by one, then idle:      shardgate $(m sg-one)   nginx $(m nginx-one)   ($(ratio sg-one nginx-one)x nginx)"
  echo "  burst, 1 s after:           shardgate $(m sg-burst1)   nginx $(m nginx-burst1)   ($(ratio sg-burst1 nginx-burst1)x nginx)"
  echo "  burst, 5 s after:           shardgate $(m sg-burst5)   nginx $(m nginx-burst5)   ($(ratio sg-burst5 nginx-burst5)x nginx)"
  echo "  per round: sg one ${R[sg-one]}; nginx one ${R[nginx-one]}; sg burst 1 s ${R[sg-burst1]}; nginx ${R[nginx-burst1]}; sg 5 s ${R[sg-burst5]}; nginx ${R[nginx-burst5]}"
} >"$dest"
echo; cat "$dest"; echo "written to $dest"
