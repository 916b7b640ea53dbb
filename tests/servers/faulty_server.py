"""A real MCP server with one tool per upstream fault, for the gateway's fault-injection suite.

``python -m tests.servers.faulty_server --transport stdio`` or ``--transport http --port P``
(``READY <port>`` once listening, MCP at ``/mcp``). Tools:

- ``ok(text)``: answers ``text``; the healthy control.
- ``crash``: the process dies in the middle of the call, without answering.
- ``hang``: never answers.
- ``garbage``: over stdio writes non-JSON lines to stdout, then never answers; over HTTP the
  response to the call is a body that is not JSON-RPC.
- ``huge(mb)``: answers ``mb`` megabytes of text.
- ``bad_output``: declares an integer ``count`` output and returns a string.
- ``change_list``: adds or removes the ``appeared`` tool, announces the change in the middle of
  the call, then answers.
- ``vanish``: answers, then the process exits while idle.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.server.stdio import stdio_server
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.shared.exceptions import MCPError

from tests.servers.serving import serve_ready

Ctx = ServerRequestContext[Any]
GARBAGE = b'not json at all\n{"jsonrpc": "2.0", "id": \n\x00\x01 noise\n[1, 2]\n'


def _schema(properties: dict[str, Any] | None = None, required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties or {},
        "required": required or [],
        "additionalProperties": False,
    }


COUNT_SCHEMA = _schema({"count": {"type": "integer"}}, ["count"])


def _tools(appeared: bool) -> list[types.Tool]:
    tools = [
        types.Tool(
            name="ok",
            description="Answer the given text.",
            input_schema=_schema({"text": {"type": "string"}}, ["text"]),
        ),
        types.Tool(name="crash", description="Die in the middle of the call.", input_schema=_schema()),
        types.Tool(name="hang", description="Never answer.", input_schema=_schema()),
        types.Tool(name="garbage", description="Write garbage instead of an answer.", input_schema=_schema()),
        types.Tool(
            name="huge",
            description="Answer this many megabytes of text.",
            input_schema=_schema({"mb": {"type": "number", "minimum": 0}}, ["mb"]),
        ),
        types.Tool(
            name="bad_output",
            description="Break the declared output schema.",
            input_schema=_schema(),
            output_schema=COUNT_SCHEMA,
        ),
        types.Tool(
            name="change_list", description="Change the tool list during the call.", input_schema=_schema()
        ),
        types.Tool(name="vanish", description="Answer, then exit.", input_schema=_schema()),
    ]
    if appeared:
        tools.append(types.Tool(name="appeared", description="Added by change_list.", input_schema=_schema()))
    return tools


@dataclass
class FaultyState:
    transport: str
    appeared: bool = False
    wire: int | None = None  # stdio: a descriptor of the real stdout (the SDK diverts fd 1)
    bus: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)


class _Faulty(Server[Any]):
    """Advertises ``tools.listChanged`` (stdio and HTTP build their options through here)."""

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


def _text(text: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)


def build_server(state: FaultyState) -> Server[Any]:
    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=_tools(state.appeared))

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        name = params.name
        if name == "ok":
            return _text(str(args.get("text", "")))
        if name == "crash":
            os._exit(3)  # no answer, no flush: as a real crash
        if name == "hang":
            await anyio.sleep_forever()
        if name == "garbage":
            if state.wire is not None:  # over HTTP the middleware answers instead
                os.write(state.wire, GARBAGE)
            await anyio.sleep_forever()
        if name == "huge":
            size = int(float(args["mb"]) * 1024 * 1024)
            return _text("x" * size)
        if name == "bad_output":
            return _text("{}", {"count": "many"})
        if name == "change_list":
            state.appeared = not state.appeared
            # 2026-07-28 sessions hear it on their listen stream, 2025 ones on the session.
            await state.bus.publish(ToolsListChanged())
            await ctx.session.send_tool_list_changed()
            await anyio.sleep(0.2)  # the gateway hears it while the call is still running
            return _text("appeared" if state.appeared else "gone")
        if name == "vanish":
            threading.Timer(0.1, os._exit, args=(0,)).start()  # answer first, then go
            return _text("bye")
        if name == "appeared" and state.appeared:
            return _text("here")
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")

    return _Faulty(
        "faulty",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_subscriptions_listen=ListenHandler(state.bus),
    )


ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


def garbage_over_http(app: ASGIApp) -> ASGIApp:
    """Answer a POSTed `tools/call` of `garbage` with a body that is not JSON-RPC."""

    async def wrapped(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if (
            isinstance(request, dict)
            and request.get("method") == "tools/call"
            and ((request.get("params") or {}).get("name") == "garbage")
        ):
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": GARBAGE})
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # type: ignore[no-any-return]
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(scope, replay, send)

    return wrapped


async def _serve_stdio() -> None:
    state = FaultyState("stdio", wire=os.dup(1))
    server = build_server(state)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def _serve_http(host: str, port: int) -> None:
    server = build_server(FaultyState("http"))
    app = server.streamable_http_app(streamable_http_path="/mcp", host=host)
    await serve_ready(garbage_over_http(app), host, port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="HTTP port; 0 lets the OS choose")
    args = parser.parse_args(argv)
    try:
        if args.transport == "stdio":
            anyio.run(_serve_stdio)
        else:
            anyio.run(_serve_http, args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
