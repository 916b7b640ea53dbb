"""A real MCP server that needs a credential, for the credentials-at-rest tests.

``python -m tests.servers.vault_server`` (stdio) refuses to start unless ``VAULT_TOKEN`` is
set in its environment. ``--transport http --port 0`` takes the expected token from
``VAULT_TOKEN`` too, answers 401 to any request without ``Authorization: Bearer <token>``,
and prints ``READY <port>``. The one tool, ``fingerprint``, returns a SHA-256 prefix of the
token it received, so a test can check the right value arrived without the value itself
ever appearing in a result.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import Any

import anyio
from mcp.server.mcpserver import MCPServer

from tests.servers.serving import serve_ready

server = MCPServer("vault")


def fingerprint_of(token: str) -> str:
    """What the `fingerprint` tool answers for a token."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@server.tool()
def fingerprint() -> str:
    """Show a fingerprint of the vault token this server was given."""
    return fingerprint_of(os.environ["VAULT_TOKEN"])


class _RequireBearer:
    """ASGI middleware: 401 unless the request carries the expected bearer token."""

    def __init__(self, app: Any, token: str) -> None:
        self._app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != self._expected:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self._app(scope, receive, send)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    token = os.environ.get("VAULT_TOKEN", "")
    if not token:
        print("vault_server: VAULT_TOKEN is not set", file=sys.stderr)
        sys.exit(2)
    if args.transport == "stdio":
        server.run("stdio")
        return
    app = _RequireBearer(server.streamable_http_app(streamable_http_path="/mcp"), token)
    anyio.run(serve_ready, app, "127.0.0.1", args.port)


if __name__ == "__main__":
    main()
