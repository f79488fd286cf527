#!/usr/bin/env python3
"""RSS growth per idle keep-alive client connection of a proxy process.

Opens N connections to HOST:PORT, sends one GET on each and reads its answer, then
leaves them all open and idle. Prints the process's VmRSS before (after a warm-up)
and after, and the growth per connection in KiB.

    idle_rss.py PID PORT [N=4000] [SETTLE_SECONDS=2] [WS_PATH]

With WS_PATH, each connection is a WebSocket handshake to that path instead
(101 expected), left idle; at the end the first and last connections each send
a text message and must get an answer (a route response).
"""
import resource
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for pid {pid}")


def exchange(sock):
    sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed before a response")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed mid-body")
        body += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"unexpected answer: {head[:60]!r}")


WS_PATH = sys.argv[5] if len(sys.argv) > 5 else None


def handshake(sock):
    sock.sendall(f"GET {WS_PATH} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("connection closed before the handshake's answer")
        data += chunk
    if not data.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"unexpected answer: {data[:60]!r}")


def message(sock):
    payload = b'{"action":"ping"}'
    mask = b"\x01\x02\x03\x04"
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask
                 + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    head = sock.recv(2)
    if len(head) < 2 or head[0] != 0x81:
        raise SystemExit(f"no answer to a message: {head!r}")
    sock.recv(head[1] & 0x7F)


def main():
    global exchange
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 4000
    settle = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    check = exchange
    if WS_PATH:
        exchange, check = handshake, message
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    # Warm-up: pools, first allocations, lazily built state.
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", port)) as s:
            exchange(s)
    time.sleep(settle)
    before = rss_kib(pid)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        exchange(s)
        socks.append(s)
    time.sleep(settle)
    after = rss_kib(pid)
    # Every connection must still be open and served.
    check(socks[0])
    check(socks[-1])
    per = (after - before) / n
    print(f"rss_before_kib={before} rss_after_kib={after} conns={n} per_conn_kib={per:.2f}")
    for s in socks:
        s.close()


if __name__ == "__main__":
    main()
