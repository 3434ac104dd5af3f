#!/usr/bin/env python3
"""An agent-tree driver: makes --calls LLM calls with the official openai SDK
(same flags as openai_chat.py), then runs each --child "CMD" with `bash -c CMD`
in order and waits for it. A child is usually another tree_agent.py, so a test
can build: root -> bash -> {child A -> bash -> grandchild, child B}.

  python tree_agent.py --base-url URL --ca CA --calls 2 --tag root \
      --child "python tree_agent.py --base-url URL --ca CA --calls 1 --tag a \
               --child 'python tree_agent.py ... --tag a1'" \
      --child "python tree_agent.py --base-url URL --ca CA --calls 1 --tag b"

Every output line carries "agent" (--name, default the tag) and "pid".
Exits non-zero if any call or any child fails. Children inherit stdout/stderr.
"""

import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import openai  # noqa: E402

import _common  # noqa: E402
from openai_chat import chat_call, make_client  # noqa: E402


def main():
    ap = _common.base_parser("agent tree: LLM calls, then child commands", "gpt-4o-mini")
    ap.add_argument("--no-include-usage", action="store_true")
    ap.add_argument("--child", action="append", default=[], metavar="CMD",
                    help="command run through `bash -c` after the calls (repeatable)")
    ap.add_argument("--child-timeout", type=float, default=300.0)
    ap.add_argument("--name", help="agent name in the output (default: --tag)")
    args = ap.parse_args()
    name = args.name or args.tag or "agent"
    headers = _common.extra_headers(args)
    client = make_client(args)

    original_emit = _common.emit

    def emit(rec):
        rec.update(agent=name, pid=os.getpid())
        original_emit(rec)

    _common.emit = emit
    rc = _common.run_calls(args, "tree_agent.py", "chat.completions",
                           lambda i: chat_call(client, args, headers), (openai.OpenAIError,))
    for cmd in args.child:
        sys.stdout.flush()
        try:
            res = subprocess.run(["bash", "-c", cmd], timeout=args.child_timeout)
            code = res.returncode
        except subprocess.TimeoutExpired:
            code = 124
        emit({"driver": "tree_agent.py", "event": "child_exit", "exit_code": code})
        if code != 0:
            print(f"{name}: child exited {code}", file=sys.stderr)
            rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
