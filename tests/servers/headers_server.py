"""A real streamable HTTP MCP server that records the HTTP headers of every request it gets.

Run it as ``python -m tests.servers.headers_server --port 0``: it prints ``READY <port>`` and
serves MCP at ``/mcp``. Its tool ``seen_headers`` returns, for every request received so far
(listing, the call itself included), each header's name with the SHA-256 of its value, so a
test can prove what a gateway in front of it did and did not forward without the values
themselves travelling back through (and being logged by) the gateway.
"""

from __future__ import annotations

import argparse
import hashlib
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.servers.serving import serve_ready

server = MCPServer("headers")
_seen: list[dict[str, str]] = []


@server.tool()
def seen_headers() -> list[dict[str, str]]:
    """Return the HTTP headers (name: SHA-256 of the value) of every request received."""
    return list(_seen)


@server.tool()
def shout(text: str) -> str:
    """Repeat the text in capital letters."""
    return text.upper()


class _Recorder:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            _seen.append({k.decode("latin-1"): hashlib.sha256(v).hexdigest() for k, v in scope["headers"]})
        await self.app(scope, receive, send)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    app: Any = _Recorder(server.streamable_http_app(streamable_http_path="/mcp"))
    anyio.run(serve_ready, app, args.host, args.port)


if __name__ == "__main__":
    main()
