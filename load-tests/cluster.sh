#!/usr/bin/env bash
# Cluster mode (store.redis) against embedded mode, and how exact a shared
# throttle is across three nodes. On one machine, loopback only:
#
#   load-tests/cluster.sh                 # ROUNDS=5 DURATION=5
#
# 1. CPU per keyed request (API key, usage plan with throttle and quota, stage
#    throttle: peers/shardgate-keyed.yaml) of one node in embedded mode and in
#    cluster mode, alternating, each pinned to CPU 0 with the upstream nginx and
#    wrk on CPU 1; and Redis commands per 10,000 requests in cluster mode
#    (INFO commandstats before and after).
# 2. A stage throttle of 100, 1,000 and 10,000 requests/s (burst a tenth) shared
#    by three nodes (one worker each), each loaded by its own wrk at once for
#    DURATION seconds: admitted (2xx) against rate × t + burst.
# Writes load-tests/results/cluster-$(nproc)core-<cpu>.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
. load-tests/lib.sh
need_apt wrk:wrk nginx:nginx redis-server:redis-server curl:curl
ports_free '1808[16]|1810[0-9]'
cargo build --release --quiet
SG=./target/release/shardgate
run_dir
KEY=bench0123456789abcdefXYZ
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

redis-server --port 18100 --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
PIDS+=($!)
sed "s#__RUN__#$RUN#g" load-tests/peers/upstream-nginx.conf >"$RUN/upstream-nginx.conf"
taskset -c 1 nginx -c "$RUN/upstream-nginx.conf" -p "$RUN" &
PIDS+=($!)
for _ in $(seq 50); do curl -sf http://127.0.0.1:18081/ >/dev/null && redis-cli -p 18100 ping >/dev/null 2>&1 && break; sleep 0.1; done

cp load-tests/peers/shardgate-keyed.yaml "$RUN/embedded.yaml"
{ sed 's/18086/18101/' load-tests/peers/shardgate-keyed.yaml
  echo 'store: { redis: { url: "redis://127.0.0.1:18100/0", key_prefix: "bench:" } }'
  echo 'admin: { bind: "127.0.0.1:18109" }'; } >"$RUN/cluster.yaml"

CLK=$(getconf CLK_TCK)
# Round trips the node made to Redis (its /metrics; a script or pipeline is one).
redis_calls() { curl -s http://127.0.0.1:18109/metrics 2>/dev/null | awk '/^shardgate_redis_round_trips_total/ {print $2}' | grep . || echo 0; }

# measure NAME CONFIG PORT: one run; appends "cpu_us ops_per_10k" to R_NAME.
declare -A R
measure() {
  local name=$1 conf=$2 port=$3
  taskset -c 0 "$SG" run --config "$conf" --runtime epoll 2>>"$RUN/$name.log" &
  local pid=$!
  for _ in $(seq 100); do curl -sf -H "x-api-key: $KEY" "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c50 -d1 -H "x-api-key: $KEY" "http://127.0.0.1:$port/" >/dev/null
  local t0 c0 t1 c1 out reqs
  t0=$(cpu_ticks "$pid"); c0=$(redis_calls)
  out=$(taskset -c 1 wrk -t1 -c50 -d"$DURATION" -H "x-api-key: $KEY" "http://127.0.0.1:$port/")
  t1=$(cpu_ticks "$pid"); c1=$(redis_calls)
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local cpu ops
  cpu=$(awk -v a="$t0" -v b="$t1" -v n="$reqs" -v k="$CLK" 'BEGIN {printf "%.2f", (b - a) / k * 1e6 / n}')
  ops=$(awk -v a="$c0" -v b="$c1" -v n="$reqs" 'BEGIN {printf "%.1f", (b - a) * 10000 / n}')
  R[$name]+="$cpu/$ops "
  echo "  $name: $reqs requests, cpu ${cpu} us/req, redis round trips per 10k requests ${ops}"
}

echo "== keyed small GET, embedded vs cluster mode ($ROUNDS rounds, ${DURATION}s)"
for r in $(seq "$ROUNDS"); do
  measure embedded "$RUN/embedded.yaml" 18086
  measure cluster "$RUN/cluster.yaml" 18101
done
emb=$(echo "${R[embedded]}" | tr ' ' '\n' | cut -d/ -f1 | median)
clu=$(echo "${R[cluster]}" | tr ' ' '\n' | cut -d/ -f1 | median)
ops=$(echo "${R[cluster]}" | tr ' ' '\n' | cut -d/ -f2 | median)

echo "== a stage throttle shared by three nodes"
ACC=""
for rate in 100 1000 10000; do
  burst=$(( rate / 10 > 10 ? rate / 10 : 10 ))
  redis-cli -p 18100 flushall >/dev/null
  nodes=()
  for i in 0 1 2; do
    port=$((18102 + i))
    cat >"$RUN/throttle-$i.yaml" <<EOF
workers: 1
listeners: [ { name: bench, bind: "127.0.0.1:$port" } ]
store: { redis: { url: "redis://127.0.0.1:18100/0", key_prefix: "thr$rate:" } }
apis:
  - name: bench
    routes: [ { route: \$default, integration: { type: mock, body: ok } } ]
    stages: [ { name: \$default, throttle: { rate: $rate, burst: $burst } } ]
EOF
    "$SG" run --config "$RUN/throttle-$i.yaml" --runtime epoll 2>>"$RUN/throttle-$i.log" &
    nodes+=($!)
  done
  for i in 0 1 2; do
    for _ in $(seq 100); do curl -s "http://127.0.0.1:$((18102 + i))/" >/dev/null 2>&1 && break; sleep 0.05; done
  done
  sleep 1
  wrks=()
  for i in 0 1 2; do
    wrk -t1 -c8 -d"$DURATION" "http://127.0.0.1:$((18102 + i))/" >"$RUN/wrk-$rate-$i.txt" &
    wrks+=($!)
  done
  for p in "${wrks[@]}"; do wait "$p"; done
  total=0; non=0
  for i in 0 1 2; do
    t=$(awk '/requests in/ {print $1}' "$RUN/wrk-$rate-$i.txt"); total=$((total + ${t:-0}))
    n=$(awk '/Non-2xx/ {print $5}' "$RUN/wrk-$rate-$i.txt"); non=$((non + ${n:-0}))
  done
  admitted=$((total - non))
  ideal=$(awk -v r="$rate" -v d="$DURATION" -v b="$burst" 'BEGIN {print r * d + b}')
  line=$(printf "  %6s/s burst %5s: %7s admitted of %8s offered in %ss; rate x t + burst = %7s; ratio %s" \
    "$rate" "$burst" "$admitted" "$total" "$DURATION" "$ideal" "$(awk -v a="$admitted" -v i="$ideal" 'BEGIN {printf "%.3f", a / i}')")
  echo "$line"; ACC+="$line"$'\n'
  for p in "${nodes[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${nodes[@]}"; do wait "$p" 2>/dev/null || true; done
done

tag=$(machine_tag)
dest="load-tests/results/cluster-$(nproc)core-${tag:-unknown}.txt"
{
  echo "# load-tests/cluster.sh, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(redis-server --version | cut -d' ' -f1-3)"
  echo "shardgate $(git rev-parse --short HEAD)$(git diff --quiet || echo +changes)"
  echo
  echo "keyed small GET (key, plan throttle and quota, stage throttle), one worker pinned to CPU 0,"
  echo "$ROUNDS alternating rounds of ${DURATION}s, medians:"
  echo "  embedded: cpu $emb us/req"
  echo "  cluster:  cpu $clu us/req ($(awk -v a="$clu" -v b="$emb" 'BEGIN {printf "%.3f", a / b}')x embedded; bar: <= 1.10x)"
  echo "  redis round trips per 10,000 requests in cluster mode: $ops (quota grants, throttle refills, usage, heartbeats)"
  echo "  per round (cpu/ops): embedded ${R[embedded]}; cluster ${R[cluster]}"
  echo
  echo "a stage throttle shared by three nodes (one worker each, wrk -c8 on each at once, ${DURATION}s):"
  printf "%s" "$ACC"
} >"$dest"
echo; cat "$dest"; echo "written to $dest"
