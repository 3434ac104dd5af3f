#!/usr/bin/env python3
"""Reuses one OpenSSL `SSL*` for two connections, through libssl itself (ctypes):

  python ssl_reuse.py --base-url https://127.0.0.1:PORT --ca CA.pem --tag T

Connection 1 sends a streamed Chat Completions request and reads only the response head and a
few bytes, then shuts down. `SSL_clear` readies the same SSL object for connection 2 (a new
socket), which sends a non-streamed request and reads the whole response. A capture keyed by
the SSL pointer sees one object carry two connections: the second must not be parsed as the
rest of the first. Prints one JSON line; exits non-zero on failure.
"""

import argparse
import ctypes
import ctypes.util
import json
import socket
import struct
import sys
from urllib.parse import urlparse

P = ctypes.c_void_p


def load():
    lib = ctypes.CDLL(ctypes.util.find_library("ssl") or "libssl.so.3")
    for name, res, args in [
        ("TLS_client_method", P, []),
        ("SSL_CTX_new", P, [P]),
        ("SSL_CTX_load_verify_locations", ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_char_p]),
        ("SSL_new", P, [P]),
        ("SSL_set_fd", ctypes.c_int, [P, ctypes.c_int]),
        ("SSL_connect", ctypes.c_int, [P]),
        ("SSL_write", ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_int]),
        ("SSL_read", ctypes.c_int, [P, ctypes.c_char_p, ctypes.c_int]),
        ("SSL_shutdown", ctypes.c_int, [P]),
        ("SSL_clear", ctypes.c_int, [P]),
        ("SSL_free", None, [P]),
        ("SSL_CTX_free", None, [P]),
    ]:
        f = getattr(lib, name)
        f.restype = res
        f.argtypes = args
    return lib


def request(host, tag, body, close):
    head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nx-test-tag: {tag}\r\n"
            f"Connection: {'close' if close else 'keep-alive'}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body.encode()


def exchange(lib, ssl, addr, payload, read_all):
    sock = socket.create_connection(addr, timeout=30)
    # libssl drives the fd itself: blocking, with a kernel-level receive timeout as the bound.
    sock.settimeout(None)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 30, 0))
    try:
        if lib.SSL_set_fd(ssl, sock.fileno()) != 1 or lib.SSL_connect(ssl) != 1:
            raise RuntimeError("TLS handshake failed")
        if lib.SSL_write(ssl, payload, len(payload)) != len(payload):
            raise RuntimeError("SSL_write failed")
        buf = ctypes.create_string_buffer(16384)
        got = b""
        for _ in range(10000):  # bounded
            n = lib.SSL_read(ssl, buf, len(buf))
            if n <= 0:
                break
            got += buf.raw[:n]
            if not read_all and b"\r\n\r\n" in got:
                break
        lib.SSL_shutdown(ssl)
        return got
    finally:
        sock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--tag", default="ssl-reuse")
    args = ap.parse_args()
    url = urlparse(args.base_url)
    addr = (url.hostname, url.port)
    lib = load()
    ctx = lib.SSL_CTX_new(lib.TLS_client_method())
    if not ctx or lib.SSL_CTX_load_verify_locations(ctx, args.ca.encode(), None) != 1:
        sys.exit("cannot set up an SSL_CTX with the CA")
    ssl = lib.SSL_new(ctx)
    stream = ('{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],'
              '"stream":true,"stream_options":{"include_usage":true}}')
    first = exchange(lib, ssl, addr, request(url.netloc, args.tag, stream, False), False)
    if lib.SSL_clear(ssl) != 1:
        sys.exit("SSL_clear failed")
    plain = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
    second = exchange(lib, ssl, addr, request(url.netloc, args.tag, plain, True), True)
    lib.SSL_free(ssl)
    lib.SSL_CTX_free(ctx)
    ok = first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200")
    print(json.dumps({"ssl": ssl, "first_bytes": len(first), "second_bytes": len(second),
                      "ok": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
