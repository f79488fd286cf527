# Shared by the load-test scripts (sourced from the repository root).

# need_apt cmd:package ...: installs, with apt, the packages whose command is missing.
need_apt() {
  local missing=()
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
  fi
}

# ports_free 'REGEX': stops the script when something listens on a port matching
# REGEX (`18081|1809[0-5]`). SO_REUSEPORT would let a leftover process share the
# port silently, take part of the load and skew every per-request figure.
ports_free() {
  local busy
  busy=$(ss -Hltn 2>/dev/null | awk '{print $4}' | grep -E ":($1)\$" || true)
  [ -z "$busy" ] || { echo "ports in use, stop what listens there first: $busy"; exit 1; }
}

# run_dir: a fresh $RUN (readable by an nginx worker); on exit every background job
# is stopped and $RUN removed.
run_dir() {
  RUN=$(mktemp -d)
  chmod 755 "$RUN"
  trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$RUN"' EXIT
}

# serving URL LOG: waits up to 10 s for URL to answer 2xx; otherwise prints LOG
# (the gateway's stderr) and stops the script.
serving() {
  for _ in $(seq 100); do
    curl -fs -o /dev/null "$1" && return 0
    sleep 0.1
  done
  echo "gateway did not start"
  cat "$2"
  exit 1
}

# median: the median of the numbers on stdin (space- or line-separated); "-"
# when there are none.
median() { tr ' ' '\n' | { grep -v '^$' || true; } | sort -g | awk '{a[NR]=$1} END {print (NR ? a[int((NR+1)/2)] : "-")}'; }

# cpu_ticks PID: the process's user + system time, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# sys_ticks PID: the kernel's part of it (stime).
sys_ticks() { awk '{print $15}' "/proc/$1/stat"; }

# machine_tag: the CPU model as a file-name part (`intel-r-xeon-r-processor`).
machine_tag() {
  grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs | tr 'A-Z' 'a-z' | sed 's/[^a-z0-9]\+/-/g; s/^-//; s/-$//' | cut -c1-40
}

# bodies DIR: the upstream's fixed response bodies, DIR/1k, DIR/16k and DIR/64k.
bodies() {
  mkdir -p "$1"
  python3 - "$1" <<'EOF'
import sys
for name, n in (("1k", 1024), ("16k", 16 * 1024), ("64k", 64 * 1024)):
    with open(f"{sys.argv[1]}/{name}", "wb") as f:
        f.write((b"0123456789abcdef" * (n // 16 + 1))[:n])
EOF
}

# side_by_side BIN_A YAML_A BIN_B YAML_B PATH (after run_dir): the upstream nginx
# (CPU 1), two shardgates with one worker each on CPU 0 (YAML_A listening on
# 18083, YAML_B on 18085) and the proxy nginx on CPU 0 (18082), each answering
# PATH. Sets APID and BPID (the shardgates), NPID (the proxy nginx's worker) and
# UPW (the upstream's worker); the shardgates' stderr goes to $RUN/a.log, b.log.
side_by_side() {
  bodies "$RUN/www/files"
  local f
  for f in upstream-nginx.conf proxy-nginx.conf; do
    sed "s#__RUN__#$RUN#g" "load-tests/peers/$f" >"$RUN/$f"
  done
  taskset -c 1 nginx -c "$RUN/upstream-nginx.conf" -p "$RUN" &
  taskset -c 0 "$1" run --config "$2" --runtime epoll 2>"$RUN/a.log" &
  APID=$!
  taskset -c 0 "$3" run --config "$4" --runtime epoll 2>"$RUN/b.log" &
  BPID=$!
  taskset -c 0 nginx -c "$RUN/proxy-nginx.conf" -p "$RUN" &
  serving "http://127.0.0.1:18083$5" "$RUN/a.log"
  serving "http://127.0.0.1:18085$5" "$RUN/b.log"
  serving "http://127.0.0.1:18082$5" /dev/null
  UPW=$(pgrep -P "$(cat "$RUN/upstream.pid")" | head -1)
  NPID=$(pgrep -P "$(cat "$RUN/proxy-nginx.pid")" | head -1)
}

# one_worker_confs UP SG PROXY (after run_dir): the configs of one-worker
# measurements: $RUN/up.conf (an nginx upstream on port UP answering "/" with a
# small body and /files/ from $RUN/files, made by `bodies`), $RUN/proxy.conf (an
# nginx proxy on PROXY with a keep-alive pool to it) and $RUN/sg.yaml (shardgate
# on SG with a $default route to it).
one_worker_confs() {
  bodies "$RUN/files"
  cat >"$RUN/up.conf" <<CONF
master_process off; worker_processes 1; daemon off;
error_log $RUN/up-error.log; pid $RUN/up.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$1; location / { return 200 "hello from the upstream\n"; }
    location /files/ { alias $RUN/files/; } } }
CONF
  cat >"$RUN/proxy.conf" <<CONF
master_process off; worker_processes 1; daemon off;
error_log $RUN/proxy-error.log; pid $RUN/proxy.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$1; keepalive 64; }
  server { listen 127.0.0.1:$3;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
  cat >"$RUN/sg.yaml" <<YAML
workers: 1
listeners: [ { name: bench, bind: "127.0.0.1:$2" } ]
apis:
  - name: web
    routes: [ { route: \$default, integration: { type: http_proxy, uri: "http://127.0.0.1:$1" } } ]
    stages: [ { name: \$default } ]
YAML
}
