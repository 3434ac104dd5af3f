"""Shared argument parsing and output for the Python client drivers.

Each driver prints one JSON line per call on stdout:
  {"driver", "call", "api", "model", "stream", "status": "ok"|"error",
   "usage": <the SDK's usage object as dict, or null>,
   "otel": <the same normalised: input_tokens (incl. cache), output_tokens
            (incl. reasoning), cache_read_tokens, cache_write_tokens,
            reasoning_tokens; or null>,
   "text_chars": <length of the reply text>, "error": <class name, on errors>,
   "error_status": <HTTP status, on API errors>}
No prompt or reply text is printed.
"""

import argparse
import json
import ssl
import sys


def base_parser(description, default_model):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--base-url", required=True,
                    help="server root, e.g. https://127.0.0.1:PORT (a trailing /v1 is fine)")
    ap.add_argument("--ca", help="PEM file of the CA to trust (e.g. STATE_DIR/ca.pem)")
    ap.add_argument("--model", default=default_model)
    ap.add_argument("--stream", action="store_true", help="stream the responses")
    ap.add_argument("--calls", type=int, default=1, help="number of calls (sequential)")
    ap.add_argument("--concurrent", action="store_true",
                    help="make the --calls calls at once, from threads sharing one client "
                         "(over HTTP/2 they share one connection)")
    ap.add_argument("--http2", action="store_true",
                    help="speak HTTP/2 (httpx with h2; ALPN h2) where the driver supports it")
    ap.add_argument("--tag", help="sent as the x-test-tag header")
    ap.add_argument("--usage", help="JSON sent as the x-mock-usage header")
    ap.add_argument("--prompt", default="Say hello.", help="user message text")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-retries", type=int, default=0,
                    help="SDK retries (default 0 so request counts are exact)")
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, seconds")
    ap.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                    help="extra request header (repeatable)")
    ap.add_argument("--expect-error", action="store_true",
                    help="every call must fail (e.g. x-mock-status or x-mock-truncate); "
                         "exit 0 only if all failed")
    ap.add_argument("--expect-status", type=int,
                    help="every call must fail with this HTTP status (implies --expect-error)")
    return ap


def extra_headers(args):
    h = {}
    if args.tag:
        h["x-test-tag"] = args.tag
    if args.usage:
        json.loads(args.usage)  # fail early on bad JSON
        h["x-mock-usage"] = args.usage
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep:
            sys.exit(f"--header needs NAME=VALUE, got {item!r}")
        h[name.strip()] = value.strip()
    return h


def ssl_context(ca):
    ctx = ssl.create_default_context()
    if ca:
        ctx.load_verify_locations(cafile=ca)
    return ctx


def dump(obj):
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=False)
    return obj


def emit(record):
    print(json.dumps(record, sort_keys=True), flush=True)


def status_of(exc):
    return getattr(exc, "status_code", None)


def check_expectation(failures):
    """Exit code: failures are unexpected outcomes."""
    if failures:
        for f in failures:
            print(f, file=sys.stderr)
        return 1
    return 0


def run_calls(args, driver, api, one_call, error_types):
    """Runs args.calls calls of one_call(i) -> (usage_dict, otel, text_chars), one after the
    other, or all at once from threads with --concurrent. Records are printed in call order."""
    expect_error = args.expect_error or args.expect_status is not None
    failures = []

    def attempt(i):
        try:
            return i, one_call(i), None
        except Exception as exc:  # classified below, in call order
            return i, None, exc

    calls = range(1, args.calls + 1)
    if getattr(args, "concurrent", False):
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=max(1, args.calls)) as pool:
            outcomes = list(pool.map(attempt, calls))
    else:
        outcomes = [attempt(i) for i in calls]
    for i, result, exc in outcomes:
        rec = {"driver": driver, "call": i, "api": api, "model": args.model,
               "stream": bool(args.stream)}
        if exc is not None and isinstance(exc, error_types):  # SDK errors: expected or not
            rec.update(status="error", usage=None, otel=None, error=type(exc).__name__,
                       error_status=status_of(exc))
            emit(rec)
            if not expect_error:
                failures.append(f"call {i}: {type(exc).__name__}: {exc}")
            elif args.expect_status is not None and status_of(exc) != args.expect_status:
                failures.append(f"call {i}: wanted status {args.expect_status}, "
                                f"got {status_of(exc)} ({type(exc).__name__})")
            continue
        if exc is not None:  # a bug in the driver or a protocol break
            rec.update(status="error", usage=None, otel=None, error=type(exc).__name__,
                       error_status=None)
            emit(rec)
            if not expect_error or args.expect_status is not None:
                failures.append(f"call {i}: {type(exc).__name__}: {exc}")
            continue
        usage, otel, text_chars = result
        rec.update(status="ok", usage=usage, otel=otel, text_chars=text_chars)
        emit(rec)
        if expect_error:
            failures.append(f"call {i}: succeeded but an error was expected")
    return check_expectation(failures)
