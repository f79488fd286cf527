#!/usr/bin/env bash
# shardgate beside nginx and HAProxy as reverse proxies to one fast upstream, measured
# the same way. Every proxy runs one worker/thread pinned to CPU 0; the upstream
# (nginx, peers/upstream-nginx.conf) and the load generator share CPU 1.
#
#   load-tests/compare.sh            # ROUNDS=3 DURATION=2 (seconds per run)
#   ROUNDS=5 DURATION=10 RATE=20000 load-tests/compare.sh
#   ONLY="small-get small-get-keyed" load-tests/compare.sh   # some scenarios only:
#       no memory phase, and the results file is left alone
#   SG=/tmp/shardgate-old ONLY=small-get load-tests/compare.sh  # another binary, unbuilt
#
# Rounds are interleaved (every scenario and proxy once per round) so drift hits all
# alike; the table gives medians. Per proxy and scenario: requests/s, p50 and p99
# latency, the proxy process's CPU time per request (utime+stime from /proc/PID/stat
# over the run, divided by requests served), CPU 0's busy time per request (a
# cross-check of the same), upstream connections opened per 10,000
# requests (nginx stub_status on the upstream), errors; then shardgate's ratios to
# nginx and HAProxy. A memory phase measures RSS growth per idle keep-alive client
# connection with IDLE_CONNS (4,000) open, each proxy freshly started.
# Writes the table, with machine, kernel and versions, to load-tests/results/.
# Installs what is missing: wrk, nginx, haproxy, curl (apt), oha (cargo).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-1}
RATE=${RATE:-20000}
IDLE_CONNS=${IDLE_CONNS:-4000}
[ "$(nproc)" -ge 2 ] || { echo "needs 2 or more CPUs (proxy on CPU 0, load on CPU 1)"; exit 1; }
ulimit -n "$(ulimit -Hn)"

. load-tests/lib.sh
need_apt wrk:wrk nginx:nginx haproxy:haproxy curl:curl python3:python3 openssl:openssl
export PATH="$HOME/.cargo/bin:$PATH"
command -v oha >/dev/null || { echo "installing oha (cargo install, a few minutes)"; cargo install oha --locked --quiet; }
# SG=PATH measures that binary as it is (load-tests/before-after.sh compares two).
if [ -z "${SG:-}" ]; then
  cargo build --release --quiet
  SG=./target/release/shardgate
fi

ports_free '1808[0-9]|1809[0-9]'

run_dir
bodies "$RUN/www/files"
# One certificate for every TLS proxy: ECDSA P-256, as most public APIs now use.
mkdir -p "$RUN/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
  -keyout "$RUN/tls/key.pem" -out "$RUN/tls/cert.pem" 2>/dev/null
cat "$RUN/tls/cert.pem" "$RUN/tls/key.pem" >"$RUN/tls/combined.pem"
for f in upstream-nginx.conf proxy-nginx.conf proxy-nginx-cache.conf proxy-haproxy.cfg \
  proxy-nginx-tls.conf proxy-haproxy-tls.cfg shardgate-tls.yaml shardgate-obs.yaml \
  proxy-nginx-group.conf; do
  sed "s#__RUN__#$RUN#g" "load-tests/peers/$f" >"$RUN/$f"
done
cp load-tests/peers/shardgate.yaml "$RUN/sg-epoll.yaml"
# A JWT for the sg-jwt proxy: an RSA-2048 key, its JWKS inline in the config, and
# an RS256 token signed with openssl (valid for a day).
openssl genrsa -out "$RUN/jwt.key" 2048 2>/dev/null
JWT=$(python3 - "$RUN/jwt.key" "$RUN/jwks.json" <<'EOF'
import base64, json, subprocess, sys, time
key, jwks_path = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
mod = subprocess.run(["openssl", "rsa", "-in", key, "-noout", "-modulus"], capture_output=True, text=True, check=True)
n = bytes.fromhex(mod.stdout.strip().split("=", 1)[1])
json.dump({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig", "n": b64(n), "e": "AQAB"}]}, open(jwks_path, "w"))
now = int(time.time())
head = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "bench"}).encode())
body = b64(json.dumps({"iss": "https://id.bench/", "aud": "bench", "sub": "bench-user", "scope": "bench:read", "iat": now, "exp": now + 86400}).encode())
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=f"{head}.{body}".encode(), capture_output=True, check=True).stdout
print(f"{head}.{body}.{b64(sig)}")
EOF
)
sed "s#__JWKS__#$(cat "$RUN/jwks.json")#" load-tests/peers/shardgate-jwt.yaml >"$RUN/sg-jwt.yaml"
sed 's/18083/18084/' load-tests/peers/shardgate.yaml >"$RUN/sg-uring.yaml"

taskset -c 1 nginx -c "$RUN/upstream-nginx.conf" -p "$RUN" &
for _ in $(seq 50); do curl -sf http://127.0.0.1:18081/ >/dev/null && break; sleep 0.1; done
upstream_accepts() { curl -sf http://127.0.0.1:18081/status | awk 'NR==3 {print $1}'; }

PROXIES=(sg-epoll sg-uring sg-keyed sg-keyed-store sg-cache nginx nginx-cache haproxy sg-tls nginx-tls haproxy-tls sg-jwt sg-bare sg-obs sg-group nginx-group)
# The memory phase's client sends no API key.
MEM_PROXIES=(sg-epoll sg-uring nginx haproxy)
declare -A PORT=([sg-epoll]=18083 [sg-uring]=18084 [sg-keyed]=18086 [sg-keyed-store]=18087 [sg-cache]=18088 [nginx]=18082 [nginx-cache]=18089 [haproxy]=18085 [sg-tls]=18090 [nginx-tls]=18091 [haproxy-tls]=18092 [sg-jwt]=18093 [sg-bare]=18094 [sg-obs]=18095 [sg-group]=18096 [nginx-group]=18080)
scheme() { case $1 in *-tls) echo https ;; *) echo http ;; esac; }
# The keyed setup with a persistent store: the writer thread saves each lease.
{ sed 's/18086/18087/' load-tests/peers/shardgate-keyed.yaml; echo "store: { path: $RUN/store }"; } >"$RUN/sg-keyed-store.yaml"
KEY=bench0123456789abcdefXYZ  # peers/shardgate-keyed.yaml's key
declare -A PID MAIN

start_proxy() {
  local p=$1
  case $p in
    sg-epoll) taskset -c 0 "$SG" run --config "$RUN/sg-epoll.yaml" --runtime epoll 2>>"$RUN/sg-epoll.log" & ;;
    sg-uring) taskset -c 0 "$SG" run --config "$RUN/sg-uring.yaml" --runtime io_uring 2>>"$RUN/sg-uring.log" & ;;
    sg-keyed) taskset -c 0 "$SG" run --config load-tests/peers/shardgate-keyed.yaml --runtime epoll 2>>"$RUN/sg-keyed.log" & ;;
    sg-keyed-store) taskset -c 0 "$SG" run --config "$RUN/sg-keyed-store.yaml" --runtime epoll 2>>"$RUN/sg-keyed-store.log" & ;;
    sg-cache) taskset -c 0 "$SG" run --config load-tests/peers/shardgate-cache.yaml --runtime epoll 2>>"$RUN/sg-cache.log" & ;;
    nginx) taskset -c 0 nginx -c "$RUN/proxy-nginx.conf" -p "$RUN" & ;;
    nginx-cache) taskset -c 0 nginx -c "$RUN/proxy-nginx-cache.conf" -p "$RUN" & ;;
    haproxy) taskset -c 0 haproxy -f "$RUN/proxy-haproxy.cfg" -db 2>>"$RUN/haproxy.log" & ;;
    sg-tls) taskset -c 0 "$SG" run --config "$RUN/shardgate-tls.yaml" --runtime epoll 2>>"$RUN/sg-tls.log" & ;;
    nginx-tls) taskset -c 0 nginx -c "$RUN/proxy-nginx-tls.conf" -p "$RUN" & ;;
    haproxy-tls) taskset -c 0 haproxy -f "$RUN/proxy-haproxy-tls.cfg" -db 2>>"$RUN/haproxy-tls.log" & ;;
    sg-jwt) taskset -c 0 "$SG" run --config "$RUN/sg-jwt.yaml" --runtime epoll 2>>"$RUN/sg-jwt.log" & ;;
    sg-bare) taskset -c 0 "$SG" run --config load-tests/peers/shardgate-bare.yaml --runtime epoll 2>>"$RUN/sg-bare.log" & ;;
    sg-obs) taskset -c 0 "$SG" run --config "$RUN/shardgate-obs.yaml" --runtime epoll 2>>"$RUN/sg-obs.log" & ;;
    sg-group) taskset -c 0 "$SG" run --config load-tests/peers/shardgate-group.yaml --runtime epoll 2>>"$RUN/sg-group.log" & ;;
    nginx-group) taskset -c 0 nginx -c "$RUN/proxy-nginx-group.conf" -p "$RUN" & ;;
  esac
  MAIN[$p]=$!
  PID[$p]=$!
  local url
  url="$(scheme "$p")://127.0.0.1:${PORT[$p]}/"
  local auth=(-H "x-api-key: $KEY" -H "authorization: Bearer $JWT")
  for _ in $(seq 100); do curl -sfk "${auth[@]}" "$url" >/dev/null 2>&1 && break; sleep 0.05; done
  curl -sfk "${auth[@]}" "$url" >/dev/null || { echo "$p did not start"; exit 1; }
  # nginx serves from a forked worker: measure that process.
  case $p in nginx|nginx-cache|nginx-tls|nginx-group)
    # Its cache manager and loader are children too: take the worker.
    for c in $(pgrep -P "${MAIN[$p]}"); do
      if grep -aq 'worker process' "/proc/$c/cmdline" 2>/dev/null; then PID[$p]=$c; fi
    done ;;
  esac
}
stop_proxy() {
  kill "${MAIN[$1]}" 2>/dev/null || true
  wait "${MAIN[$1]}" 2>/dev/null || true
}
# CPU 0's busy time (user, nice, system, irq, softirq): the proxy is all that runs
# there, so it should match the process's figure; where it does not, something else
# is using the core (or the proxy's port) and the run is suspect.
core_ticks() { awk '/^cpu0 / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
CLK=$(getconf CLK_TCK)

# Scenarios: name|proxies|load. Load "wrk ARGS|PATH" or "oha|PATH".
SCENARIOS=(
  "small-get|sg-epoll sg-uring nginx haproxy|wrk -c50|/"
  "small-get-keyed|sg-keyed sg-keyed-store|wrk -c50 keyed|/"
  "cache-hit|sg-cache nginx-cache|wrk -c50|/"
  "1k|sg-epoll nginx haproxy|wrk -c50|/files/1k"
  "16k|sg-epoll nginx haproxy|wrk -c50|/files/16k"
  "64k|sg-epoll nginx haproxy|wrk -c50|/files/64k"
  "post-4k|sg-epoll nginx haproxy|wrk -c50 post|/post"
  "new-conn|sg-epoll nginx haproxy|wrk -c50 close|/"
  "c1000|sg-epoll nginx haproxy|wrk -c1000|/"
  "open-${RATE}rps|sg-epoll sg-uring nginx haproxy|oha|/"
  # HTTPS: each proxy terminates TLS with the same certificate; keep-alive, and a
  # new connection (a full handshake, wrk resumes no session) per request.
  "https-get|sg-tls nginx-tls haproxy-tls|wrk -c50|/"
  "https-new-conn|sg-tls nginx-tls haproxy-tls|wrk -c50 close|/"
  # Issue 7: every request carries a bearer token the JWT authorizer checks (the
  # same token on every connection: verified once per worker, then remembered);
  # sg-epoll in the same scenario gets the same header and ignores it.
  "small-get-jwt|sg-jwt sg-epoll|wrk -c50 jwt|/"
  # Issue 8: metrics and a JSON access log line per request, against both off
  # (trace-header creation off in both). The log writer thread is pinned with the worker (CPU 0), so its
  # cost is in the process's CPU figure.
  "small-get-obs|sg-obs sg-bare|wrk -c50|/"
  # Issue 18: a group of four targets (least request) against the one-target
  # route, and nginx's upstream with least_conn and keepalive.
  "group-4|sg-group sg-epoll nginx-group|wrk -c50|/"
)
if [ -n "${ONLY:-}" ]; then
  kept=()
  for sc in "${SCENARIOS[@]}"; do
    for o in $ONLY; do [ "${sc%%|*}" = "$o" ] && kept+=("$sc"); done
  done
  SCENARIOS=("${kept[@]}")
fi

# The proxies the scenarios measure (a partial run starts only those: an older
# binary, SG=..., need not know a newer scenario's config).
USED=()
for p in "${PROXIES[@]}"; do
  for sc in "${SCENARIOS[@]}"; do
    IFS='|' read -r _ procs _ _ <<<"$sc"
    case " $procs " in *" $p "*) USED+=("$p"); break ;; esac
  done
done

declare -A R_RPS R_P50 R_P99 R_CPU R_CORE R_UP R_ERR R_SYS
# measure SCENARIO PROXY LOAD PATH: one run, appended to the R_* lists.
measure() {
  local s=$1 p=$2 load=$3 path=$4 url out t0 t1 k0 k1 a0 a1 reqs rps p50 p99 errs
  url="$(scheme "$p")://127.0.0.1:${PORT[$p]}$path"
  local conns script extra=()
  conns=$(echo "$load" | grep -o -- '-c[0-9]*' | tr -d -c '0-9' || true)
  script=load-tests/wrk/report.lua
  case "$load" in *post*) script=load-tests/wrk/post-4k-report.lua ;; esac
  case "$load" in *close*) extra=(-H "Connection: close") ;; esac
  case "$load" in *keyed*) extra=(-H "x-api-key: $KEY") ;; esac
  case "$load" in *jwt*) extra=(-H "authorization: Bearer $JWT") ;; esac
  if [[ $load == oha ]]; then
    taskset -c 1 oha -z "${WARMUP}s" -c 50 --no-tui --output-format quiet "$url" >/dev/null 2>&1 || true
    a0=$(upstream_accepts); t0=$(cpu_ticks "${PID[$p]}"); k0=$(core_ticks); s0=$(sys_ticks "${PID[$p]}")
    taskset -c 1 oha -q "$RATE" --latency-correction -z "${DURATION}s" -c 50 --no-tui \
      --output-format json "$url" >"$RUN/oha.json" 2>/dev/null
    k1=$(core_ticks); t1=$(cpu_ticks "${PID[$p]}"); a1=$(upstream_accepts); s1=$(sys_ticks "${PID[$p]}")
    read -r reqs rps p50 p99 errs < <(python3 - "$RUN/oha.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
codes = d.get("statusCodeDistribution", {})
ok = codes.get("200", 0)
bad = sum(v for k, v in codes.items() if k != "200") + sum(d.get("errorDistribution", {}).values())
lp = d["latencyPercentiles"]
print(ok, round(d["summary"]["requestsPerSec"], 1), round(lp["p50"] * 1e6), round(lp["p99"] * 1e6), bad)
EOF
)
  else
    taskset -c 1 wrk -t1 -c"$conns" -d"${WARMUP}s" "${extra[@]}" -s "$script" "$url" >/dev/null 2>&1 || true
    a0=$(upstream_accepts); t0=$(cpu_ticks "${PID[$p]}"); k0=$(core_ticks); s0=$(sys_ticks "${PID[$p]}")
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${DURATION}s" --timeout 5s "${extra[@]}" -s "$script" "$url" | grep '^REPORT')
    k1=$(core_ticks); t1=$(cpu_ticks "${PID[$p]}"); a1=$(upstream_accepts); s1=$(sys_ticks "${PID[$p]}")
    reqs=$(echo "$out" | sed 's/.*requests=\([0-9]*\).*/\1/')
    rps=$(echo "$out" | sed 's/.*rps=\([0-9.]*\).*/\1/')
    p50=$(echo "$out" | sed 's/.*p50_us=\([0-9]*\).*/\1/')
    p99=$(echo "$out" | sed 's/.*p99_us=\([0-9]*\).*/\1/')
    errs=$(echo "$out" | awk '{split($6, a, "="); split($7, b, "="); print a[2] + b[2]}')
  fi
  local cpu core up sys
  cpu=$(awk -v d="$((t1 - t0))" -v c="$CLK" -v n="$reqs" 'BEGIN { printf "%.2f", n ? d / c * 1e6 / n : 0 }')
  sys=$(awk -v d="$((s1 - s0))" -v c="$CLK" -v n="$reqs" 'BEGIN { printf "%.2f", n ? d / c * 1e6 / n : 0 }')
  core=$(awk -v d="$((k1 - k0))" -v c="$CLK" -v n="$reqs" 'BEGIN { printf "%.2f", n ? d / c * 1e6 / n : 0 }')
  # a1 counts the connection that read a0.
  up=$(awk -v a="$((a1 - a0 - 1))" -v n="$reqs" 'BEGIN { printf "%.1f", n ? a * 10000 / n : 0 }')
  local k="$s|$p"
  R_RPS[$k]+="$rps "; R_P50[$k]+="$p50 "; R_P99[$k]+="$p99 "; R_CPU[$k]+="$cpu "; R_CORE[$k]+="$core "; R_UP[$k]+="$up "; R_ERR[$k]+="$errs "; R_SYS[$k]+="$sys "
  printf '  %-16s %-9s %10s req/s  p50 %6sus  p99 %6sus  cpu %6sus/req  core %6sus/req  upstream-conns/10k %6s  errors %s  kernel %6sus/req\n' \
    "$s" "$p" "$rps" "$p50" "$p99" "$cpu" "$core" "$up" "$errs" "$sys"
}

declare -A M_RSS
measure_memory() {
  local p=$1 out
  start_proxy "$p"
  out=$(python3 load-tests/tools/idle_rss.py "${PID[$p]}" "${PORT[$p]}" "$IDLE_CONNS" 1.5)
  stop_proxy "$p"
  local per=${out##*per_conn_kib=}
  M_RSS[$p]+="$per "
  echo "  memory  $p: $out"
}

echo "== $ROUNDS rounds, ${DURATION}s per run (${WARMUP}s warm-up), open loop at $RATE req/s"
for r in $(seq "$ROUNDS"); do
  echo "-- round $r"
  for p in "${USED[@]}"; do start_proxy "$p"; done
  sleep 2  # let start-up settle before the first measured run
  for sc in "${SCENARIOS[@]}"; do
    IFS='|' read -r s procs load path <<<"$sc"
    for p in $procs; do measure "$s" "$p" "$load" "$path"; done
  done
  for p in "${USED[@]}"; do stop_proxy "$p"; done
  [ -n "${ONLY:-}" ] || for p in "${MEM_PROXIES[@]}"; do measure_memory "$p"; done
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 > 0 && a != "-") printf "%.2f", a / b; else print "-" }'; }

RESULT=$(mktemp)
set +u  # a partial run (ONLY=...) leaves other scenarios' figures unset: shown as -
{
  echo "# load-tests/compare.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel:  $(uname -sr)"
  echo "shardgate $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo '+changes'); $(nginx -v 2>&1 | sed 's/.*: //'); $(haproxy -v | head -1 | awk '{print "haproxy/" $3}'); $(wrk -v 2>&1 | head -1 | awk '{print "wrk/" $2}'); $(oha --version | tr ' ' '/')"
  echo "each proxy: 1 worker/thread pinned to CPU 0; upstream nginx + load generator on CPU 1"
  echo "$ROUNDS interleaved rounds, ${DURATION}s runs, medians. wrk -t1 (closed loop); open loop: oha -q $RATE -c 50 --latency-correction"
  echo "cpu = proxy process utime+stime per request; core = CPU 0 busy (user+system+irq+softirq) per request,"
  echo "  a cross-check: it matches cpu unless something else ran on the proxy's core;"
  echo "  up/10k = new upstream connections per 10,000 requests; sys_us = the kernel's part of cpu (stime)"
  echo
  printf '%-16s %-9s %11s %8s %8s %8s %8s %7s %6s %8s\n' scenario proxy req/s p50_us p99_us cpu_us core_us up/10k errors sys_us
  for sc in "${SCENARIOS[@]}"; do
    IFS='|' read -r s procs _ _ <<<"$sc"
    for p in $procs; do
      k="$s|$p"
      printf '%-16s %-9s %11s %8s %8s %8s %8s %7s %6s %8s\n' "$s" "$p" \
        "$(echo "${R_RPS[$k]}" | median)" "$(echo "${R_P50[$k]}" | median)" "$(echo "${R_P99[$k]}" | median)" \
        "$(echo "${R_CPU[$k]}" | median)" "$(echo "${R_CORE[$k]}" | median)" "$(echo "${R_UP[$k]}" | median)" "$(echo "${R_ERR[$k]}" | median)" \
        "$(echo "${R_SYS[$k]}" | median)"
    done
  done
  echo
  echo "shardgate (epoll) / peer, medians:   cpu/req  core/req     p99   req/s"
  for sc in "${SCENARIOS[@]}"; do
    IFS='|' read -r s procs _ _ <<<"$sc"
    sg=sg-epoll sfx=
    [[ " $procs " == *" sg-tls "* ]] && sg=sg-tls sfx=-tls
    [[ " $procs " == *" $sg "* ]] || continue
    for peer in nginx$sfx haproxy$sfx; do
      printf '  %-16s / %-11s %9s %9s %7s %7s\n' "$s" "$peer" \
        "$(ratio "$(echo "${R_CPU[$s|$sg]}" | median)" "$(echo "${R_CPU[$s|$peer]}" | median)")" \
        "$(ratio "$(echo "${R_CORE[$s|$sg]}" | median)" "$(echo "${R_CORE[$s|$peer]}" | median)")" \
        "$(ratio "$(echo "${R_P99[$s|$sg]}" | median)" "$(echo "${R_P99[$s|$peer]}" | median)")" \
        "$(ratio "$(echo "${R_RPS[$s|$sg]}" | median)" "$(echo "${R_RPS[$s|$peer]}" | median)")"
    done
  done
  echo
  echo "RSS growth per idle keep-alive client connection ($IDLE_CONNS open, fresh process), KiB, median:"
  for p in "${MEM_PROXIES[@]}"; do printf '  %-9s %6s\n' "$p" "$(echo "${M_RSS[$p]}" | median)"; done
  echo
  sg_cpu=$(echo "${R_CPU[small-get|sg-epoll]}" | median); ng_cpu=$(echo "${R_CPU[small-get|nginx]}" | median)
  sg_core=$(echo "${R_CORE[small-get|sg-epoll]}" | median); ng_core=$(echo "${R_CORE[small-get|nginx]}" | median)
  sg_p99=$(echo "${R_P99[small-get|sg-epoll]}" | median); ng_p99=$(echo "${R_P99[small-get|nginx]}" | median)
  sg_rss=$(echo "${M_RSS[sg-epoll]}" | median); sg_up=$(echo "${R_UP[small-get|sg-epoll]}" | median)
  verdict() { if [ "$1" = 1 ]; then echo holds; else echo "does not hold"; fi; }
  echo "The bar (small GET, 50 keep-alive connections):"
  echo "  process cpu/req <= 0.6x nginx: $(ratio "$sg_cpu" "$ng_cpu")x -> $(verdict "$(awk -v a="$sg_cpu" -v b="$ng_cpu" 'BEGIN{print (a <= 0.6 * b)}')")"
  echo "  core cpu/req <= 0.6x nginx (cross-check): $(ratio "$sg_core" "$ng_core")x -> $(verdict "$(awk -v a="$sg_core" -v b="$ng_core" 'BEGIN{print (a <= 0.6 * b)}')")"
  echo "  p99 <= nginx's: ${sg_p99}us vs ${ng_p99}us -> $(verdict "$(awk -v a="$sg_p99" -v b="$ng_p99" 'BEGIN{print (a <= b)}')")"
  echo "  RSS per idle connection <= 2 KiB: ${sg_rss} KiB -> $(verdict "$(awk -v a="$sg_rss" 'BEGIN{print (a <= 2)}')")"
  echo "  new upstream connections per 10k requests = 0: ${sg_up} -> $(verdict "$(awk -v a="$sg_up" 'BEGIN{print (a == 0)}')")"
  echo "  no allocation per request in codec and router: cargo test --release --test alloc"
  kd_cpu=$(echo "${R_CPU[small-get-keyed|sg-keyed]}" | median)
  ks_cpu=$(echo "${R_CPU[small-get-keyed|sg-keyed-store]}" | median)
  echo "Issue 4: small GET with an API key, a usage plan (throttle, quota) and a stage throttle:"
  echo "  cpu/req vs plain small GET: $(ratio "$kd_cpu" "$sg_cpu")x (${kd_cpu} vs ${sg_cpu} us) -> $(verdict "$(awk -v a="$kd_cpu" -v b="$sg_cpu" 'BEGIN{print (a <= 1.1 * b)}')") (bar: <= 1.10x)"
  echo "  with store.path (each lease saved by the writer thread): $(ratio "$ks_cpu" "$sg_cpu")x (${ks_cpu} us)"
  ch_cpu=$(echo "${R_CPU[cache-hit|sg-cache]}" | median)
  nc_cpu=$(echo "${R_CPU[cache-hit|nginx-cache]}" | median)
  echo "Issue 5: cache hit (small GET served from the cache):"
  echo "  cpu/req vs nginx proxying: $(ratio "$ch_cpu" "$ng_cpu")x (${ch_cpu} vs ${ng_cpu} us) -> $(verdict "$(awk -v a="$ch_cpu" -v b="$ng_cpu" 'BEGIN{print (a <= 0.3 * b)}')") (bar: <= 0.30x)"
  echo "  cpu/req vs nginx proxy_cache hit: $(ratio "$ch_cpu" "$nc_cpu")x (${ch_cpu} vs ${nc_cpu} us) -> $(verdict "$(awk -v a="$ch_cpu" -v b="$nc_cpu" 'BEGIN{print (a <= 0.5 * b)}')") (bar: <= 0.50x)"
  ht_cpu=$(echo "${R_CPU[https-get|sg-tls]}" | median); nt_cpu=$(echo "${R_CPU[https-get|nginx-tls]}" | median)
  ht_rps=$(echo "${R_RPS[https-get|sg-tls]}" | median); nt_rps=$(echo "${R_RPS[https-get|nginx-tls]}" | median)
  echo "Issue 6: HTTPS keep-alive small GET, against nginx terminating TLS with the same certificate:"
  echo "  req/s >= nginx's: $(ratio "$ht_rps" "$nt_rps")x (${ht_rps} vs ${nt_rps}) -> $(verdict "$(awk -v a="$ht_rps" -v b="$nt_rps" 'BEGIN{print (a >= b)}')")"
  echo "  cpu/req <= 0.8x nginx: $(ratio "$ht_cpu" "$nt_cpu")x (${ht_cpu} vs ${nt_cpu} us) -> $(verdict "$(awk -v a="$ht_cpu" -v b="$nt_cpu" 'BEGIN{print (a <= 0.8 * b)}')")"
  hn_cpu=$(echo "${R_CPU[https-new-conn|sg-tls]}" | median); nn_cpu=$(echo "${R_CPU[https-new-conn|nginx-tls]}" | median)
  echo "  a new TLS connection per request (full handshake): ${hn_cpu} vs ${nn_cpu} us/req -> $(ratio "$hn_cpu" "$nn_cpu")x"
  jw_cpu=$(echo "${R_CPU[small-get-jwt|sg-jwt]}" | median); jp_cpu=$(echo "${R_CPU[small-get-jwt|sg-epoll]}" | median)
  jw_p99=$(echo "${R_P99[small-get-jwt|sg-jwt]}" | median); jp_p99=$(echo "${R_P99[small-get-jwt|sg-epoll]}" | median)
  echo "Issue 7: small GET with a JWT authorizer (RS256, a scope, one forwarded claim), against the same GET without:"
  echo "  cpu/req <= 1.15x: $(ratio "$jw_cpu" "$jp_cpu")x (${jw_cpu} vs ${jp_cpu} us) -> $(verdict "$(awk -v a="$jw_cpu" -v b="$jp_cpu" 'BEGIN{print (a <= 1.15 * b)}')")"
  echo "  p99: ${jw_p99} vs ${jp_p99} us"
  ob_cpu=$(echo "${R_CPU[small-get-obs|sg-obs]}" | median); ba_cpu=$(echo "${R_CPU[small-get-obs|sg-bare]}" | median)
  ob_p99=$(echo "${R_P99[small-get-obs|sg-obs]}" | median); ba_p99=$(echo "${R_P99[small-get-obs|sg-bare]}" | median)
  echo "Issue 8: small GET with metrics and a JSON access log, against both off:"
  echo "  cpu/req <= 1.05x: $(ratio "$ob_cpu" "$ba_cpu")x (${ob_cpu} vs ${ba_cpu} us) -> $(verdict "$(awk -v a="$ob_cpu" -v b="$ba_cpu" 'BEGIN{print (a <= 1.05 * b)}')")"
  echo "  p99: ${ob_p99} vs ${ba_p99} us"
  gr_cpu=$(echo "${R_CPU[group-4|sg-group]}" | median); g1_cpu=$(echo "${R_CPU[group-4|sg-epoll]}" | median)
  gn_cpu=$(echo "${R_CPU[group-4|nginx-group]}" | median)
  gr_p99=$(echo "${R_P99[group-4|sg-group]}" | median); gn_p99=$(echo "${R_P99[group-4|nginx-group]}" | median)
  echo "Issue 18: small GET through an upstream group of four targets (least request), against the one-target route:"
  echo "  cpu/req <= 1.05x: $(ratio "$gr_cpu" "$g1_cpu")x (${gr_cpu} vs ${g1_cpu} us) -> $(verdict "$(awk -v a="$gr_cpu" -v b="$g1_cpu" 'BEGIN{print (a <= 1.05 * b)}')")"
  echo "  vs nginx upstream (least_conn, keepalive): cpu/req $(ratio "$gr_cpu" "$gn_cpu")x (${gr_cpu} vs ${gn_cpu} us), p99 ${gr_p99} vs ${gn_p99} us"
  # Issue 23's two other measures have scripts of their own (strace/perf, and
  # 4,000 connections per shape): their latest results for this machine.
  for f in idle-memory syscalls; do
    r="load-tests/results/$f-$(nproc)core-$(machine_tag).txt"
    echo "Issue 23, load-tests/$f.sh (latest run, $(sed -n '1s/.*, //p' "$r" 2>/dev/null || echo none)):"
    if [ -f "$r" ]; then grep -E '^  ' "$r" | grep -v 'per round\|last round'; else echo "  not run on this machine"; fi
  done
} >"$RESULT"
echo
cat "$RESULT"
[ -z "${ONLY:-}" ] || exit 0  # a partial run does not replace the results file
mkdir -p load-tests/results
tag=$(machine_tag)
dest="load-tests/results/compare-$(nproc)core-${tag:-unknown}.txt"
cp "$RESULT" "$dest"
rm -f "$RESULT"
echo "written to $dest"
