"""A real MCP server for the gateway's tests, with tools that misbehave on purpose.

Run it as ``python -m tests.servers.echo_server --transport stdio`` or
``python -m tests.servers.echo_server --transport http --port 0``; over HTTP it prints
``READY <port>`` once the socket accepts connections and serves MCP at ``/mcp``.
``--transport sse`` serves the legacy HTTP+SSE transport at ``/sse`` instead.

Built on the low-level ``Server`` so that pagination, cursors and notifications are
exactly what the tests ask for rather than what a framework chooses.

Both protocol eras are served. A list change is announced two ways because the SDK
routes them differently: on handshake-era (2025) connections through the connection's
standalone channel (``send_tool_list_changed``), on 2026-07-28 connections only on
``subscriptions/listen`` streams, which are fed from a ``SubscriptionBus``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import anyio
import jsonschema
import mcp_types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError

from tests.servers.serving import serve_ready

Ctx = ServerRequestContext[Any]

SUM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"sum": {"type": "integer"}},
    "required": ["sum"],
    "additionalProperties": False,
}


def _object_schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


def _fixed_tools() -> list[types.Tool]:
    return [
        types.Tool(
            name="echo",
            description="Echo the given text back unchanged.",
            input_schema=_object_schema(
                {"text": {"type": "string", "description": "Text to echo."}}, ["text"]
            ),
        ),
        types.Tool(
            name="add",
            description="Add two integers and return their sum as structured content.",
            input_schema=_object_schema(
                {
                    "a": {"type": "integer", "description": "First addend."},
                    "b": {"type": "integer", "description": "Second addend."},
                },
                ["a", "b"],
            ),
            output_schema=SUM_SCHEMA,
        ),
        types.Tool(
            name="sleep",
            description="Wait for the given number of seconds, then answer 'slept'.",
            input_schema=_object_schema(
                {"seconds": {"type": "number", "minimum": 0, "description": "How long to wait."}}, ["seconds"]
            ),
        ),
        types.Tool(
            name="crash",
            description="Kill the server process in the middle of the call, without answering.",
            input_schema=_object_schema({}, []),
        ),
        types.Tool(
            name="fail",
            description="Return a tool error (isError=true) carrying the given message.",
            input_schema=_object_schema(
                {"message": {"type": "string", "description": "The error text."}}, ["message"]
            ),
        ),
        types.Tool(
            name="bad_output",
            description="Declare an integer 'sum' output but return a string, violating its own output schema.",
            input_schema=_object_schema({}, []),
            output_schema=SUM_SCHEMA,
        ),
        types.Tool(
            name="toggle_tool",
            description="Add the 'surprise' tool if absent or remove it if present, then announce the change.",
            input_schema=_object_schema({}, []),
        ),
        types.Tool(
            name="whoami",
            description="Report the server name and process id as JSON text.",
            input_schema=_object_schema({}, []),
        ),
    ]


SURPRISE_TOOL = types.Tool(
    name="surprise",
    description="A tool that comes and goes; toggled by toggle_tool.",
    input_schema=_object_schema({}, []),
)


def _extra_tool(index: int) -> types.Tool:
    return types.Tool(
        name=f"extra_{index}",
        description=f"Generated tool number {index}; echoes its 'value' argument.",
        input_schema=_object_schema({"value": {"type": "string", "description": "Any text."}}, []),
    )


def _text(text: str) -> list[types.ContentBlock]:
    return [types.TextContent(text=text)]


def _encode_cursor(offset: int) -> str:
    # Opaque to clients: they must hand it back unchanged, never parse it.
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    try:
        kind, _, value = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
        offset = int(value)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise MCPError(types.INVALID_PARAMS, "Invalid cursor") from None
    if kind != "offset" or offset < 0:
        raise MCPError(types.INVALID_PARAMS, "Invalid cursor")
    return offset


@dataclass
class EchoState:
    """Process-wide tool state: a toggle seen by one client is seen by all."""

    name: str
    page_size: int | None
    extra_tools: int
    surprise: bool = False
    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)

    def tools(self) -> list[types.Tool]:
        tools = _fixed_tools() + [_extra_tool(i) for i in range(self.extra_tools)]
        if self.surprise:
            tools.append(SURPRISE_TOOL)
        return tools

    def find(self, name: str) -> types.Tool | None:
        return next((tool for tool in self.tools() if tool.name == name), None)


class _EchoServer(Server[Any]):
    """Advertises ``tools.listChanged`` on handshake-era connections.

    The HTTP session manager builds initialization options from this method with no
    arguments, so overriding it is the one place that covers stdio and HTTP alike.
    """

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities,
            extensions,
        )


def build_server(state: EchoState) -> Server[Any]:
    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        tools = state.tools()
        if state.page_size is None:
            return types.ListToolsResult(tools=tools)
        start = _decode_cursor(params.cursor) if params is not None and params.cursor else 0
        end = start + state.page_size
        next_cursor = _encode_cursor(end) if end < len(tools) else None
        return types.ListToolsResult(tools=tools[start:end], next_cursor=next_cursor)

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        tool = state.find(params.name)
        if tool is None:
            # Unknown tool is a protocol error (JSON-RPC -32602), per the spec.
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        args = params.arguments or {}
        try:
            jsonschema.validate(args, tool.input_schema)
        except jsonschema.ValidationError as exc:
            # Bad arguments are a tool-execution error so a model can correct itself.
            return types.CallToolResult(content=_text(f"Invalid arguments: {exc.message}"), is_error=True)
        return await _run_tool(ctx, state, tool.name, args)

    return _EchoServer(
        state.name,
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_subscriptions_listen=ListenHandler(state.bus),
    )


async def _run_tool(ctx: Ctx, state: EchoState, name: str, args: dict[str, Any]) -> types.CallToolResult:
    if name == "echo":
        return types.CallToolResult(content=_text(str(args["text"])))
    if name == "add":
        total = {"sum": int(args["a"]) + int(args["b"])}
        return types.CallToolResult(content=_text(json.dumps(total)), structured_content=total)
    if name == "sleep":
        await anyio.sleep(float(args["seconds"]))
        return types.CallToolResult(content=_text("slept"))
    if name == "crash":
        # Exit without unwinding: no response, no flush, as a real crash would.
        os._exit(3)
    if name == "fail":
        return types.CallToolResult(content=_text(str(args["message"])), is_error=True)
    if name == "bad_output":
        wrong = {"sum": "not a number"}
        return types.CallToolResult(content=_text(json.dumps(wrong)), structured_content=wrong)
    if name == "toggle_tool":
        state.surprise = not state.surprise
        # 2026-07-28 clients hear it on their listen stream; the SDK drops the
        # standalone copy on those connections, so sending both is safe.
        await state.bus.publish(ToolsListChanged())
        await ctx.session.send_tool_list_changed()
        return types.CallToolResult(
            content=_text("surprise present" if state.surprise else "surprise absent")
        )
    if name == "whoami":
        return types.CallToolResult(content=_text(json.dumps({"name": state.name, "pid": os.getpid()})))
    if name == "surprise" or name.startswith("extra_"):
        return types.CallToolResult(content=_text(f"{name}: {args.get('value', 'surprise!')}"))
    raise MCPError(types.INTERNAL_ERROR, f"Tool {name} has no implementation")


async def serve_stdio(server: Server[Any]) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def serve_http(server: Server[Any], host: str, port: int) -> None:
    app = server.streamable_http_app(streamable_http_path="/mcp", host=host)
    await serve_ready(app, host, port)


async def serve_sse(server: Server[Any], host: str, port: int) -> None:
    """Legacy HTTP+SSE transport (2024-11-05 style): GET /sse opens the stream, POST /messages/."""
    from mcp.server.sse import SseServerTransport
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route

    sse = SseServerTransport("/messages/")

    async def handle_sse(request: Request) -> Response:
        async with sse.connect_sse(request.scope, request.receive, request._send) as (read, write):
            await server.run(read, write, server.create_initialization_options())
        return Response()

    app = Starlette(
        routes=[Route("/sse", handle_sse, methods=["GET"]), Mount("/messages/", app=sse.handle_post_message)]
    )
    await serve_ready(app, host, port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=["stdio", "http", "sse"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="HTTP port; 0 lets the OS choose")
    parser.add_argument(
        "--page-size", type=int, default=None, help="tools per tools/list page (default: all)"
    )
    parser.add_argument("--extra-tools", type=int, default=0, help="add generated tools extra_0..extra_{N-1}")
    parser.add_argument("--name", default="echo", help="server name reported to clients")
    args = parser.parse_args(argv)
    if args.page_size is not None and args.page_size < 1:
        parser.error("--page-size must be at least 1")

    state = EchoState(name=args.name, page_size=args.page_size, extra_tools=args.extra_tools)
    server = build_server(state)
    try:
        if args.transport == "stdio":
            anyio.run(serve_stdio, server)
        elif args.transport == "sse":
            anyio.run(serve_sse, server, args.host, args.port)
        else:
            anyio.run(serve_http, server, args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
