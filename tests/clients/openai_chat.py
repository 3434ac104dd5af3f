#!/usr/bin/env python3
"""Drives the official `openai` Python SDK: Chat Completions, plain or streamed.

  python openai_chat.py --base-url https://127.0.0.1:PORT --ca DIR/ca.pem \
      [--model gpt-4o-mini] [--stream [--no-include-usage]] [--calls N] \
      [--tag T] [--usage JSON] [--prompt TEXT] [--http2 [--concurrent]] [--alternate]

--alternate streams every second call (2, 4, …) on the same keep-alive client.
Streams pass stream_options={"include_usage": True} unless --no-include-usage.
Prints one JSON line per call (see _common.py); exits non-zero on any failure.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import openai  # noqa: E402

from _common import base_parser, dump, extra_headers, run_calls, ssl_context  # noqa: E402


def openai_base(url):
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def otel_from_openai(u):
    if u is None:
        return None
    ptd = u.prompt_tokens_details
    ctd = u.completion_tokens_details
    return {
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "cache_read_tokens": (ptd.cached_tokens or 0) if ptd else 0,
        "cache_write_tokens": (getattr(ptd, "cache_write_tokens", None) or 0) if ptd else 0,
        "reasoning_tokens": (ctd.reasoning_tokens or 0) if ctd else 0,
    }


def make_client(args):
    return openai.OpenAI(
        api_key=os.environ.get("OPENAI_API_KEY", "sk-mock-agentwatch"),
        base_url=openai_base(args.base_url),
        max_retries=args.max_retries,
        timeout=args.timeout,
        http_client=openai.DefaultHttpxClient(verify=ssl_context(args.ca), http2=args.http2),
    )


def chat_call(client, args, headers, i=1):
    """One call; returns (usage dict, otel dict, reply chars)."""
    messages = [{"role": "user", "content": args.prompt}]
    stream = args.stream or (getattr(args, "alternate", False) and i % 2 == 0)
    if not stream:
        resp = client.chat.completions.create(
            model=args.model, messages=messages, max_completion_tokens=args.max_tokens,
            extra_headers=headers)
        text = resp.choices[0].message.content or "" if resp.choices else ""
        return dump(resp.usage), otel_from_openai(resp.usage), len(text)
    kwargs = {}
    include_usage = not args.no_include_usage
    if include_usage:
        kwargs["stream_options"] = {"include_usage": True}
    stream = client.chat.completions.create(
        model=args.model, messages=messages, max_completion_tokens=args.max_tokens,
        stream=True, extra_headers=headers, **kwargs)
    usage = None
    chars = 0
    finished = False
    with stream:
        for chunk in stream:
            for choice in chunk.choices:
                if choice.delta and choice.delta.content:
                    chars += len(choice.delta.content)
                if choice.finish_reason:
                    finished = True
            if chunk.usage is not None:
                usage = chunk.usage
    if not finished:
        raise RuntimeError("stream ended without a finish_reason")
    if include_usage and usage is None:
        raise RuntimeError("stream_options.include_usage was set but no usage chunk arrived")
    return dump(usage), otel_from_openai(usage), chars


def main():
    ap = base_parser("official openai SDK, Chat Completions", "gpt-4o-mini")
    ap.add_argument("--no-include-usage", action="store_true",
                    help="streams: do not ask for the final usage chunk")
    ap.add_argument("--alternate", action="store_true",
                    help="stream every second call")
    args = ap.parse_args()
    headers = extra_headers(args)
    client = make_client(args)
    return run_calls(args, "openai_chat.py", "chat.completions",
                     lambda i: chat_call(client, args, headers, i), (openai.OpenAIError,))


if __name__ == "__main__":
    sys.exit(main())
