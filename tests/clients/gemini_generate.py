#!/usr/bin/env python3
"""Drives the official `google-genai` Python SDK: Gemini generateContent, plain or streamed.

  python gemini_generate.py --base-url https://127.0.0.1:PORT --ca DIR/ca.pem \
      [--model gemini-2.5-flash] [--stream | --json-array] [--calls N] [--tag T] [--usage JSON]

Plain: `client.models.generate_content`; --stream: `client.models.generate_content_stream`
(the SDK streams with `?alt=sse`). --json-array posts to `:streamGenerateContent` WITHOUT
`alt=sse` through httpx (the SDK cannot), so the reply is the default streamed JSON array.
Trust: `HttpOptions(client_args={"verify": ssl context loaded with --ca})`.
Prints one JSON line per call (see _common.py); exits non-zero on any failure.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import httpx  # noqa: E402
from google import genai  # noqa: E402
from google.genai import errors, types  # noqa: E402

from _common import base_parser, dump, extra_headers, run_calls, ssl_context  # noqa: E402

API_KEY = os.environ.get("GEMINI_API_KEY", "mock-gemini-key")


def otel(u):
    """usageMetadata (SDK object or raw dict) normalised: thoughts are outside candidates."""
    if u is None:
        return None
    if not isinstance(u, dict):
        u = u.model_dump(mode="json", by_alias=True, exclude_none=True)

    def get(snake, camel):
        return u.get(camel, u.get(snake)) or 0

    thoughts = get("thoughts_token_count", "thoughtsTokenCount")
    return {
        "input_tokens": get("prompt_token_count", "promptTokenCount")
        + get("tool_use_prompt_token_count", "toolUsePromptTokenCount"),
        "output_tokens": get("candidates_token_count", "candidatesTokenCount") + thoughts,
        "cache_read_tokens": get("cached_content_token_count", "cachedContentTokenCount"),
        "cache_write_tokens": 0,
        "reasoning_tokens": thoughts,
    }


def root(url):
    url = url.rstrip("/")
    return url[: -len("/v1beta")] if url.endswith("/v1beta") else url


def make_client(args, headers):
    return genai.Client(
        api_key=API_KEY,
        http_options=types.HttpOptions(
            base_url=root(args.base_url),
            api_version="v1beta",
            headers=headers,
            timeout=int(args.timeout * 1000),
            client_args={"verify": ssl_context(args.ca)},
            retry_options=types.HttpRetryOptions(attempts=1),
        ),
    )


def config(args):
    return types.GenerateContentConfig(max_output_tokens=args.max_tokens)


def sdk_call(client, args):
    if not args.stream:
        resp = client.models.generate_content(
            model=args.model, contents=args.prompt, config=config(args))
        return dump(resp.usage_metadata), otel(resp.usage_metadata), len(resp.text or "")
    usage = None
    chars = 0
    finished = False
    for chunk in client.models.generate_content_stream(
            model=args.model, contents=args.prompt, config=config(args)):
        chars += len(chunk.text or "")
        if chunk.usage_metadata is not None:
            usage = chunk.usage_metadata
        if chunk.candidates and chunk.candidates[0].finish_reason:
            finished = True
    if not finished:
        raise RuntimeError("stream ended without a finishReason")
    return dump(usage), otel(usage), chars


def json_array_call(http, args, headers):
    url = f"{root(args.base_url)}/v1beta/models/{args.model}:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": args.prompt}]}],
            "generationConfig": {"maxOutputTokens": args.max_tokens}}
    h = {"x-goog-api-key": API_KEY, "content-type": "application/json", **headers}
    with http.stream("POST", url, json=body, headers=h) as r:
        data = r.read()
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}")
    items = json.loads(data)
    if not isinstance(items, list) or not items:
        raise RuntimeError("expected a JSON array")
    last = items[-1]
    if not last.get("candidates", [{}])[0].get("finishReason"):
        raise RuntimeError("last element has no finishReason")
    chars = sum(len(p.get("text", "")) for it in items for c in it.get("candidates", [])
                for p in c.get("content", {}).get("parts", []))
    usage = last.get("usageMetadata")
    return usage, otel(usage), chars


def main():
    ap = base_parser("official google-genai SDK, Gemini generateContent", "gemini-2.5-flash")
    ap.add_argument("--json-array", action="store_true",
                    help="stream without alt=sse (raw httpx), reading the JSON array")
    args = ap.parse_args()
    headers = extra_headers(args)
    if args.json_array:
        args.stream = True
        http = httpx.Client(verify=ssl_context(args.ca), timeout=args.timeout)
        one = lambda i: json_array_call(http, args, headers)  # noqa: E731
        error_types = (httpx.HTTPError,)
    else:
        client = make_client(args, headers)
        one = lambda i: sdk_call(client, args)  # noqa: E731
        error_types = (errors.APIError,)
    return run_calls(args, "gemini_generate.py", "generate_content", one, error_types)


if __name__ == "__main__":
    sys.exit(main())
