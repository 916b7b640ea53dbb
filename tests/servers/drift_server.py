"""A real MCP server whose one tool's definition lives in a JSON file, read on every tools/list.

Run it as ``python -m tests.servers.drift_server DEFINITION.json`` (stdio). The file holds
``{"name": ..., "description": ..., "inputSchema": {...}}``; a test rewrites it to play an
upstream that changes its tool under the gateway (a rug pull). Calls answer with the
description the server holds at that moment, so a test can tell which version ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server


def _definition(path: Path) -> types.Tool:
    data = json.loads(path.read_text())
    return types.Tool(
        name=data["name"],
        description=data.get("description", ""),
        input_schema=data.get("inputSchema") or {"type": "object"},
    )


def build_server(path: Path) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[_definition(path)])

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        tool = _definition(path)
        text = f"{tool.name} ran; definition now: {tool.description}"
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)])

    return Server("drift", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def _serve(path: Path) -> None:
    server = build_server(path)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(_serve, Path(sys.argv[1]))
