#!/usr/bin/env python3
"""Echo round trips on WebSocket connections: C connections, each sending N
text messages one after another and waiting for each answer; prints one JSON
line: messages, seconds, p50/p99/max round trip (ms).

usage: ws_rtt.py URL C N [MESSAGE]
"""
import asyncio
import json
import sys
import time

import websockets


async def one(url, n, msg, out):
    async with websockets.connect(url, ping_interval=None, max_queue=None) as ws:
        await ws.send(msg)
        await ws.recv()
        for _ in range(n):
            t = time.perf_counter()
            await ws.send(msg)
            await ws.recv()
            out.append(time.perf_counter() - t)


async def main(url, c, n, msg):
    out = []
    t = time.perf_counter()
    await asyncio.gather(*(one(url, n, msg, out) for _ in range(c)))
    secs = time.perf_counter() - t
    out.sort()
    pick = lambda q: round(out[min(len(out) - 1, int(len(out) * q))] * 1000, 3)
    print(json.dumps({"messages": len(out), "seconds": round(secs, 2), "p50": pick(0.5),
                      "p99": pick(0.99), "max": round(out[-1] * 1000, 3)}), flush=True)


if __name__ == "__main__":
    msg = sys.argv[4] if len(sys.argv) > 4 else '{"action":"echo","data":"0123456789abcdef"}'
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), msg))
