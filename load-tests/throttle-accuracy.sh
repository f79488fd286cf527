#!/usr/bin/env bash
# Throttle accuracy: with 2 workers and clients spread over both (64 connections),
# how close is the admitted rate to the configured one? For each rate, a stage
# throttle with burst = rate / 20 (at least 2) on a mock route; wrk offers far more
# than the rate for DURATION seconds; admitted = responses that were not 429.
#   load-tests/throttle-accuracy.sh [DURATION=30] [RATES="10 1000 20000"]
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-30}
RATES=${2:-"10 1000 20000"}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --quiet
busy=$(ss -Hltn 2>/dev/null | awk '{print $4}' | grep -E ':18090$' || true)
[ -z "$busy" ] || { echo "port 18090 is in use: $busy"; exit 1; }
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$RUN"' EXIT
printf '%-8s %-7s %10s %12s %10s\n' rate burst admitted "admitted/s" error
for rate in $RATES; do
  burst=$(( rate / 20 > 2 ? rate / 20 : 2 ))
  cat >"$RUN/t.yaml" <<YAML
workers: 2
listeners: [ { name: t, bind: "127.0.0.1:18090" } ]
apis:
  - name: t
    routes: [ { route: "GET /", integration: { type: mock, status: 200, body: ok } } ]
    stages: [ { name: \$default, throttle: { rate: $rate, burst: $burst } } ]
YAML
  ./target/release/shardgate run --config "$RUN/t.yaml" 2>"$RUN/sg.log" &
  pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null http://127.0.0.1:18090/ 2>/dev/null && break; sleep 0.1; done
  sleep 2  # let the probe's token come back and the bucket fill again
  out=$(wrk -t2 -c64 -d"${DURATION}s" -s load-tests/wrk/report.lua http://127.0.0.1:18090/ | grep '^REPORT')
  kill "$pid"; wait "$pid" 2>/dev/null || true
  reqs=$(echo "$out" | sed 's/.*requests=\([0-9]*\).*/\1/')
  non2xx=$(echo "$out" | sed 's/.*non2xx=\([0-9]*\).*/\1/')
  admitted=$((reqs - non2xx))
  awk -v r="$rate" -v b="$burst" -v a="$admitted" -v d="$DURATION" \
    'BEGIN { s = a / d; printf "%-8s %-7s %10d %12.1f %+9.2f%%\n", r, b, a, s, (s - r) / r * 100 }'
done
echo "(admitted includes the initial burst; the bound is rate x t + burst + one batch per worker)"
