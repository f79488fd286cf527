#!/usr/bin/env python3
"""The benchmark's handler (examples/functions/app.py:constant) behind a small
HTTP server instead of the Lambda Runtime API: what a plain http_proxy route to
the same code costs (load-tests/functions.sh). Keep-alive, one process.

usage: handler_http.py PORT"""
import http.server
import json
import sys

sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/examples/functions")
import app  # noqa: E402


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Head and body leave at once (else Nagle and delayed ACKs cost 40 ms each).
    disable_nagle_algorithm = True

    def log_message(self, *a):
        pass

    def do_GET(self):
        out = app.constant({"rawPath": self.path}, None)
        body = out["body"].encode() if isinstance(out, dict) else json.dumps(out).encode()
        self.send_response(out.get("statusCode", 200))
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
