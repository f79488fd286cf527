#!/usr/bin/env bash
# Slow clients against shardgate's deadlines, with slowhttptest (Debian package):
#   slow body (-B, R-U-Dead-Yet): CONNS connections each sending a POST body a few
#     bytes every 10 s, to a proxied route and to a mock route; the whole request
#     must arrive within request_timeout_ms (default 30000) or it is cut (408);
#   slow headers (-H, Slowloris): a header line every 10 s; cut by
#     header_timeout_ms (default 10000);
#   slow read (-X): requests for a 64 MiB response read 8 bytes every 10 s (or
#     40 s) through a 1-16 byte receive window; cut once a write makes no progress
#     for send_timeout_ms (default 30000).
# Each runs up to LENGTH seconds (default 90). Reported from slowhttptest: the
# most connections it held open at once, the second the test ended and why ("No
# open connections left": every one was cut; "Hit test time limit": it still
# counted some open), and the seconds in which its probe request got no answer
# within 3 s (service unavailable). From the gateway's side, sampled every 2 s:
# the most client sockets it held established, and the first second after that
# peak when it held none (the time to cut), then its open descriptors.
# Writes load-tests/results/slow-clients-$MACHINE.txt.
#
#   load-tests/slow-clients.sh
#   CONNS=100 LENGTH=60 load-tests/slow-clients.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-200}
LENGTH=${LENGTH:-90}
MACHINE=${MACHINE:-$(hostname)}
ulimit -n "$(ulimit -Hn)"
. load-tests/lib.sh
need_apt slowhttptest:slowhttptest nginx:nginx curl:curl
cargo build --release --quiet
SG=./target/release/shardgate
GW=18131
ports_free '18081|18131|18132'

run_dir
mkdir -p "$RUN/www/files"
head -c 67108864 /dev/zero >"$RUN/www/files/64m"
sed "s#__RUN__#$RUN#g" load-tests/peers/upstream-nginx.conf >"$RUN/upstream-nginx.conf"
nginx -c "$RUN/upstream-nginx.conf" -p "$RUN" &
# An upstream that reads a request body to its end before answering (nginx's
# `return` answers at once and drops the body).
python3 load-tests/tools/soak.py upstream 18132 &
cat >"$RUN/sg.yaml" <<EOF
workers: auto
listeners:
  - name: public
    bind: 127.0.0.1:$GW
apis:
  - name: slow
    routes:
      - { route: POST /post, integration: { type: http_proxy, uri: "http://127.0.0.1:18132/ok" } }
      - { route: GET /files/64m, integration: { type: http_proxy, uri: "http://127.0.0.1:18081/files/64m" } }
      - { route: ANY /mock, integration: { type: mock, body: ok } }
      - { route: GET /, integration: { type: http_proxy, uri: "http://127.0.0.1:18081/" } }
    stages: [ { name: \$default } ]
EOF
"$SG" run --config "$RUN/sg.yaml" 2>"$RUN/sg.log" &
SGPID=$!
serving "http://127.0.0.1:$GW/mock" "$RUN/sg.log"

# $1 name, then slowhttptest's mode options.
attack() {
  local name=$1
  shift
  # The gateway's side, every 2 s: its established client sockets. slowhttptest's
  # own count lags for slow reads: it sees a reset only after it has read, 8 bytes
  # at a time, what its receive buffer already held.
  rm -f "$RUN/stop"
  (t0=$SECONDS; while [ ! -e "$RUN/stop" ]; do
     echo "$((SECONDS - t0)) $(ss -Htn state established "( sport = :$GW )" | wc -l)" >>"$RUN/$name.held"
     sleep 2
   done) &
  local sampler=$!
  (cd "$RUN" && slowhttptest -c "$CONNS" -r 50 -l "$LENGTH" -p 3 -g -o "$name" "$@" >"$name.out" 2>&1) || true
  sleep 4
  touch "$RUN/stop"
  wait $sampler 2>/dev/null || true
  python3 - "$RUN/$name.csv" "$name" "$RUN/$name.out" "$RUN/$name.held" "$SGPID" <<'PY'
import csv, re, sys
rows = list(csv.DictReader(open(sys.argv[1])))
out = re.sub(r"\x1b\[[0-9;]*m", "", open(sys.argv[3]).read())
col = lambda r, name: next(v for k, v in r.items() if k.strip().lower().startswith(name))
connected = [int(col(r, "connected")) for r in rows]
# The CSV's last column is the connection count while the probe got an answer, 0 when not.
down = sum(1 for r in rows if col(r, "service").strip() == "0")
ended = re.search(r"Test ended on (\d+)th second", out)
status = re.search(r"Exit status: (.*)", out)
held = [tuple(map(int, l.split())) for l in open(sys.argv[4])]
peak_t, peak = max(held, key=lambda h: h[1], default=(0, 0))
cut = next((t for t, n in held if t > peak_t and n == 0), None)
import os
fds = len(os.listdir(f"/proc/{sys.argv[5]}/fd"))
print(f"{sys.argv[2]:<18} slowhttptest: held at most {max(connected, default=0):>3}, "
      f"ended at {ended.group(1) if ended else '?':>2} s ({status.group(1).strip() if status else '?'}), "
      f"service unavailable {down} of {len(rows)} s | gateway: held at most {peak:>3} sockets, "
      f"none left at {f'{cut} s' if cut is not None else 'the end: still held'}, {fds} fds after")
PY
}
{
  echo "# shardgate against slow clients (slowhttptest $(slowhttptest -h 2>&1 | grep -o 'version [0-9.]*' | head -1)): $CONNS connections, $LENGTH s each"
  echo "# defaults: request_timeout_ms 30000, header_timeout_ms 10000, send_timeout_ms 30000, idle_timeout_ms 60000"
  echo "# machine: $(hostname), $(uname -m), kernel $(uname -r), $(nproc) CPUs; commit $(git rev-parse --short HEAD)"
  attack slow-body-proxied -B -i 10 -s 65536 -u "http://127.0.0.1:$GW/post"
  attack slow-body-mock -B -i 10 -s 65536 -u "http://127.0.0.1:$GW/mock"
  attack slow-headers -H -i 10 -u "http://127.0.0.1:$GW/"
  attack slow-read-10s -X -k 1 -n 10 -w 1 -y 16 -z 8 -u "http://127.0.0.1:$GW/files/64m"
  attack slow-read-40s -X -k 1 -n 40 -w 1 -y 16 -z 8 -u "http://127.0.0.1:$GW/files/64m"
  kill -0 $SGPID && echo "gateway still running, $(ls /proc/$SGPID/fd | wc -l) descriptors open after the runs"
} | tee "$RUN/summary"
mkdir -p load-tests/results
cp "$RUN/summary" "load-tests/results/slow-clients-$MACHINE.txt"
