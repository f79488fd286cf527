#!/usr/bin/env bash
# What the tests drive besides the gateway, installed where missing: Python
# clients and servers (tests/requirements.txt: botocore signs SigV4 requests,
# websockets talks WebSocket, awslambdaric runs Python functions, moto's server
# emulates SQS/EventBridge/Kinesis/Step Functions), Debian's redis-server
# (cluster mode, tests/cluster.rs), and AWS's Node runtime client
# (aws-lambda-ric, built from source: it needs cmake and autotools) for
# tests/functions.rs's Node handler; Debian's Chromium and ChromeDriver, which
# Selenium drives through the web console (tests/console.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
. load-tests/lib.sh
need_apt redis-server:redis-server chromium:chromium chromedriver:chromium-driver
python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
if command -v npm >/dev/null && [ ! -x tests/support/node/node_modules/.bin/aws-lambda-ric ]; then
  need_apt cmake:cmake autoconf:autoconf automake:automake libtoolize:libtool make:make g++:g++
  (cd tests/support/node && npm ci --no-audit --no-fund --loglevel=error) \
    || echo "warning: aws-lambda-ric did not install: the Node function test is skipped" >&2
fi
