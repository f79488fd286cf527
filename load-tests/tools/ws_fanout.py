#!/usr/bin/env python3
"""The @connections fan-out benchmark's two halves.

  ws_fanout.py listen URL N IDS_FILE
      opens N WebSocket connections to URL, learns each one's id (the message
      `whoami`, answered by load-tests/tools/ws_echo_backend.py), writes the ids
      to IDS_FILE, prints READY, then counts the messages the connections
      receive until a line arrives on stdin; prints the count.
  ws_fanout.py sign ENDPOINT IDS_FILE KEY_ID SECRET REGION LUA_FILE
      writes a wrk script that POSTs to each id in turn, each request signed
      once by botocore's SigV4 (execute-api) and replayed (SigV4 has no nonce:
      a signature holds for 15 minutes), so the load generator spends nothing on
      signing.
"""
import asyncio
import sys


async def listen(url, n, ids_file):
    import websockets
    conns = []
    for i in range(n):
        ws = await websockets.connect(url, max_queue=None, ping_interval=None)
        conns.append(ws)
    ids = []
    for ws in conns:
        await ws.send("whoami")
        ids.append(await ws.recv())
    with open(ids_file, "w") as f:
        f.write("\n".join(ids) + "\n")
    count = 0

    async def drain(ws):
        nonlocal count
        async for _ in ws:
            count += 1

    tasks = [asyncio.create_task(drain(ws)) for ws in conns]
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    # What is still in flight arrives within a moment.
    last = -1
    while last != count:
        last = count
        await asyncio.sleep(0.3)
    print(count, flush=True)
    for t in tasks:
        t.cancel()
    for ws in conns:
        await ws.close()


def sign(endpoint, ids_file, key, secret, region, lua_file):
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    creds = Credentials(key, secret)
    host = endpoint.split("//", 1)[1].split("/", 1)[0]
    stage = endpoint.rstrip("/").rsplit("/", 1)[1]
    reqs = []
    body = "fan-out message"
    for cid in open(ids_file).read().split():
        path = f"/{stage}/@connections/{cid}"
        r = AWSRequest(method="POST", url=f"http://{host}{path}", data=body)
        SigV4Auth(creds, "execute-api", region).add_auth(r)
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        for k, v in r.headers.items():
            if k.lower() != "host":
                head += f"{k}: {v}\r\n"
        head += f"Content-Length: {len(body)}\r\n\r\n{body}"
        reqs.append(head)
    with open(lua_file, "w") as f:
        f.write("local reqs = {\n")
        for r in reqs:
            f.write("  " + repr(r) + ",\n")
        f.write("}\nlocal i = 0\n")
        f.write("request = function()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n")
        f.write("local errors = 0\nresponse = function(status)\n  if status ~= 200 then errors = errors + 1 end\nend\n")


if __name__ == "__main__":
    if sys.argv[1] == "listen":
        asyncio.run(listen(sys.argv[2], int(sys.argv[3]), sys.argv[4]))
    else:
        sign(*sys.argv[2:8])
