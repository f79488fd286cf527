#!/usr/bin/env bash
# An outside check of the HTTPS listener: sslyze (PyPI) scans shardgate with an
# ECDSA P-256 and an RSA-2048 certificate (chosen by SNI) and this script fails
# unless only TLS 1.2 and 1.3 are accepted, every suite is forward-secret AEAD, and
# sslyze finds no known weakness (Heartbleed, ROBOT, CCS injection, compression,
# insecure renegotiation). Run by .ci/run (with the debug binary the tests built);
# a few seconds after the build.
#   load-tests/tls-scan.sh          # builds and scans the release binary
#   SHARDGATE_BIN=target/debug/shardgate load-tests/tls-scan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v openssl >/dev/null || { apt-get update -qq && apt-get install -y -qq openssl >/dev/null; }
python3 -c 'import sslyze' 2>/dev/null || pip install -q sslyze
SG=${SHARDGATE_BIN:-}
[ -n "$SG" ] || { cargo build --release --quiet; SG=./target/release/shardgate; }
RUN=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$RUN"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$RUN/ec.key" -out "$RUN/ec.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=rsa.localhost \
  -addext subjectAltName=DNS:rsa.localhost -keyout "$RUN/rsa.key" -out "$RUN/rsa.pem" 2>/dev/null
cat >"$RUN/gw.yaml" <<YAML
workers: 1
listeners:
  - name: scan
    bind: 127.0.0.1:0
    tls:
      certificates:
        - { cert: $RUN/ec.pem, key: $RUN/ec.key }
        - { cert: $RUN/rsa.pem, key: $RUN/rsa.key }
apis:
  - name: a
    routes:
      - route: \$default
        integration: { type: mock, body: ok }
    stages:
      - name: \$default
YAML
"$SG" run --config "$RUN/gw.yaml" 2>"$RUN/log" &
for _ in $(seq 100); do grep -q ' addr=' "$RUN/log" && break; sleep 0.05; done
port=$(grep -m1 -o ' addr=[0-9.:]*' "$RUN/log" | sed 's/.*://')
[ -n "$port" ] || { cat "$RUN/log"; exit 1; }
status=0
for name in localhost rsa.localhost; do
  python3 -m sslyze --quiet --json_out "$RUN/$name.json" "$name:$port{127.0.0.1}" >/dev/null 2>&1 || true
  python3 - "$RUN/$name.json" "$name" <<'PY' || status=1
import json, sys
d = json.load(open(sys.argv[1]))
r = d["server_scan_results"][0]
assert r["scan_status"] == "COMPLETED", r.get("connectivity_error_trace")
res = r["scan_result"]
problems = []
def ok(key):
    x = res[key]
    if x["status"] != "COMPLETED":
        problems.append(f"{key}: scan {x['status']}")
        return None
    return x["result"]
accepted = {}
for v in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3"):
    x = ok(f"{v}_cipher_suites")
    names = [c["cipher_suite"]["name"] for c in x["accepted_cipher_suites"]] if x else []
    accepted[v] = names
    if v not in ("tls_1_2", "tls_1_3") and names:
        problems.append(f"{v} accepted: {names}")
for n in accepted["tls_1_2"]:
    if not n.startswith("TLS_ECDHE_") or not ("_GCM_" in n or "CHACHA20_POLY1305" in n):
        problems.append(f"weak TLS 1.2 suite: {n}")
if not accepted["tls_1_2"] or not accepted["tls_1_3"]:
    problems.append(f"TLS 1.2 and 1.3 both expected: {accepted}")
checks = {
    "heartbleed": lambda x: not x["is_vulnerable_to_heartbleed"],
    "openssl_ccs_injection": lambda x: not x["is_vulnerable_to_ccs_injection"],
    "tls_compression": lambda x: not x["supports_compression"],
    "robot": lambda x: "NOT_VULNERABLE" in x["robot_result"],
    "session_renegotiation": lambda x: not x["is_vulnerable_to_client_renegotiation_dos"],
}
for key, good in checks.items():
    x = ok(key)
    if x is not None and not good(x):
        problems.append(f"{key}: {x}")
cert = res["certificate_info"]["result"]["certificate_deployments"][0]["received_certificate_chain"][0]
print(f"{sys.argv[2]}: {cert['public_key']['algorithm']} certificate {cert['subject']['rfc4514_string']}")
for v in ("tls_1_2", "tls_1_3"):
    print(f"  {v}: {', '.join(accepted[v])}")
print("  SSL 2/3, TLS 1.0/1.1: refused; " + ("no weakness found" if not problems else "PROBLEMS:"))
for p in problems:
    print("   ", p)
sys.exit(1 if problems else 0)
PY
done
exit $status
