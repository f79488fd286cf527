#!/usr/bin/env python3
"""Two WebSocket clients (the `websockets` package) on a WebSocket API: each
sends its message and waits for one answer; prints one JSON line per client
({"sent", "got"} or {"refused": status}), then both close normally (1000).

usage: ws_chat.py URL MESSAGE_1 MESSAGE_2 [--header NAME:VALUE]...
A wss:// URL is verified against the CA in WS_CA.
"""
import asyncio
import json
import os
import ssl
import sys

import websockets


async def client(url, message, headers):
    try:
        tls = ssl.create_default_context(cafile=os.environ["WS_CA"]) if url.startswith("wss://") else None
        async with websockets.connect(url, additional_headers=headers, open_timeout=5, ssl=tls) as ws:
            await ws.send(message)
            got = await asyncio.wait_for(ws.recv(), 5)
            return {"sent": message, "got": got}
    except websockets.InvalidStatus as e:
        return {"refused": e.response.status_code}


async def main():
    args = sys.argv[1:]
    headers = []
    rest = []
    i = 0
    while i < len(args):
        if args[i] == "--header":
            n, v = args[i + 1].split(":", 1)
            headers.append((n, v))
            i += 2
        else:
            rest.append(args[i])
            i += 1
    url, msgs = rest[0], rest[1:]
    out = await asyncio.gather(*(client(url, m, headers) for m in msgs))
    for o in out:
        print(json.dumps(o), flush=True)


asyncio.run(main())
