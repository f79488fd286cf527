#!/usr/bin/env python3
"""RSS growth per connection of a proxy process after a burst: N client
connections each send one GET at once (so up to N requests are in flight to the
upstream together), read their answers, and stay open and idle. Prints the
process's VmRSS before the burst (after a warm-up) and 1 s and 5 s after the
last answer, and the growth per connection at each.

    burst_rss.py PID PORT [N=4000]
"""
import os
import resource
import selectors
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idle_rss import rss_kib  # noqa: E402


REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def answered(data):
    """Whether `data` holds one whole response (Content-Length framed)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:60]!r}")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return True


def main():
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 4000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(REQUEST)
            data = b""
            while not answered(data):
                data += s.recv(65536)
    time.sleep(2)
    before = rss_kib(pid)
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
    sel = selectors.DefaultSelector()
    got = {}
    for s in socks:
        s.sendall(REQUEST)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        got[s] = b""
    waiting = n
    deadline = time.time() + 60
    while waiting and time.time() < deadline:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("connection closed before its answer")
            got[s] += chunk
            if answered(got[s]):
                sel.unregister(s)
                waiting -= 1
    if waiting:
        raise SystemExit(f"{waiting} answers missing after 60 s")
    done = time.time()
    time.sleep(max(0.0, done + 1 - time.time()))
    after1 = rss_kib(pid)
    time.sleep(max(0.0, done + 5 - time.time()))
    after5 = rss_kib(pid)
    print(
        f"rss_before_kib={before} after_1s_kib={after1} after_5s_kib={after5} conns={n} "
        f"per_conn_1s_kib={(after1 - before) / n:.2f} per_conn_5s_kib={(after5 - before) / n:.2f}"
    )
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
