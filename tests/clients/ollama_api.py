#!/usr/bin/env python3
"""Drives the official `ollama` Python client: Ollama's native /api/chat and /api/generate.

  python ollama_api.py --base-url https://127.0.0.1:PORT --ca DIR/ca.pem \
      [--api chat|generate] [--model llama3.2] [--stream] [--calls N] [--tag T] [--usage JSON]

`ollama.Client(host=URL, verify=ssl context, headers=...)`; `chat(...)` or `generate(...)`
with `stream=True|False` (the NDJSON stream's last object has the counts). Usage is
`prompt_eval_count` (input) and `eval_count` (output).
Prints one JSON line per call (see _common.py); exits non-zero on any failure.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
import ollama  # noqa: E402

from _common import base_parser, extra_headers, run_calls, ssl_context  # noqa: E402


def usage_of(resp):
    if resp is None or resp.get("prompt_eval_count") is None and resp.get("eval_count") is None:
        return None, None
    u = {"prompt_eval_count": resp.get("prompt_eval_count"), "eval_count": resp.get("eval_count")}
    return u, {
        "input_tokens": u["prompt_eval_count"] or 0,
        "output_tokens": u["eval_count"] or 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    }


def text_of(api, resp):
    if api == "chat":
        return (resp.get("message") or {}).get("content") or ""
    return resp.get("response") or ""


def one_call(client, args):
    kwargs = {"model": args.model, "stream": bool(args.stream),
              "options": {"num_predict": args.max_tokens}}
    if args.api == "chat":
        result = client.chat(messages=[{"role": "user", "content": args.prompt}], **kwargs)
    else:
        result = client.generate(prompt=args.prompt, **kwargs)
    if not args.stream:
        u, o = usage_of(result)
        return u, o, len(text_of(args.api, result))
    last = None
    chars = 0
    for part in result:
        chars += len(text_of(args.api, part))
        last = part
    if last is None or not last.get("done"):
        raise RuntimeError("stream ended without done: true")
    u, o = usage_of(last)
    return u, o, chars


def main():
    ap = base_parser("official ollama Python client, native API", "llama3.2")
    ap.add_argument("--api", choices=["chat", "generate"], default="chat")
    args = ap.parse_args()
    client = ollama.Client(host=args.base_url.rstrip("/"), verify=ssl_context(args.ca),
                           headers=extra_headers(args), timeout=args.timeout)
    return run_calls(args, "ollama_api.py", f"ollama.{args.api}", lambda i: one_call(client, args),
                     (ollama.ResponseError, httpx.HTTPError))


if __name__ == "__main__":
    sys.exit(main())
