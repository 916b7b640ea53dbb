"""A stdio "MCP server" that only ever writes garbage, for malformed-output tests.

Run as ``python -m tests.servers.garbage_server``. It prints a banner line at start and
answers every line it reads with lines that are not valid JSON-RPC (plain text, cut-off
JSON, JSON that is not a JSON-RPC message, control characters); no real answer ever
arrives. It exits with status 0 once stdin is closed, so a client that gives up and
closes the pipe leaves no orphan behind.
"""

from __future__ import annotations

import sys

# Each kind of rubbish a broken server or a chatty library might print on stdout.
GARBAGE_LINES = (
    "this is not json",
    '{"jsonrpc": "2.0", "id": ',
    '{"hello": "world"}',
    "[1, 2, 3]",
    "\x00\x01\x02 binary-ish noise \x7f",
)


def _emit(lines: tuple[str, ...]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    _emit(("garbage server starting up, la la la",))
    try:
        for _ in sys.stdin:
            _emit(GARBAGE_LINES)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
