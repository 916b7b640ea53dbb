"""The MCP front door: a stable set of meta-tools that every client can use.

`tools/list` never changes (so prompt caches stay valid and every client works); the tools
behind the gateway are reached through `find_tools` and `call_tool`.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from .catalog import SearchHit
from .forwarder import error_result
from .services import GatewayService

FIND_TOOLS = "find_tools"
CALL_TOOL = "call_tool"

_CARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Pass this to call_tool."},
        "title": {"type": ["string", "null"]},
        "description": {"type": "string"},
        "server": {"type": "string"},
        "input_schema": {"type": "object"},
        "score": {"type": "number"},
    },
    "required": ["name", "description", "server", "input_schema", "score"],
}


def meta_tools(max_limit: int, default_limit: int) -> list[types.Tool]:
    """The fixed meta-tool surface."""
    return [
        types.Tool(
            name=FIND_TOOLS,
            title="Find tools",
            description=(
                "Search the tools of every MCP server behind this gateway. Describe the task in plain "
                "words; you get the best-matching tools with their input schemas. Then run one with "
                "call_tool, passing its exact name."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "query": {"type": "string", "minLength": 1, "description": "What you want to do."},
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": max_limit,
                        "default": default_limit,
                        "description": "How many tools to return.",
                    },
                    "server": {"type": "string", "description": "Only tools of this server."},
                },
                "required": ["query"],
                "additionalProperties": False,
            },
            output_schema={
                "type": "object",
                "properties": {
                    "tools": {"type": "array", "items": _CARD_SCHEMA},
                    "total_tools": {"type": "integer"},
                },
                "required": ["tools", "total_tools"],
            },
            annotations=types.ToolAnnotations(
                read_only_hint=True, destructive_hint=False, open_world_hint=False
            ),
        ),
        types.Tool(
            name=CALL_TOOL,
            title="Call a tool",
            description=(
                "Run a tool found with find_tools: give its exact name and the arguments its input "
                "schema asks for. The tool's own result is returned unchanged."
            ),
            input_schema={
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The tool name from find_tools.",
                    },
                    "arguments": {"type": "object", "description": "Arguments for that tool.", "default": {}},
                },
                "required": ["name"],
                "additionalProperties": False,
            },
            annotations=types.ToolAnnotations(
                read_only_hint=False, destructive_hint=True, open_world_hint=True
            ),
        ),
    ]


def tool_card(hit: SearchHit) -> dict[str, Any]:
    tool = hit.tool
    return {
        "name": tool.exposed_name,
        "title": tool.title,
        "description": tool.description,
        "server": tool.server,
        "input_schema": tool.input_schema,
        "score": round(hit.score, 4),
    }


def build_mcp_server(service: GatewayService, *, default_limit: int = 5, max_limit: int = 50) -> Server[Any]:
    """The front door as a low-level MCP server; transports (HTTP, stdio) are attached by the caller."""
    tools = meta_tools(max_limit, default_limit)

    async def on_list_tools(
        _ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        if params.name == FIND_TOOLS:
            return _find(service, arguments, default_limit, max_limit)
        if params.name == CALL_TOOL:
            name = arguments.get("name")
            inner = arguments.get("arguments", {})
            unknown = set(arguments) - {"name", "arguments"}
            if not isinstance(name, str) or not name:
                return error_result("call_tool needs 'name': the exact tool name returned by find_tools")
            if not isinstance(inner, dict):
                return error_result("call_tool 'arguments' must be an object")
            if unknown:
                return error_result(f"call_tool takes only 'name' and 'arguments' (got {sorted(unknown)})")
            return await service.call_tool(name, inner)
        return error_result(f"unknown tool {params.name!r}: this gateway offers {FIND_TOOLS} and {CALL_TOOL}")

    return Server(
        "toolgate",
        version="0.1.0",
        instructions=(
            "This gateway fronts many MCP servers. Use find_tools to discover the tools for a task, "
            "then call_tool to run one."
        ),
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )


def _find(
    service: GatewayService, arguments: dict[str, Any], default_limit: int, max_limit: int
) -> types.CallToolResult:
    query = arguments.get("query")
    limit = arguments.get("limit", default_limit)
    server = arguments.get("server")
    if not isinstance(query, str) or not query.strip():
        return error_result("find_tools needs 'query': a few words describing the task")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        return error_result(f"find_tools 'limit' must be an integer from 1 to {max_limit}")
    if server is not None and not isinstance(server, str):
        return error_result("find_tools 'server' must be a server name")
    hits = service.find_tools(query, limit, server=server)
    payload = {"tools": [tool_card(hit) for hit in hits], "total_tools": len(service.catalog)}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload, ensure_ascii=False))],
        structured_content=payload,
    )
