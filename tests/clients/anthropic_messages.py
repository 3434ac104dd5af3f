#!/usr/bin/env python3
"""Drives the official `anthropic` Python SDK: Messages, plain or streamed.

  python anthropic_messages.py --base-url https://127.0.0.1:PORT --ca DIR/ca.pem \
      [--model claude-sonnet-4-6] [--stream [--stream-api helper|raw]] [--calls N] \
      [--tag T] [--usage JSON] [--prompt TEXT] [--beta]

--stream uses client.messages.stream() (helper, default) or
messages.create(stream=True) (raw events, usage accumulated here).
--beta calls client.beta.messages (POST /v1/messages?beta=true).
Prints one JSON line per call (see _common.py); exits non-zero on any failure.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import anthropic  # noqa: E402

from _common import base_parser, dump, extra_headers, run_calls, ssl_context  # noqa: E402


def anthropic_base(url):
    url = url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def otel_from_anthropic(u):
    """Anthropic input_tokens excludes cache tokens; OTel input includes them."""
    if u is None:
        return None
    get = (lambda k: u.get(k)) if isinstance(u, dict) else (lambda k: getattr(u, k, None))
    cw = get("cache_creation_input_tokens") or 0
    cr = get("cache_read_input_tokens") or 0
    details = get("output_tokens_details")
    thinking = 0
    if details is not None:
        thinking = (details.get("thinking_tokens") if isinstance(details, dict)
                    else getattr(details, "thinking_tokens", 0)) or 0
    return {
        "input_tokens": (get("input_tokens") or 0) + cw + cr,
        "output_tokens": get("output_tokens") or 0,
        "cache_read_tokens": cr,
        "cache_write_tokens": cw,
        "reasoning_tokens": thinking,
    }


def make_client(args):
    return anthropic.Anthropic(
        api_key=os.environ.get("ANTHROPIC_API_KEY", "sk-ant-mock-agentwatch"),
        base_url=anthropic_base(args.base_url),
        max_retries=args.max_retries,
        timeout=args.timeout,
        http_client=anthropic.DefaultHttpxClient(verify=ssl_context(args.ca), http2=args.http2),
    )


def text_chars(message):
    return sum(len(getattr(b, "text", "") or "") for b in message.content)


def messages_call(client, args, headers):
    api = client.beta.messages if args.beta else client.messages
    kwargs = dict(model=args.model, max_tokens=args.max_tokens,
                  messages=[{"role": "user", "content": args.prompt}], extra_headers=headers)
    if not args.stream:
        msg = api.create(**kwargs)
        return dump(msg.usage), otel_from_anthropic(msg.usage), text_chars(msg)
    if args.stream_api == "helper":
        with api.stream(**kwargs) as stream:
            for _ in stream:
                pass
            msg = stream.get_final_message()
        if msg.stop_reason is None:
            raise RuntimeError("stream ended without a stop_reason")
        return dump(msg.usage), otel_from_anthropic(msg.usage), text_chars(msg)
    # Raw events: usage from message_start, output_tokens (cumulative) from message_delta.
    usage = None
    chars = 0
    stopped = False
    stream = api.create(stream=True, **kwargs)
    with stream:
        for ev in stream:
            if ev.type == "message_start":
                usage = dump(ev.message.usage)
            elif ev.type == "content_block_delta" and getattr(ev.delta, "text", None):
                chars += len(ev.delta.text)
            elif ev.type == "message_delta":
                if usage is None:
                    raise RuntimeError("message_delta before message_start")
                for k, v in dump(ev.usage).items():
                    if v is not None:
                        usage[k] = v
            elif ev.type == "message_stop":
                stopped = True
    if not stopped:
        raise RuntimeError("stream ended without message_stop")
    return usage, otel_from_anthropic(usage), chars


def main():
    ap = base_parser("official anthropic SDK, Messages", "claude-sonnet-4-6")
    ap.add_argument("--stream-api", choices=["helper", "raw"], default="helper")
    ap.add_argument("--beta", action="store_true", help="use client.beta.messages")
    args = ap.parse_args()
    headers = extra_headers(args)
    client = make_client(args)
    return run_calls(args, "anthropic_messages.py", "messages",
                     lambda i: messages_call(client, args, headers),
                     (anthropic.AnthropicError,))


if __name__ == "__main__":
    sys.exit(main())
