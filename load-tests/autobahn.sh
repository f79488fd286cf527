#!/usr/bin/env bash
# The Autobahn test suite's fuzzing client (autobahntestsuite, Python 2.7)
# against a WebSocket API whose `$default` route echoes (an HTTP integration
# answering the event's body, `route_response: true`):
#
#   load-tests/autobahn.sh
#
# Cases 1-7 and 10 (framing, pings and pongs, reserved bits, opcodes,
# fragmentation, UTF-8, close handling, auto-fragmentation). Left out, by
# design: 9.* (messages up to 16 MiB: a WebSocket API's limit is 128 KiB by
# default and an integration's answer 1 MiB), 12.* and 13.* (permessage-deflate,
# which the gateway declines). The API has `binary_messages: base64` (binary
# messages reach the integration base64-encoded and come back as binary; AWS
# closes them with 1003, the default), so 1.2.* echo; BINARY=close runs it as
# AWS (1.2.* then fail, and the summary names them apart).
# Needs a Python 2.7 (pyenv's 2.7.18 here); the suite is installed into a
# folder of its own. Writes the summary to
# load-tests/results/autobahn-summary.txt (the full report stays in the run's
# folder, printed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
. load-tests/lib.sh
ports_free '18150'
PY2=${PY2:-}
if [ -z "$PY2" ]; then
  if command -v python2.7 >/dev/null && python2.7 --version >/dev/null 2>&1; then PY2=python2.7
  elif PYENV_VERSION=2.7.18 python --version >/dev/null 2>&1; then PY2="env PYENV_VERSION=2.7.18 python"
  else echo "no Python 2.7 here (set PY2): autobahntestsuite runs on Python 2 only"; exit 1; fi
fi
SUITE=$(realpath -m "${AUTOBAHN_DIR:-target/autobahn-py27}")
if [ ! -x "$SUITE/bin/wstest" ]; then
  $PY2 -m pip install -q --target "$SUITE" autobahntestsuite
  # --target leaves zope a namespace package without its .pth: make it a package.
  touch "$SUITE/zope/__init__.py"
fi
cargo build --release --quiet
run_dir
python3 load-tests/tools/ws_echo_backend.py >"$RUN/echo.port" &
for _ in $(seq 50); do [ -s "$RUN/echo.port" ] && break; sleep 0.1; done
ECHO=$(cat "$RUN/echo.port")
cat >"$RUN/sg.yaml" <<YAML
workers: 2
listeners: [ { name: ws, bind: "127.0.0.1:18150" } ]
apis:
  - name: echo
    type: websocket
    binary_messages: ${BINARY:-base64}
    routes:
      - route: \$default
        route_response: true
        integration: { type: http_proxy, uri: "http://127.0.0.1:$ECHO/echo" }
    stages: [ { name: prod, limits: { max_frame_bytes: 131072 } } ]
YAML
target/release/shardgate run --config "$RUN/sg.yaml" 2>"$RUN/sg.log" &
for _ in $(seq 100); do grep -q "addr=" "$RUN/sg.log" 2>/dev/null && break; sleep 0.1; done
cat >"$RUN/spec.json" <<JSON
{
  "outdir": "$RUN/report",
  "servers": [ { "agent": "shardgate", "url": "ws://127.0.0.1:18150/prod" } ],
  "cases": ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
JSON
(cd "$RUN" && PYTHONPATH="$SUITE" timeout 900 $PY2 "$SUITE/bin/wstest" -m fuzzingclient -s spec.json >wstest.log 2>&1) || {
  tail -20 "$RUN/wstest.log"; exit 1; }
REV="$(git rev-parse --short HEAD)$(git diff --quiet -- . ':!load-tests/results' || echo +changes)"
python3 - "$RUN/report/index.json" "$REV" "${BINARY:-base64}" <<'PY' | tee load-tests/results/autobahn-summary.txt
import collections, json, sys
report = json.load(open(sys.argv[1]))["shardgate"]
def key(c):
    return [int(p) for p in c.split(".")]
by = collections.defaultdict(list)
for case, r in report.items():
    by[(r["behavior"], r["behaviorClose"])].append(case)
print(f"Autobahn fuzzingclient against a shardgate WebSocket API echo ($default route, HTTP integration, binary_messages: {sys.argv[3]}), rev {sys.argv[2]}")
print(f"cases run: {len(report)} (1-7, 10; 9, 12, 13 left out: see load-tests/autobahn.sh)")
for (b, bc), cases in sorted(by.items()):
    cases.sort(key=key)
    print(f"  {b:14} (close {bc:14}) {len(cases):4}: {' '.join(cases)}")
bad = [c for c, r in report.items() if r["behavior"] not in ("OK", "NON-STRICT", "INFORMATIONAL")
       or r["behaviorClose"] not in ("OK", "INFORMATIONAL")]
# With BINARY=close, as Amazon API Gateway: binary messages are closed with 1003.
binary = [c for c in bad if c.startswith("1.2.")]
print(f"not OK: {len(bad)}: binary messages closed with 1003 (binary_messages: close, AWS's): "
      f"{len(binary)}; other: {len(bad) - len(binary)}")
for c in sorted(set(bad) - set(binary), key=key):
    print(f"  {c}: {report[c]['behavior']} / close {report[c]['behaviorClose']}")
PY
echo "full report: $RUN/report/index.html (removed on exit; set KEEP=1 to keep it)"
if [ -n "${KEEP:-}" ]; then cp -r "$RUN/report" target/autobahn-report; echo "kept in target/autobahn-report"; fi
