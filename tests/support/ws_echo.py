"""WebSocket echo server and clients for tests/websocket.rs, on the `websockets`
package (a real, independent implementation of RFC 6455).

  ws_echo.py serve                 echo server on 127.0.0.1, prints its port
  ws_echo.py client URL            echoes text and 1 MiB binary, prints READY,
                                   waits for a line on stdin, echoes again, prints OK
  ws_echo.py idle URL SECONDS      one echo, then waits: prints CLOSED if the
                                   connection is closed within SECONDS, else OPEN

TLS: the server serves wss with WS_CERT and WS_KEY (PEM files) when set; the
clients trust WS_CA for wss:// URLs.
"""
import asyncio
import os
import ssl
import sys

import websockets


def server_tls():
    if not os.environ.get("WS_CERT"):
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.environ["WS_CERT"], os.environ["WS_KEY"])
    return ctx


def client_tls(url):
    if not url.startswith("wss://"):
        return None
    return ssl.create_default_context(cafile=os.environ["WS_CA"])


async def serve():
    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(
        echo, "127.0.0.1", 0, max_size=4 * 1024 * 1024, ssl=server_tls()
    ) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


async def round_trip(ws, tag):
    text = f"hello {tag}"
    await ws.send(text)
    got = await asyncio.wait_for(ws.recv(), 10)
    assert got == text, (got, text)
    blob = os.urandom(1024 * 1024)
    await ws.send(blob)
    got = await asyncio.wait_for(ws.recv(), 20)
    assert got == blob, ("binary echo differs", len(got))


async def client(url):
    async with websockets.connect(
        url, max_size=4 * 1024 * 1024, open_timeout=10, ssl=client_tls(url)
    ) as ws:
        await round_trip(ws, "before")
        print("READY", flush=True)
        line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        assert line.strip() == "go", line
        await round_trip(ws, "after")
    print("OK", flush=True)


async def idle(url, seconds):
    async with websockets.connect(
        url, open_timeout=10, ping_interval=None, ssl=client_tls(url)
    ) as ws:
        await ws.send("one")
        assert await asyncio.wait_for(ws.recv(), 10) == "one"
        try:
            await asyncio.wait_for(ws.recv(), seconds)
        except websockets.ConnectionClosed:
            print("CLOSED", flush=True)
            return
        except asyncio.TimeoutError:
            pass
    print("OPEN", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "serve":
        asyncio.run(serve())
    elif mode == "client":
        asyncio.run(client(sys.argv[2]))
    elif mode == "idle":
        asyncio.run(idle(sys.argv[2], float(sys.argv[3])))
    else:
        sys.exit(f"unknown mode {mode}")
