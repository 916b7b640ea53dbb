"""A real MCP server that answers with the `_meta` its call arrived with.

The observability tests use it to prove that the gateway forwards the request id (and the W3C
trace context when tracing is on) to the upstream. Run it as
``python -m tests.servers.meta_server [--transport stdio|http] [--port 0]``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext

from tests.servers.echo_server import serve_http, serve_stdio

META_TOOL = types.Tool(
    name="show_meta",
    description="Return the request metadata (_meta) this call arrived with, as JSON.",
    input_schema={"type": "object", "properties": {}, "additionalProperties": False},
)


def build_server() -> Server[Any]:
    async def list_tools(
        _ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[META_TOOL])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        received = dict(ctx.meta or {})
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(received, default=str))],
            structured_content={"meta": received},
        )

    return Server("meta", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    server = build_server()
    if args.transport == "stdio":
        anyio.run(serve_stdio, server)
    else:
        anyio.run(serve_http, server, args.host, args.port)


if __name__ == "__main__":
    main()
