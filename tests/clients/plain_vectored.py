"""A raw HTTP/1.1 client of the OpenAI chat completions API over plain TCP that uses the
vectored socket calls: the request goes out in one sendmsg (or writev) of two iovecs (head and
body) and the response comes back through recvmsg (or readv into two buffers). Standard
library only; prints each call's status, never the completion text."""
import argparse
import json
import os
import socket
import sys


def call(host, port, mode, tag, stream, index, split):
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"call {index}"}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nx-test-tag: {tag}\r\nConnection: close\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    # The body in `split` pieces: more iovecs than the daemon copies (8) exercise its bound.
    step = -(-len(payload) // split)
    iovecs = [head] + [payload[i : i + step] for i in range(0, len(payload), step)]
    print(f"bytes beyond 8 iovecs: {sum(len(v) for v in iovecs[8:])}")
    sock = socket.create_connection((host, port))
    try:
        if mode == "msg":
            sent = sock.sendmsg(iovecs)
        else:
            sent = os.writev(sock.fileno(), iovecs)
        if sent != len(head) + len(payload):
            sys.exit(f"short vectored send: {sent}")
        response = bytearray()
        while True:
            if mode == "msg":
                data, _, _, _ = sock.recvmsg(65536)
            else:
                a, b = bytearray(1024), bytearray(65536)
                n = os.readv(sock.fileno(), [a, b])
                data = bytes((a + b)[:n])
            if not data:
                break
            response += data
    finally:
        sock.close()
    status = response.split(b"\r\n", 1)[0].decode()
    if " 200 " not in status + " ":
        sys.exit(f"call {index}: {status}")
    print(f"call {index}: {status}, {len(response)} bytes")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--mode", choices=["msg", "vec"], required=True)
    p.add_argument("--tag", required=True)
    p.add_argument("--calls", type=int, default=1)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--split", type=int, default=1, help="body iovecs")
    a = p.parse_args()
    for i in range(a.calls):
        call(a.host, a.port, a.mode, a.tag, a.stream, i, a.split)


if __name__ == "__main__":
    main()
