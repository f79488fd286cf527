#!/usr/bin/env bash
# Does the response cache stay within capacity_mb? One worker with a 64 MiB stage
# cache is offered twice that: 2,048 distinct 64 KiB responses (proxied from a mock
# route of the same gateway). Prints the RSS growth, what GET /cache says it holds,
# and both against the capacity.
#   load-tests/cache-memory.sh [CAPACITY_MB=64] [ENTRIES=2048]
set -euo pipefail
cd "$(dirname "$0")/.."
CAP=${1:-64}
N=${2:-2048}
command -v curl >/dev/null || { apt-get update -qq && apt-get install -y -qq curl >/dev/null; }
cargo build --release --quiet
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$RUN"' EXIT
BODY=$(head -c 65536 /dev/zero | tr '\0' 'x')
cat >"$RUN/c.yaml" <<YAML
workers: 1
listeners: [ { name: b, bind: "127.0.0.1:18097" } ]
admin: { bind: "127.0.0.1:18098", token: { env: SG_MEM_TOKEN } }
apis:
  - name: m
    routes:
      - { route: 'GET /c/{n}', integration: { type: http_proxy, uri: "http://127.0.0.1:18097/m/body" } }
      - { route: 'GET /m/body', integration: { type: mock, body: "$BODY" } }
    stages:
      - name: \$default
        cache: { capacity_mb: $CAP, ttl_s: 3600 }
YAML
export SG_MEM_TOKEN=cache-memory-token-0123
MIMALLOC_PURGE_DELAY=0 ./target/release/shardgate run --config "$RUN/c.yaml" 2>"$RUN/log" &
PID=$!
for _ in $(seq 100); do curl -sf http://127.0.0.1:18097/m/body >/dev/null && break; sleep 0.05; done
rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
before=$(rss)
for i in $(seq "$N"); do echo "url = \"http://127.0.0.1:18097/c/$i\""; echo "output = /dev/null"; done >"$RUN/urls"
curl -s --no-progress-meter --parallel --parallel-max 8 -K "$RUN/urls" || true
sleep 1.5  # a worker tick returns freed pages
after=$(rss)
stats=$(curl -s -H "Authorization: Bearer $SG_MEM_TOKEN" http://127.0.0.1:18098/cache)
entries=$(echo "$stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["entries"])')
bytes=$(echo "$stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["items"][0]["bytes"])')
offered=$((N * 64))
echo "capacity ${CAP} MiB; offered ${N} x 64 KiB = $((offered / 1024)) MiB"
echo "cache holds ${entries} entries, $((bytes / 1048576)) MiB counted (bodies, headers, keys, 160 B each)"
awk -v b="$before" -v a="$after" -v c="$CAP" 'BEGIN {
  g = (a - b) / 1024; printf "RSS %.1f MiB -> %.1f MiB: grew %.1f MiB = %.2fx capacity\n", b/1024, a/1024, g, g / c }'
