#!/usr/bin/env python3
"""The chat's integration: keeps the connection ids it is told of ($connect,
$disconnect) and broadcasts each sendmessage to all of them through the
gateway's @connections API, signed by botocore's apigatewaymanagementapi
client. Answers the sender (the route response) with how many it reached.

usage: CHAT_SECRET=... backend.py [PORT] [GATEWAY_URL]"""
import http.server
import json
import os
import sys

import botocore.session

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
GATEWAY = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:8081/prod"
connections = set()
client = botocore.session.get_session().create_client(
    "apigatewaymanagementapi", endpoint_url=GATEWAY, region_name="us-east-1",
    aws_access_key_id="AKIDCHATBACKEND00001",
    aws_secret_access_key=os.environ.get("CHAT_SECRET", "chat-secret-0123456789"))


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers["content-length"])))
        me = event["requestContext"]["connectionId"]
        reply = b""
        if self.path == "/connect":
            connections.add(me)
        elif self.path == "/disconnect":
            connections.discard(me)
        else:
            text = json.loads(event["body"]).get("text", "")
            sent = 0
            for c in list(connections):
                try:
                    client.post_to_connection(ConnectionId=c, Data=json.dumps({"from": me, "text": text}).encode())
                    sent += 1
                except client.exceptions.GoneException:
                    connections.discard(c)
            reply = json.dumps({"delivered": sent}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
