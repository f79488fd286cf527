#!/usr/bin/env bash
# What the tests drive besides the gateway, installed where missing: Python
# clients (tests/requirements.txt: botocore signs SigV4 requests, websockets
# talks WebSocket) and Debian's redis-server (cluster mode, tests/cluster.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. load-tests/lib.sh
need_apt redis-server:redis-server
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
