#!/usr/bin/env bash
# Issue 23, goal 5: where the time of a new HTTPS connection per request goes.
# shardgate and nginx terminate TLS with the same ECDSA P-256 certificate and proxy
# to the same nginx upstream (one worker each, pinned to CPU 0); wrk (a new
# connection, full handshake, per request) and the upstream share CPU 1. Rounds are
# interleaved. Per proxy: requests/s, p50/p99 (wrk's latency: from the request's
# write to its response, the handshake excluded), CPU-microseconds per request of
# the proxy, of wrk and of the upstream (/proc/PID/stat), each core's busy share
# (/proc/stat), listen-queue drops and retransmits (nstat), at CONNS connections
# and at a light load (LIGHT connections), and the TLS each proxy negotiates
# (openssl s_client: version, cipher, key exchange, signature, tickets sent) and
# the packets per connection each direction (tcpdump), and where the client's
# CPU goes (perf on wrk).
#
#   load-tests/https-new-conn.sh            # ROUNDS=3 DURATION=5 CONNS=50 LIGHT=4
#
# Writes load-tests/results/https-new-conn-$(nproc)core-<cpu>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNS=${CONNS:-50}
LIGHT=${LIGHT:-4}
. load-tests/lib.sh
need_apt nginx:nginx wrk:wrk openssl:openssl curl:curl nstat:iproute2 tcpdump:tcpdump perf:linux-perf
ports_free '18081|1809[01]'
REV="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!load-tests/results' || echo +changes)"
cargo build --release --quiet
run_dir
mkdir -p "$RUN/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$RUN/tls/key.pem" -out "$RUN/tls/cert.pem" 2>/dev/null
for f in upstream-nginx.conf proxy-nginx-tls.conf shardgate-tls.yaml; do
  sed "s#__RUN__#$RUN#g" "load-tests/peers/$f" >"$RUN/$f"
done
taskset -c 1 nginx -c "$RUN/upstream-nginx.conf" -p "$RUN" &
UPMAIN=$!
serving http://127.0.0.1:18081/ /dev/null
UP=$(pgrep -P "$UPMAIN" | head -1)

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
core() { awk -v c="cpu$1" '$1 == c {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
clk=$(getconf CLK_TCK)
start() { # sg|nginx → PROXY (the process that serves), PORT
  case $1 in
    sg) taskset -c 0 ./target/release/shardgate run --config "$RUN/shardgate-tls.yaml" --runtime epoll 2>"$RUN/sg.log" &
        MAIN=$!; PORT=18090 ;;
    nginx) taskset -c 0 nginx -c "$RUN/proxy-nginx-tls.conf" -p "$RUN" & MAIN=$!; PORT=18091 ;;
  esac
  for _ in $(seq 50); do curl -kfs -o /dev/null "https://127.0.0.1:$PORT/" && break; sleep 0.1; done
  PROXY=$MAIN
  if [ "$1" = nginx ]; then sleep 0.2; PROXY=$(pgrep -P "$MAIN" | head -1); fi
}
stop() { kill "$MAIN"; wait "$MAIN" 2>/dev/null || true; sleep 0.3; }

tls_of() { # the TLS a proxy negotiates with OpenSSL's client (wrk's library)
  local out
  out=$(sleep 0.5 | timeout 5 openssl s_client -connect "127.0.0.1:$1" -servername localhost -msg 2>&1 || true)
  printf 'protocol %s; cipher %s; group %s; signature %s; NewSessionTicket messages %s; server bytes %s' \
    "$(echo "$out" | awk -F': *' '/^ *Protocol *:/ {print $2; exit}')" \
    "$(echo "$out" | awk -F': *' '/^ *Cipher *:/ {print $2; exit}')" \
    "$(echo "$out" | awk -F': *' '/^(Server|Peer) Temp Key/ {print $2; exit}')" \
    "$(echo "$out" | awk -F': *' '/^Peer signature type/ {print $2; exit}')" \
    "$(echo "$out" | grep -c 'NewSessionTicket' || true)" \
    "$(echo "$out" | awk '/SSL handshake has read/ {print $5; exit}')"
}

declare -A R
for r in $(seq "$ROUNDS"); do
  for load in "$CONNS" "$LIGHT"; do
    for p in sg nginx; do
      start "$p"
      taskset -c 1 wrk -t1 -c"$load" -d1s -H "Connection: close" "https://127.0.0.1:$PORT/" >/dev/null
      nstat -n >/dev/null
      taskset -c 1 wrk -t1 -c"$load" -d"${DURATION}s" --latency -H "Connection: close" "https://127.0.0.1:$PORT/" >"$RUN/wrk.txt" &
      W=$!
      sleep 0.3
      p0=$(ticks "$PROXY"); u0=$(ticks "$UP"); w0=$(ticks "$W")
      read -r b0 t0 < <(core 0); read -r b1 t1 < <(core 1)
      sleep "$(awk -v d="$DURATION" 'BEGIN{print d - 0.8}')"
      p1=$(ticks "$PROXY"); u1=$(ticks "$UP"); w1=$(ticks "$W")
      read -r b0e t0e < <(core 0); read -r b1e t1e < <(core 1)
      wait "$W"
      net=$(nstat -z TcpExtListenOverflows TcpExtListenDrops TcpRetransSegs 2>/dev/null | awk 'NR > 1 && $1 !~ /^#/ {printf "%s %s ", $1, $2}')
      stop "$p"
      rps=$(awk '/Requests\/sec/ {print $2}' "$RUN/wrk.txt")
      span=$(awk -v d="$DURATION" 'BEGIN{print d - 0.8}')
      n=$(awk -v r="$rps" -v s="$span" 'BEGIN{print r * s}')
      us() { awk -v d="$1" -v c="$clk" -v n="$n" 'BEGIN { printf "%.1f", d / c * 1e6 / n }'; }
      busy() { awk -v b="$1" -v t="$2" 'BEGIN { printf "%.0f%%", (t > 0 ? 100 * b / t : 0) }'; }
      line="$(printf '%-6s c%-3s %9s req/s  p50 %8s  p99 %8s  cpu/req: proxy %6s us  wrk %6s us  upstream %5s us  busy: cpu0 %4s cpu1 %4s  %s' \
        "$p" "$load" "$rps" "$(awk '$1=="50%" {print $2}' "$RUN/wrk.txt")" "$(awk '$1=="99%" {print $2}' "$RUN/wrk.txt")" \
        "$(us $((p1 - p0)))" "$(us $((w1 - w0)))" "$(us $((u1 - u0)))" \
        "$(busy $((b0e - b0)) $((t0e - t0)))" "$(busy $((b1e - b1)) $((t1e - t1)))" "$net$(awk '/Socket errors|Non-2xx/ {printf "; %s", $0}' "$RUN/wrk.txt")")"
      echo "round $r $line"
      R[$p$load]+="$line"$'\n'
    done
  done
done
start sg; SG_TLS=$(tls_of 18090); stop sg
start nginx; NG_TLS=$(tls_of 18091); stop nginx
# Packets per connection on the wire (tcpdump on loopback, 2 s at LIGHT connections):
# each direction, the payload-carrying ones, resets.
packets_of() { # proxy port
  local pcap="$RUN/$1.pcap"
  start "$1"
  tcpdump -i lo -s 96 -w "$pcap" "tcp port $2" 2>/dev/null &
  local TD=$!
  sleep 0.5
  taskset -c 1 wrk -t1 -c"$LIGHT" -d2s -H "Connection: close" "https://127.0.0.1:$2/" >/dev/null
  sleep 0.3
  kill -INT "$TD"; wait "$TD" 2>/dev/null || true
  stop "$1"
  tcpdump -nn -r "$pcap" 2>/dev/null | awk -v port="$2" '
    { to_server = ($5 ~ ("\\." port ":$")) }
    / Flags \[S\],/ { conns++ }
    { if (to_server) cs++; else sc++ }
    / length [1-9]/ { if (to_server) cd++; else sd++ }
    / Flags \[R/ { r++ }
    END { if (!conns) conns = 1; printf "%d connections; per connection: client->proxy %.2f packets (%.2f with data), proxy->client %.2f (%.2f with data), resets %.2f", conns, cs/conns, cd/conns, sc/conns, sd/conns, r/conns }'
}
SG_PACKETS=$(packets_of sg 18090)
NG_PACKETS=$(packets_of nginx 18091)
# The client's side (perf, wrk -c$CONNS, 3 s; the upstream moved to CPU 0 so wrk
# has CPU 1 to itself): wrk's CPU time and context switches per request, and the
# share of its samples spent waking the proxy (`_raw_spin_unlock_irqrestore`,
# reached from the loopback delivery of wrk's own writes and connects to a
# proxy asleep in epoll_wait).
client_of() { # proxy port
  start "$1"
  taskset -c 1 perf stat -x, -e task-clock,context-switches -o "$RUN/wrk-stat.txt" \
    perf record -q -o "$RUN/wrk.data" -F 2000 \
    wrk -t1 -c"$CONNS" -d3s -H "Connection: close" "https://127.0.0.1:$2/" >"$RUN/wrk.txt" 2>/dev/null
  stop "$1"
  local n wake
  n=$(awk '/requests in/ {print $1}' "$RUN/wrk.txt")
  wake=$(perf report -i "$RUN/wrk.data" --no-children --sort sym --stdio 2>/dev/null |
    awk '/_raw_spin_unlock_irqrestore/ {print $1; exit}')
  awk -F, -v n="$n" -v w="${wake:-0%}" '$3 == "task-clock" {t = $1} $3 == "context-switches" {c = $1}
    END {printf "wrk %.0f us CPU and %.2f context switches per request; waking the proxy: %s of wrk samples", t * 1000 / n, c / n, w}' "$RUN/wrk-stat.txt"
}
kill "$UPMAIN"; wait "$UPMAIN" 2>/dev/null || true
sleep 0.3
taskset -c 0 nginx -c "$RUN/upstream-nginx.conf" -p "$RUN" &
UPMAIN=$!
serving http://127.0.0.1:18081/ /dev/null
SG_CLIENT=$(client_of sg 18090)
NG_CLIENT=$(client_of nginx 18091)
tag=$(machine_tag)
dest="load-tests/results/https-new-conn-$(nproc)core-${tag:-unknown}.txt"
{
  echo "# load-tests/https-new-conn.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); kernel $(uname -r); $(nginx -v 2>&1); $(wrk -v 2>&1 | head -1 | cut -c1-40); $(openssl version)"
  echo "shardgate $REV; proxies on CPU 0, wrk (-t1, Connection: close) and the upstream on CPU 1; $ROUNDS rounds of ${DURATION}s"
  echo "TLS with OpenSSL's client: shardgate: $SG_TLS"
  echo "                           nginx:     $NG_TLS"
  echo "On the wire (tcpdump, wrk -c$LIGHT, 2 s): shardgate: $SG_PACKETS"
  echo "                                     nginx:     $NG_PACKETS"
  echo "The client (perf on wrk -c$CONNS, upstream on CPU 0): shardgate: $SG_CLIENT"
  echo "                                                   nginx:     $NG_CLIENT"
  for k in "sg$CONNS" "nginx$CONNS" "sg$LIGHT" "nginx$LIGHT"; do printf '%s' "${R[$k]:-}"; done
} >"$dest"
echo; cat "$dest"; echo "written to $dest"
