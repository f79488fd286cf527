#!/usr/bin/env python3
"""The soak's two programs (load-tests/soak.sh runs them):

  soak.py upstream PORT
      A fault-injecting HTTP/1.1 upstream (no real server can be told to
      misbehave on cue): /ok, /big (64 KiB), /slow (300-1500 ms), /fault/reset
      (connection reset before any answer), /fault/early (a head promising 1000
      bytes, 10 sent, then close), /fault/stall (a 200 whose body stops for 2 s
      midway), anything else 200.

  soak.py load HOST:PORT SECONDS RATE API_KEY OUT_JSON
      A steady open-loop rate of mixed traffic against the gateway: keep-alive
      and new connections, keyed and unkeyed, cache hits and misses, malformed
      requests, and routes whose upstream faults. Each request has a class and
      the statuses that class may get; anything else is unexpected. Writes one
      JSON summary per second and an overall summary.
"""
import asyncio
import json
import random
import socket
import struct
import sys
import time

# ---------------------------------------------------------------- HTTP/1.1


def framing(head):
    """(Content-Length or None, chunked, Connection: close) of a message head."""
    length, chunked, close = None, False, False
    for h in head.split(b"\r\n")[1:]:
        name, _, value = h.partition(b":")
        n = name.strip().lower()
        if n == b"content-length":
            length = int(value.strip())
        elif n == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
        elif n == b"connection" and b"close" in value.lower():
            close = True
    return length, chunked, close


async def skip_chunked(reader):
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        await reader.readexactly(size + 2)
        if size == 0:
            return


# ---------------------------------------------------------------- upstream


async def upstream_conn(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = line.split(" ")
            path = parts[1] if len(parts) > 1 else "/"
            length, chunked, _ = framing(head)
            if chunked:
                await skip_chunked(reader)
            elif length:
                await reader.readexactly(length)
            p = path.split("?", 1)[0]
            if p.endswith("/fault/reset"):
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            if p.endswith("/fault/early"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                await writer.drain()
                writer.close()
                return
            if p.endswith("/fault/stall"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n0123456789")
                await writer.drain()
                await asyncio.sleep(2)
                writer.write(b"0123456789")
                await writer.drain()
                continue
            if p.endswith("/slow"):
                await asyncio.sleep(random.uniform(0.3, 1.5))
            body = b"y" * 65536 if p.endswith("/big") else b'{"ok":true}'
            extra = b"cache-control: max-age=60\r\n" if "/cached" in p else b""
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + extra
                + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def upstream(port):
    server = await asyncio.start_server(upstream_conn, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# ---------------------------------------------------------------- load


# A pooled connection unused for this long is closed rather than reused: under
# the gateway's 60 s idle timeout, as a well-behaved client keeps its keep-alive
# timeout under the server's (else a request races the server's close).
POOL_IDLE_S = 30


class Conn:
    def __init__(self, reader, writer):
        self.reader, self.writer = reader, writer
        self.used = time.monotonic()


async def read_response(reader, head_only=False):
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length, chunked, close = framing(head)
    if head_only or status in (204, 304):
        return status, close
    if chunked:
        await skip_chunked(reader)
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        close = True
    return status, close


# class: (weight, expected statuses, fault route: a broken response is expected)
CLASSES = {
    "keepalive": (30, {200}, False),
    "newconn": (15, {200}, False),
    "cache": (15, {200}, False),
    "keyed": (10, {200}, False),
    "mock": (5, {200}, False),
    "big": (5, {200}, False),
    "slow": (5, {200}, False),
    "fault": (5, {200, 502}, True),
    "malformed": (5, {400, 404, 413, 431}, False),
    "notfound": (5, {403, 404}, False),
}


def request_for(cls, api_key):
    r = random.random
    if cls in ("keepalive", "newconn"):
        conn = "close" if cls == "newconn" else "keep-alive"
        return f"GET /prod/ok HTTP/1.1\r\nHost: soak\r\nConnection: {conn}\r\n\r\n".encode()
    if cls == "cache":
        k = random.randint(0, 200)  # 201 keys, 5 s TTL: hits and misses
        return f"GET /prod/cached?k={k} HTTP/1.1\r\nHost: soak\r\n\r\n".encode()
    if cls == "keyed":
        body = b'{"item":"soak"}'
        return (
            f"POST /prod/keyed HTTP/1.1\r\nHost: soak\r\nx-api-key: {api_key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        ).encode() + body
    if cls == "mock":
        return b"GET /prod/mock HTTP/1.1\r\nHost: soak\r\n\r\n"
    if cls == "big":
        return b"GET /prod/big HTTP/1.1\r\nHost: soak\r\n\r\n"
    if cls == "slow":
        return b"GET /prod/slow HTTP/1.1\r\nHost: soak\r\n\r\n"
    if cls == "fault":
        kind = random.choice(["reset", "early", "stall"])
        return f"GET /prod/fault/{kind} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode()
    if cls == "malformed":
        return random.choice([
            b"GET /prod/../../etc/passwd HTTP/1.1\r\nHost: soak\r\n\r\n",
            b"GET /prod/ok%2f..%2fadmin HTTP/1.1\r\nHost: soak\r\n\r\n",
            b"POST /prod/ok HTTP/1.1\r\nHost: soak\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET /prod/ok HTTP/1.1\r\nHost: soak\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GARBAGE\r\n\r\n",
            b"GET /prod/ok HTTP/1.1\r\nHost: soak\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        ])
    # notfound: an unknown route, or the keyed route without a key
    if r() < 0.5:
        return b"GET /prod/nothing/here HTTP/1.1\r\nHost: soak\r\n\r\n"
    return b"POST /prod/keyed HTTP/1.1\r\nHost: soak\r\ncontent-length: 0\r\n\r\n"


class Stats:
    def __init__(self):
        self.lat = []
        self.by_status = {}
        self.unexpected = []
        self.errors = 0
        self.count = 0

    def merge(self, other):
        self.lat += other.lat
        self.count += other.count
        self.errors += other.errors
        self.unexpected += other.unexpected
        for k, v in other.by_status.items():
            self.by_status[k] = self.by_status.get(k, 0) + v

    def add(self, cls, status, seconds):
        self.count += 1
        self.by_status[status] = self.by_status.get(status, 0) + 1
        expected = CLASSES[cls][1]
        if status not in expected:
            self.unexpected.append((cls, status))
        if cls not in ("slow", "fault", "malformed") and status is not None:
            self.lat.append(seconds)


def pct(values, p):
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(len(values) * p))] * 1000, 2)


async def one(addr, cls, api_key, pool, stats):
    host, port = addr
    req = request_for(cls, api_key)
    t0 = time.monotonic()
    conn = None
    status = None
    try:
        while cls in ("keepalive", "cache", "keyed", "mock", "big") and pool:
            conn = pool.pop()
            if time.monotonic() - conn.used < POOL_IDLE_S:
                break
            conn.writer.close()
            conn = None
        if conn is None:
            reader, writer = await asyncio.open_connection(host, port)
            conn = Conn(reader, writer)
        conn.writer.write(req)
        await conn.writer.drain()
        status, close = await asyncio.wait_for(read_response(conn.reader), 35)
        if not close and cls in ("keepalive", "cache", "keyed", "mock", "big") and len(pool) < 64:
            conn.used = time.monotonic()
            pool.append(conn)
            conn = None
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError, ValueError, IndexError, OSError):
        # A fault route may be cut midway (the upstream closed early); a malformed
        # request may be answered by a close. Elsewhere it counts as an error.
        if not CLASSES[cls][2] and cls != "malformed":
            stats.errors += 1
        status = status if status is not None else "cut"
        if CLASSES[cls][2] or cls == "malformed":
            status = "cut-expected"
    finally:
        if conn is not None:
            conn.writer.close()
    if status == "cut-expected":
        stats.count += 1
        stats.by_status["cut"] = stats.by_status.get("cut", 0) + 1
        return
    if status == "cut":
        stats.count += 1
        stats.unexpected.append((cls, "cut"))
        return
    stats.add(cls, status, time.monotonic() - t0)


async def load(target, seconds, rate, api_key, out):
    host, port = target.rsplit(":", 1)
    addr = (host, int(port))
    names = list(CLASSES)
    weights = [CLASSES[c][0] for c in names]
    pool = []
    tasks = set()
    start = time.monotonic()
    second = Stats()
    total = Stats()
    lines = []
    windows = []
    window = Stats()
    window_s = min(300.0, max(10.0, seconds / 12))
    next_window = start + window_s
    tick = 0.01
    per_tick = rate * tick
    owed = 0.0
    next_t = start
    next_report = start + 1
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        owed += per_tick
        while owed >= 1:
            owed -= 1
            cls = random.choices(names, weights)[0]
            t = asyncio.ensure_future(one(addr, cls, api_key, pool, second))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if now >= next_report:
            lines.append({
                "t": round(now - start), "n": second.count, "p50_ms": pct(second.lat, 0.5),
                "p99_ms": pct(second.lat, 0.99), "unexpected": len(second.unexpected),
                "errors": second.errors, "in_flight": len(tasks),
                "unexpected_kinds": sorted({f"{c}:{s}" for c, s in second.unexpected}),
                "status": {str(k): v for k, v in second.by_status.items()},
            })
            print(json.dumps(lines[-1]), flush=True)
            window.merge(second)
            total.merge(second)
            second = Stats()
            next_report += 1
            if now >= next_window:
                windows.append({
                    "until_s": round(now - start), "requests": window.count,
                    "p50_ms": pct(window.lat, 0.5), "p99_ms": pct(window.lat, 0.99),
                    "p999_ms": pct(window.lat, 0.999), "unexpected": len(window.unexpected),
                })
                window = Stats()
                next_window += window_s
        next_t += tick
        await asyncio.sleep(max(0, next_t - time.monotonic()))
    if tasks:
        await asyncio.wait(tasks, timeout=40)
    for c in pool:
        c.writer.close()
    total.merge(second)
    summary = {
        "requests": total.count, "errors": total.errors,
        "unexpected": len(total.unexpected),
        "unexpected_kinds": sorted({f"{c}:{s}" for c, s in total.unexpected}),
        "status": {str(k): v for k, v in sorted(total.by_status.items(), key=lambda kv: str(kv[0]))},
        "p50_ms": pct(total.lat, 0.5), "p99_ms": pct(total.lat, 0.99), "p999_ms": pct(total.lat, 0.999),
        "windows": windows,
        "seconds": lines,
    }
    with open(out, "w") as f:
        json.dump(summary, f)


def main():
    if sys.argv[1] == "upstream":
        asyncio.run(upstream(int(sys.argv[2])))
    elif sys.argv[1] == "load":
        _, _, target, seconds, rate, api_key, out = sys.argv
        asyncio.run(load(target, float(seconds), float(rate), api_key, out))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
