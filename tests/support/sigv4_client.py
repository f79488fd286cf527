#!/usr/bin/env python3
"""Sends one request signed by botocore (SigV4, service execute-api) and prints
the status line's code, then the body. A client no one in this project wrote.

usage: sigv4_client.py METHOD URL KEY_ID SECRET REGION [--body B] [--send-body B]
       [--presign SECONDS] [--header NAME:VALUE]...
--send-body sends a different body from the one signed (tampering).
"""
import argparse
import http.client
import sys
import urllib.parse

from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def main():
    p = argparse.ArgumentParser()
    p.add_argument("method")
    p.add_argument("url")
    p.add_argument("key_id")
    p.add_argument("secret")
    p.add_argument("region")
    p.add_argument("--body", default=None)
    p.add_argument("--send-body", default=None)
    p.add_argument("--presign", type=int, default=None)
    p.add_argument("--header", action="append", default=[])
    a = p.parse_args()
    headers = {}
    for h in a.header:
        n, _, v = h.partition(":")
        headers[n] = v
    data = a.body.encode() if a.body is not None else None
    req = AWSRequest(method=a.method, url=a.url, data=data, headers=headers)
    creds = Credentials(a.key_id, a.secret)
    if a.presign is not None:
        SigV4QueryAuth(creds, "execute-api", a.region, expires=a.presign).add_auth(req)
    else:
        SigV4Auth(creds, "execute-api", a.region).add_auth(req)
    prepared = req.prepare()
    u = urllib.parse.urlsplit(prepared.url)
    target = u.path + ("?" + u.query if u.query else "")
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    body = a.send_body.encode() if a.send_body is not None else data
    send_headers = dict(prepared.headers.items())
    if body is not None:
        send_headers["Content-Length"] = str(len(body))
    conn.request(a.method, target, body=body, headers=send_headers)
    r = conn.getresponse()
    sys.stdout.write(f"{r.status}\n{r.read().decode()}")


if __name__ == "__main__":
    main()
