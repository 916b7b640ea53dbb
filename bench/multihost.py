"""One process serving N virtual MCP servers over streamable HTTP, for benchmarks and scale tests.

    python -m bench.multihost --servers 2000 [--port 0] [--data PATH] [--stateless]
                              [--change-fraction F --seed S]

Virtual server i answers at ``http://127.0.0.1:<port>/s/<i>/mcp``. Its tools are the i-th
group of ``tools.jsonl`` (lines grouped by ``server`` in file order); past the last group
the groups are reused and the server name gets a ``~<round>`` suffix. Every server also
has an ``echo(text)`` tool. A ``tools/call`` answers with text echoing the server, tool and
arguments as JSON. ``READY <port>`` is printed once the port accepts connections.

Nothing is built per server at start-up: a single low-level ``Server`` and a single
session manager serve every path, and the handlers read which virtual server is meant
from the path parameter of the HTTP request the SDK hands them (``ctx.request``). Tool
models are built the first time a server is listed.

Admin endpoints (plain JSON over HTTP):

- ``POST /admin/mutate?fraction=0.01[&seed=S]``: rewrite the descriptions of that fraction
  of all data tools (chosen at random with the seed); answers with the changed tools.
  2026-07-28 clients with an open ``subscriptions/listen`` stream on an affected server
  get ``notifications/tools/list_changed``.
- ``POST /admin/reset``: drop every mutation.
- ``GET /admin/info``: server count, tool count, mutations applied.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.context import CallNext, HandlerResult
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bench.common import shared_data
from tests.servers.serving import serve_ready

DEFAULT_DATA = shared_data() / "toolsdk" / "tools.jsonl"
MAX_SYNTHESIZED_PARAMS = 8
JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object"})

# A bullet line that names a parameter, as in "- url (string, required): ..." or "* `path`: ...".
_PARAM_LINE = re.compile(
    r"^\s*[-*\u2022]\s*`?([A-Za-z_][A-Za-z0-9_]{0,39})`?\s*(?:\(([^)]{0,60})\))?\s*:", re.M
)

ECHO_TOOL = types.Tool(
    name="echo",
    description="Echo the given text back unchanged.",
    input_schema={
        "type": "object",
        "properties": {"text": {"type": "string", "description": "Text to echo."}},
        "required": ["text"],
        "additionalProperties": False,
    },
)


def synthesize_schema(tool_name: str, description: str) -> dict[str, Any]:
    """A small, valid, deterministic input schema for a tool whose data has none.

    Always an optional free-text ``query``; plus the parameters the description lists
    as bullets, typed when the bullet names a JSON type and required when it says so.
    """
    properties: dict[str, Any] = {
        "query": {"type": "string", "description": f"Free-text input for {tool_name}."},
    }
    required: list[str] = []
    for name, note in _PARAM_LINE.findall(description):
        if name in properties:
            continue
        if len(properties) > MAX_SYNTHESIZED_PARAMS:
            break
        words = re.findall(r"[a-z]+", note.lower())
        json_type = next((word for word in words if word in JSON_TYPES), "string")
        prop: dict[str, Any] = {"type": json_type}
        if json_type == "array":
            prop["items"] = {}
        properties[name] = prop
        if "required" in words:
            required.append(name)
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return schema


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class ServerGroup:
    """The tools of one ``server`` value in the data file."""

    name: str
    description: str
    tools: tuple[ToolSpec, ...]


def load_groups(path: Path) -> list[ServerGroup]:
    """Group the data lines by ``server``, in order of first appearance."""
    records: dict[str, list[dict[str, Any]]] = {}
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                records.setdefault(str(record["server"]), []).append(record)
    groups: list[ServerGroup] = []
    for server, rows in records.items():
        taken = {ECHO_TOOL.name}
        specs: list[ToolSpec] = []
        for row in rows:
            # Names must be unique within a server; the echo tool owns "echo".
            base = str(row["name"])
            name, n = base, 2
            while name in taken:
                name, n = f"{base}_{n}", n + 1
            taken.add(name)
            description = str(row.get("description") or "")
            schema = row.get("input_schema") or synthesize_schema(name, description)
            specs.append(ToolSpec(name=name, description=description, input_schema=schema))
        server_description = str(rows[0].get("server_description") or "")
        groups.append(ServerGroup(name=server, description=server_description, tools=tuple(specs)))
    return groups


@dataclass
class Catalog:
    """The N virtual servers, their tools built lazily, plus description mutations."""

    groups: list[ServerGroup]
    count: int
    # (server index, tool name) -> revision number of its description.
    revisions: dict[tuple[int, str], int] = field(default_factory=dict)
    _tools: dict[int, list[types.Tool]] = field(default_factory=dict)
    _buses: dict[int, InMemorySubscriptionBus] = field(default_factory=dict)
    _listeners: dict[int, ListenHandler] = field(default_factory=dict)
    mutations: int = 0

    def group(self, index: int) -> ServerGroup:
        return self.groups[index % len(self.groups)]

    def server_name(self, index: int) -> str:
        round_ = index // len(self.groups)
        name = self.group(index).name
        return name if round_ == 0 else f"{name}~{round_}"

    def tool_count(self) -> int:
        # Data tools only; every server's echo tool is extra.
        full_rounds, rest = divmod(self.count, len(self.groups))
        per_round = sum(len(group.tools) for group in self.groups)
        return full_rounds * per_round + sum(len(group.tools) for group in self.groups[:rest])

    def tools(self, index: int) -> list[types.Tool]:
        cached = self._tools.get(index)
        if cached is None:
            cached = [ECHO_TOOL]
            for spec in self.group(index).tools:
                revision = self.revisions.get((index, spec.name), 0)
                description = spec.description
                if revision:
                    description = f"{description} [revision {revision}: description updated upstream]"
                cached.append(
                    types.Tool(name=spec.name, description=description, input_schema=spec.input_schema)
                )
            self._tools[index] = cached
        return cached

    def listener(self, index: int) -> ListenHandler:
        # Per-server buses so a change on one server only reaches that server's listeners.
        handler = self._listeners.get(index)
        if handler is None:
            bus = self._buses[index] = InMemorySubscriptionBus()
            handler = self._listeners[index] = ListenHandler(bus)
        return handler

    async def mutate(self, fraction: float, seed: int) -> list[tuple[int, str]]:
        total = self.tool_count()
        k = min(total, max(1, round(fraction * total))) if fraction > 0 else 0
        chosen = sorted(random.Random(seed).sample(range(total), k))
        changed = [self._locate(position) for position in chosen]
        for index, name in changed:
            self.revisions[index, name] = self.revisions.get((index, name), 0) + 1
            self._tools.pop(index, None)
        self.mutations += 1
        for index in sorted({index for index, _ in changed}):
            bus = self._buses.get(index)
            if bus is not None:
                await bus.publish(ToolsListChanged())
        return changed

    def reset(self) -> None:
        self.revisions.clear()
        self._tools.clear()

    def _locate(self, position: int) -> tuple[int, str]:
        """Map a global tool position (server-major order) to (server index, tool name)."""
        per_round = sum(len(group.tools) for group in self.groups)
        round_, offset = divmod(position, per_round)
        for group_index, group in enumerate(self.groups):
            if offset < len(group.tools):
                return round_ * len(self.groups) + group_index, group.tools[offset].name
            offset -= len(group.tools)
        raise IndexError(position)  # unreachable: position < tool_count()


def _server_index(ctx: ServerRequestContext[Any, Any]) -> int:
    """Which virtual server a request addresses, from the route's path parameter."""
    request = ctx.request
    if not isinstance(request, Request) or "index" not in request.path_params:
        raise MCPError(types.INVALID_REQUEST, "multihost serves MCP only at /s/<i>/mcp")
    return int(request.path_params["index"])


def build_mcp_server(catalog: Catalog) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=catalog.tools(_server_index(ctx)))

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        index = _server_index(ctx)
        if not any(tool.name == params.name for tool in catalog.tools(index)):
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
        args = params.arguments or {}
        if params.name == ECHO_TOOL.name:
            text = str(args.get("text", ""))
        else:
            text = json.dumps({"server": catalog.server_name(index), "tool": params.name, "arguments": args})
        return types.CallToolResult(content=[types.TextContent(text=text)])

    async def listen(
        ctx: ServerRequestContext[Any], params: types.SubscriptionsListenRequestParams
    ) -> types.SubscriptionsListenResult:
        return await catalog.listener(_server_index(ctx))(ctx, params)

    async def name_per_server(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        """Report each virtual server's own name in serverInfo (initialize, and the 2026 stamp)."""
        result = await call_next(ctx)
        if not isinstance(result, dict):
            return result
        try:
            name = catalog.server_name(_server_index(ctx))
        except MCPError:
            return result
        if isinstance(result.get("serverInfo"), dict):
            result = {**result, "serverInfo": {**result["serverInfo"], "name": name}}
        meta = result.get("_meta")
        if isinstance(meta, dict) and isinstance(meta.get(types.SERVER_INFO_META_KEY), dict):
            stamp = {**meta[types.SERVER_INFO_META_KEY], "name": name}
            result = {**result, "_meta": {**meta, types.SERVER_INFO_META_KEY: stamp}}
        return result

    server: Server[Any] = Server(
        "multihost",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_subscriptions_listen=listen,
        # Skips the SDK's per-call tools/list walk that validates Mcp-Param-* headers:
        # these schemas declare no header-mapped parameters, so there is nothing to check.
        get_tool_input_schema=lambda _name: None,
    )
    server.middleware.append(name_per_server)
    return server


class VirtualServerRoutes:
    """ASGI endpoint for ``/s/{index}/mcp``: rejects unknown indexes, hands the rest to the SDK."""

    def __init__(self, manager: StreamableHTTPSessionManager, count: int) -> None:
        self._manager = manager
        self._count = count

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        index = scope.get("path_params", {}).get("index")
        if not isinstance(index, int) or not 0 <= index < self._count:
            await JSONResponse({"error": f"no virtual server {index}"}, status_code=404)(scope, receive, send)
            return
        await self._manager.handle_request(scope, receive, send)


def build_app(catalog: Catalog, *, stateless: bool, host: str) -> Starlette:
    server = build_mcp_server(catalog)
    manager = StreamableHTTPSessionManager(
        app=server,
        stateless=stateless,
        # Same DNS-rebinding defaults the SDK applies to a localhost app.
        security_settings=TransportSecuritySettings(
            enable_dns_rebinding_protection=host in ("127.0.0.1", "localhost"),
            allowed_hosts=["127.0.0.1:*", "localhost:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*"],
        ),
        max_sessions=None,
    )

    async def mutate(request: Request) -> Response:
        try:
            fraction = float(request.query_params.get("fraction", "0.01"))
            seed = int(request.query_params.get("seed", str(catalog.mutations + 1)))
        except ValueError:
            return JSONResponse({"error": "fraction must be a number and seed an integer"}, status_code=400)
        if not 0 <= fraction <= 1:
            return JSONResponse({"error": "fraction must be within [0, 1]"}, status_code=400)
        changed = await catalog.mutate(fraction, seed)
        return JSONResponse(
            {
                "seed": seed,
                "count": len(changed),
                "changed": [
                    {"server": index, "path": f"/s/{index}/mcp", "tool": name} for index, name in changed
                ],
            }
        )

    async def reset(_request: Request) -> Response:
        catalog.reset()
        return JSONResponse({"ok": True})

    async def info(_request: Request) -> Response:
        return JSONResponse(
            {
                "servers": catalog.count,
                "groups": len(catalog.groups),
                "data_tools": catalog.tool_count(),
                "mutated_tools": len(catalog.revisions),
                "stateless": stateless,
            }
        )

    return Starlette(
        routes=[
            Route("/s/{index:int}/mcp", endpoint=VirtualServerRoutes(manager, catalog.count)),
            Route("/admin/mutate", endpoint=mutate, methods=["POST"]),
            Route("/admin/reset", endpoint=reset, methods=["POST"]),
            Route("/admin/info", endpoint=info, methods=["GET"]),
        ],
        lifespan=lambda _app: manager.run(),
    )


async def serve(app: Starlette, host: str, port: int) -> None:
    await serve_ready(app, host, port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, required=True, help="number of virtual servers N")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 lets the OS choose")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tools.jsonl to take tools from")
    parser.add_argument("--stateless", action="store_true", help="no sessions for 2025-era clients either")
    parser.add_argument("--change-fraction", type=float, default=0.0, help="mutate this fraction at start")
    parser.add_argument("--seed", type=int, default=1, help="seed for --change-fraction")
    args = parser.parse_args(argv)
    if args.servers < 1:
        parser.error("--servers must be at least 1")

    catalog = Catalog(groups=load_groups(args.data), count=args.servers)
    if not catalog.groups:
        parser.error(f"no tools in {args.data}")
    if args.change_fraction:
        anyio.run(catalog.mutate, args.change_fraction, args.seed)
    app = build_app(catalog, stateless=args.stateless, host=args.host)
    try:
        anyio.run(serve, app, args.host, args.port)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
