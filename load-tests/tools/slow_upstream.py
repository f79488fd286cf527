#!/usr/bin/env python3
"""An HTTP/1.1 keep-alive upstream that answers every request with 200 "ok"
after DELAY_MS, so a burst of requests is in flight together.

    slow_upstream.py PORT [DELAY_MS=200]
"""
import asyncio
import resource
import sys

PORT = int(sys.argv[1])
DELAY = (int(sys.argv[2]) if len(sys.argv) > 2 else 200) / 1000


async def serve(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            await asyncio.sleep(DELAY)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    server = await asyncio.start_server(serve, "127.0.0.1", PORT, backlog=4096)
    async with server:
        await server.serve_forever()


asyncio.run(main())
