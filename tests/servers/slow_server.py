"""A real MCP server whose calls take as long as the test says, for concurrency, drain and
metadata tests.

``python -m tests.servers.slow_server --transport http --port 0`` prints ``READY <port>`` and
serves MCP at ``/mcp``; ``--transport stdio`` speaks over stdin/stdout.

State is per process, so a test can hold calls made through the gateway and release or
inspect them over a second, direct connection:

- ``hold(tag)`` starts, then waits until ``release(tag)``; answers ``released <tag>``.
- ``release(tag)`` lets that hold (and any later one with the tag) finish.
- ``wait_started(count)`` waits until ``count`` holds have started, then returns the event log.
- ``events()`` returns the log: ``start:<tag>`` and ``end:<tag>`` in the order they happened.
- ``sleep(seconds)`` answers ``slept <seconds>`` after that long.
- ``meta()`` returns the request's ``_meta`` as structured content.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

from tests.servers.serving import serve_ready

Ctx = ServerRequestContext[Any]


def _schema(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


TAG = {"tag": {"type": "string", "description": "Names the held call."}}
TOOLS = [
    types.Tool(
        name="hold",
        description="Start, then wait until release(tag) is called.",
        input_schema=_schema(TAG, ["tag"]),
    ),
    types.Tool(name="release", description="Let hold(tag) finish.", input_schema=_schema(TAG, ["tag"])),
    types.Tool(
        name="wait_started",
        description="Wait until this many holds have started; return the event log.",
        input_schema=_schema({"count": {"type": "integer", "minimum": 1}}, ["count"]),
    ),
    types.Tool(name="events", description="The start/end log of holds.", input_schema=_schema({}, [])),
    types.Tool(
        name="sleep",
        description="Answer after the given number of seconds.",
        input_schema=_schema({"seconds": {"type": "number", "minimum": 0}}, ["seconds"]),
    ),
    types.Tool(name="meta", description="Return the request's _meta.", input_schema=_schema({}, [])),
]


@dataclass
class SlowState:
    released: dict[str, anyio.Event] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    started: int = 0
    changed: anyio.Event = field(default_factory=anyio.Event)

    def release_event(self, tag: str) -> anyio.Event:
        return self.released.setdefault(tag, anyio.Event())

    def record(self, event: str) -> None:
        self.events.append(event)
        self.changed.set()
        self.changed = anyio.Event()


def _text(text: str, structured: dict[str, Any] | None = None) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=structured)


def build_server(state: SlowState) -> Server[Any]:
    async def list_tools(ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS)

    async def call_tool(ctx: Ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        args = params.arguments or {}
        if params.name == "hold":
            tag = str(args["tag"])
            state.started += 1
            state.record(f"start:{tag}")
            await state.release_event(tag).wait()
            state.record(f"end:{tag}")
            return _text(f"released {tag}")
        if params.name == "release":
            state.release_event(str(args["tag"])).set()
            return _text("ok")
        if params.name == "wait_started":
            while state.started < int(args["count"]):
                await state.changed.wait()
            return _text(json.dumps(state.events), {"events": list(state.events)})
        if params.name == "events":
            return _text(json.dumps(state.events), {"events": list(state.events)})
        if params.name == "sleep":
            await anyio.sleep(float(args["seconds"]))
            return _text(f"slept {args['seconds']}")
        if params.name == "meta":
            meta = dict(params.meta or {})
            return _text(json.dumps(meta), {"meta": meta})
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")

    return Server("slow", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def _serve_stdio() -> None:
    server = build_server(SlowState())  # anyio events need the running loop
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


async def _serve_http(host: str, port: int) -> None:
    server = build_server(SlowState())
    await serve_ready(server.streamable_http_app(streamable_http_path="/mcp", host=host), host, port)


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
