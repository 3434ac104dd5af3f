#!/usr/bin/env python3
"""Drives the official `openai` Python SDK: the Responses API, plain or streamed.

  python openai_responses.py --base-url https://127.0.0.1:PORT --ca DIR/ca.pem \
      [--model gpt-4o-mini] [--stream] [--calls N] [--tag T] [--usage JSON]

`client.responses.create(...)`; with --stream, `stream=True` and the usage is read from the
`response.completed` event (the call fails if it never arrives). Prints one JSON line per call
(see _common.py); exits non-zero on any failure.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import openai  # noqa: E402

from _common import base_parser, dump, extra_headers, run_calls  # noqa: E402
from openai_chat import make_client  # noqa: E402


def otel_from_responses(u):
    if u is None:
        return None
    itd = u.input_tokens_details
    otd = u.output_tokens_details
    return {
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": (itd.cached_tokens or 0) if itd else 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": (otd.reasoning_tokens or 0) if otd else 0,
    }


def responses_call(client, args, headers):
    if not args.stream:
        resp = client.responses.create(
            model=args.model, input=args.prompt, max_output_tokens=args.max_tokens,
            extra_headers=headers)
        return dump(resp.usage), otel_from_responses(resp.usage), len(resp.output_text or "")
    stream = client.responses.create(
        model=args.model, input=args.prompt, max_output_tokens=args.max_tokens,
        stream=True, extra_headers=headers)
    usage = None
    chars = 0
    with stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                chars += len(event.delta)
            elif event.type == "response.completed":
                usage = event.response.usage
    if usage is None:
        raise RuntimeError("stream ended without response.completed usage")
    return dump(usage), otel_from_responses(usage), chars


def main():
    ap = base_parser("official openai SDK, Responses API", "gpt-4o-mini")
    args = ap.parse_args()
    headers = extra_headers(args)
    client = make_client(args)
    return run_calls(args, "openai_responses.py", "responses",
                     lambda i: responses_call(client, args, headers), (openai.OpenAIError,))


if __name__ == "__main__":
    sys.exit(main())
