#!/usr/bin/env python3
"""Drives the official `openai` Python SDK: legacy Completions and Embeddings.

  python openai_legacy.py --base-url https://127.0.0.1:PORT --ca DIR/ca.pem \
      --api completions|embeddings [--model M] [--stream] [--calls N] [--tag T] [--usage JSON]

completions: `client.completions.create(prompt=...)`; streams send
stream_options={"include_usage": True} and fail without the usage chunk.
embeddings: `client.embeddings.create(input=[prompt, prompt])` (the SDK asks for base64).
Prints one JSON line per call (see _common.py); exits non-zero on any failure.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import openai  # noqa: E402

from _common import base_parser, dump, extra_headers, run_calls  # noqa: E402
from openai_chat import make_client  # noqa: E402


def otel(u):
    if u is None:
        return None
    return {
        "input_tokens": u.prompt_tokens,
        "output_tokens": getattr(u, "completion_tokens", 0) or 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    }


def completions_call(client, args, headers):
    if not args.stream:
        resp = client.completions.create(
            model=args.model, prompt=args.prompt, max_tokens=args.max_tokens,
            extra_headers=headers)
        text = resp.choices[0].text if resp.choices else ""
        return dump(resp.usage), otel(resp.usage), len(text)
    stream = client.completions.create(
        model=args.model, prompt=args.prompt, max_tokens=args.max_tokens, stream=True,
        stream_options={"include_usage": True}, extra_headers=headers)
    usage = None
    chars = 0
    with stream:
        for chunk in stream:
            for choice in chunk.choices:
                chars += len(choice.text or "")
            if chunk.usage is not None:
                usage = chunk.usage
    if usage is None:
        raise RuntimeError("stream ended without the usage chunk")
    return dump(usage), otel(usage), chars


def embeddings_call(client, args, headers):
    resp = client.embeddings.create(
        model=args.model, input=[args.prompt, args.prompt], extra_headers=headers)
    if len(resp.data) != 2 or not resp.data[0].embedding:
        raise RuntimeError("expected two embeddings")
    return dump(resp.usage), otel(resp.usage), 0


def main():
    ap = base_parser("official openai SDK, legacy Completions / Embeddings", None)
    ap.add_argument("--api", choices=["completions", "embeddings"], required=True)
    args = ap.parse_args()
    if args.model is None:
        args.model = ("gpt-3.5-turbo-instruct" if args.api == "completions"
                      else "text-embedding-3-small")
    headers = extra_headers(args)
    client = make_client(args)
    one = completions_call if args.api == "completions" else embeddings_call
    return run_calls(args, "openai_legacy.py", args.api,
                     lambda i: one(client, args, headers), (openai.OpenAIError,))


if __name__ == "__main__":
    sys.exit(main())
