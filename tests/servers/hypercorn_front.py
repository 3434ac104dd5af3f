"""An independent HTTP/2 server in front of the mock: hypercorn (h2) serving an ASGI app that
forwards each request to the plain-HTTP mock and streams its answer back.

The framing the client sees is hypercorn's own (HEADERS, DATA as the app sends it, END_STREAM
in an empty DATA frame of its own); the bodies are the mock's, so its request log stays the
record of what was served. A non-stream answer keeps the mock's `content-length` and
`content-encoding: gzip` (the mock compresses when the client accepts it).

    hypercorn_front.py --backend http://127.0.0.1:PORT --cert server.pem --key server-key.pem

Prints `listening on 127.0.0.1:PORT` once it accepts connections; stops by itself after
--exit-after-secs.
"""

import argparse
import asyncio
import socket
import sys

import httpx
import websockets
from hypercorn.asyncio import serve
from hypercorn.config import Config

# A WebSocket's own handshake headers, negotiated again by each side.
WS_SKIP = {b"host", b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version",
           b"sec-websocket-extensions", b"sec-websocket-accept"}

# Not forwarded in either direction (hop-by-hop, or set by the server itself).
SKIP = {b"host", b"connection", b"keep-alive", b"transfer-encoding", b"upgrade", b"te",
        b"proxy-connection", b"date", b"server"}


def make_app(backend: str):
    client = httpx.AsyncClient(base_url=backend, timeout=60.0)

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await client.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in SKIP]
        url = scope["raw_path"].decode() or scope["path"]
        if scope.get("query_string") and "?" not in url:
            url += "?" + scope["query_string"].decode()
        req = client.build_request(scope["method"], url, headers=headers, content=body)
        resp = await client.send(req, stream=True)
        try:
            out = [(k.lower(), v) for k, v in resp.headers.raw if k.lower() not in SKIP]
            await send({"type": "http.response.start", "status": resp.status_code, "headers": out})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await resp.aclose()

    async def websocket(scope, receive, send):
        """A WebSocket (the Responses API's): hypercorn (wsproto) speaks to the client, and a
        WebSocket of the front's own to the mock carries each message on, both ways."""
        if (await receive())["type"] != "websocket.connect":
            return
        path = scope["raw_path"].decode() or scope["path"]
        if scope.get("query_string") and "?" not in path:
            path += "?" + scope["query_string"].decode()
        headers = [(k.decode(), v.decode()) for k, v in scope["headers"]
                   if k.lower() not in WS_SKIP]
        uri = "ws" + backend[len("http"):] + path
        async with websockets.connect(uri, additional_headers=headers, max_size=None) as up:
            await send({"type": "websocket.accept"})

            async def client_to_backend():
                while True:
                    msg = await receive()
                    if msg["type"] == "websocket.disconnect":
                        return
                    data = msg.get("text")
                    await up.send(data if data is not None else msg.get("bytes", b""))

            async def backend_to_client():
                async for data in up:
                    key = "text" if isinstance(data, str) else "bytes"
                    await send({"type": "websocket.send", key: data})
                await send({"type": "websocket.close"})

            tasks = [asyncio.create_task(client_to_backend()),
                     asyncio.create_task(backend_to_client())]
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()

    return app


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--exit-after-secs", type=float, default=300)
    args = ap.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.set_inheritable(True)
    sock.listen(128)
    config = Config()
    config.bind = [f"fd://{sock.fileno()}"]
    config.certfile = args.cert
    config.keyfile = args.key
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.loglevel = "WARNING"
    print(f"listening on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(args.exit_after_secs, stop.set)
    await serve(make_app(args.backend), config, shutdown_trigger=stop.wait)


if __name__ == "__main__":
    asyncio.run(main())
    sys.exit(0)
