#!/usr/bin/env python3
"""The Lambda Invoke API (POST /2015-03-31/functions/{arn}/invocations) for one
test: it checks each request's SigV4 signature with botocore (service lambda)
against the key it was given, and answers like Lambda. A signature that does not
verify gets Lambda's 403. Prints its port, then serves until killed.

usage: lambda_invoke_server.py KEY_ID SECRET REGION
The function's answer depends on the event's rawPath: .../error → a function
error (X-Amz-Function-Error: Unhandled); anything else → a 2.0 response whose
body is the event as received. A WebSocket API's event is answered with its
eventType, routeKey and body.
"""
import http.server
import json
import sys
import urllib.parse

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

KEY_ID, SECRET, REGION = sys.argv[1], sys.argv[2], sys.argv[3]


def verified(handler, body):
    auth = handler.headers.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False
    fields = dict(p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    cred = fields["Credential"].split("/")
    if cred[0] != KEY_ID or cred[2] != REGION or cred[3] != "lambda":
        return False
    signed = fields["SignedHeaders"].split(";")
    host = handler.headers["host"]
    req = AWSRequest(method=handler.command, url="http://" + host + handler.path, data=body)
    for name in signed:
        if name != "host":
            req.headers[name] = handler.headers[name]
    req.context["timestamp"] = handler.headers["x-amz-date"]
    signer = SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", REGION)
    # botocore signs exactly the headers of the request it was given.
    canonical = signer.canonical_request(req)
    expected = signer.signature(signer.string_to_sign(req, canonical), req)
    return expected == fields["Signature"]


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        # How many requests this connection has carried (the gateway pools them).
        self.served = getattr(self, "served", 0) + 1
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        path = urllib.parse.unquote(self.path)
        if not (path.startswith("/2015-03-31/functions/") and path.endswith("/invocations")):
            return self.reply(404, {"Type": "User", "message": "not found"})
        if not verified(self, body):
            return self.reply(403, {"message": "The request signature we calculated does not match the signature you provided."})
        event = json.loads(body)
        ctx = event.get("requestContext", {})
        if "eventType" in ctx:
            # A WebSocket API's event: the route response names what came.
            return self.reply(200, {"statusCode": 200, "body": json.dumps({
                "eventType": ctx["eventType"], "routeKey": ctx["routeKey"],
                "body": event.get("body"), "signed": True})})
        if event.get("rawPath", "").endswith("/error"):
            return self.reply(200, {"errorMessage": "bad", "errorType": "Exception"},
                              [("X-Amz-Function-Error", "Unhandled")])
        self.reply(200, {"statusCode": 200, "headers": {"x-invoked": path},
                         "body": json.dumps({"rawPath": event["rawPath"], "signed": True,
                                             "connection_requests": self.served})})


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
