#!/usr/bin/env python3
"""An HTTP integration for a WebSocket API's `$default` route that echoes: it
answers each MESSAGE event with the event's `body`, so with `route_response:
true` the gateway sends the client its own message back (the Autobahn run's
echo); the message `whoami` is answered with the connection's id (the fan-out
benchmark's clients learn theirs). Prints its port, then serves until killed."""
import http.server
import json


class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_POST(self):
        event = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        body = (event.get("body") or "").encode()
        if body == b"whoami":
            body = event["requestContext"]["connectionId"].encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
