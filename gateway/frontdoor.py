"""The MCP front door: a stable set of meta-tools that every client can use.

`tools/list` never changes (so prompt caches stay valid and every client works); the tools
behind the gateway are reached through `find_tools` and `call_tool`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import mcp_types as types
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server

from .catalog import SearchFilters, SearchHit
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
        "why": {"type": "string", "description": "Which stage and field matched."},
    },
    "required": ["name", "description", "server", "input_schema", "score", "why"],
}

_CONVERSATION: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "description": (
        "Optional id of the conversation this belongs to, when one MCP session carries several; "
        "the session itself is used otherwise."
    ),
}
_MAX_QUERY_CHARS = 2000


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
                    "category": {"type": "string", "description": "Only tools of servers in this category."},
                    "read_only": {
                        "type": "boolean",
                        "description": "true: only tools that declare they change nothing; "
                        "false: only tools that declare they may change something.",
                    },
                    "conversation": _CONVERSATION,
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
                    "conversation": _CONVERSATION,
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
        "why": hit.why,
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
        conversation = _conversation(ctx, arguments.get("conversation"))
        if conversation is None:
            return error_result("'conversation' must be a string of 1 to 128 characters")
        if params.name == FIND_TOOLS:
            return await _find(service, arguments, default_limit, max_limit, conversation)
        if params.name == CALL_TOOL:
            name = arguments.get("name")
            inner = arguments.get("arguments", {})
            unknown = set(arguments) - {"name", "arguments", "conversation"}
            if not isinstance(name, str) or not name:
                return error_result("call_tool needs 'name': the exact tool name returned by find_tools")
            if not isinstance(inner, dict):
                return error_result("call_tool 'arguments' must be an object")
            if unknown:
                return error_result(
                    f"call_tool takes only 'name', 'arguments' and 'conversation' (got {sorted(unknown)})"
                )
            return await service.call_tool(name, inner, conversation=conversation)
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


def _conversation(ctx: ServerRequestContext[Any], given: object) -> str | None:
    """Which conversation a request belongs to, for usage learning. None for a bad id.

    The caller's `conversation` when given; else the HTTP session (protocol 2025-11-25); else,
    for sessionless HTTP (2026-07-28), the client (address and user agent) within the current
    hour, so the per-conversation cap is a per-client hourly cap; else (stdio) the session."""
    if given is not None:
        if not isinstance(given, str) or not 1 <= len(given) <= 128:
            return None
        return f"c:{given}"
    request = ctx.request
    headers = getattr(request, "headers", None)
    if headers is None:
        return f"o:{id(ctx.session)}"
    session_id = headers.get("mcp-session-id")
    if session_id:
        return f"s:{session_id}"
    client = getattr(request, "client", None)
    host = getattr(client, "host", "") or ""
    return f"h:{host}|{headers.get('user-agent', '')}|{int(time.time() // 3600)}"


_FIND_ARGUMENTS = frozenset({"query", "limit", "server", "category", "read_only", "conversation"})


async def _find(
    service: GatewayService,
    arguments: dict[str, Any],
    default_limit: int,
    max_limit: int,
    conversation: str,
) -> types.CallToolResult:
    query = arguments.get("query")
    limit = arguments.get("limit", default_limit)
    server = arguments.get("server")
    category = arguments.get("category")
    read_only = arguments.get("read_only")
    unknown = set(arguments) - _FIND_ARGUMENTS
    if unknown:
        return error_result(f"find_tools takes only {sorted(_FIND_ARGUMENTS)} (got {sorted(unknown)})")
    if not isinstance(query, str) or not query.strip():
        return error_result("find_tools needs 'query': a few words describing the task")
    if len(query) > _MAX_QUERY_CHARS:
        return error_result(f"find_tools 'query' is too long (at most {_MAX_QUERY_CHARS} characters)")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit:
        return error_result(f"find_tools 'limit' must be an integer from 1 to {max_limit}")
    if server is not None and not isinstance(server, str):
        return error_result("find_tools 'server' must be a server name")
    if category is not None and not isinstance(category, str):
        return error_result("find_tools 'category' must be a string")
    if read_only is not None and not isinstance(read_only, bool):
        return error_result("find_tools 'read_only' must be true or false")
    filters = SearchFilters(server=server, category=category, read_only=read_only)
    hits = await service.find_tools(query, limit, filters, conversation=conversation)
    payload = {"tools": [tool_card(hit) for hit in hits], "total_tools": len(service.catalog)}
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload, ensure_ascii=False))],
        structured_content=payload,
    )
