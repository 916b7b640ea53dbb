"""The MCP front door: a stable set of meta-tools that every client can use.

`tools/list` never changes (so prompt caches stay valid and every client works); the tools
behind the gateway are reached through `find_tools` and `call_tool`, and `forget_tools` trims
the conversation's working set. Handlers validate and translate; the services do the work.
"""

from __future__ import annotations

import json
import logging
import uuid
import weakref
from typing import Any, Literal

import mcp_types as types
from mcp.server import NotificationOptions
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from pydantic import ValidationError

from .catalog import SearchFilters, SearchHit
from .conversations import MODES, MemoryView, WorkingSetFull
from .forwarder import error_result
from .memory import InvalidConversationError, MemoryStoreError
from .memory.store import check_conversation
from .meta_tools import CALL_TOOL, FIND_TOOLS, FORGET_TOOLS, MAX_FORGET, MAX_QUERY_CHARS, NAMES, meta_tools
from .scoping import ScopeView, request_principal, visible_memory
from .services import GatewayService

logger = logging.getLogger(__name__)
Listing = Literal["stable", "dynamic"]
_FIND_ARGUMENTS = frozenset(
    {"query", "limit", "server", "category", "read_only", "conversation", "mode", "adaptive", "include_held"}
)


class _BadConversation(Exception):
    pass


def tool_card(hit: SearchHit) -> dict[str, Any]:
    tool = hit.tool
    card: dict[str, Any] = {
        "name": tool.exposed_name,
        "title": tool.title,
        "description": tool.description,
        "server": tool.server,
        "input_schema": tool.input_schema,
        "score": round(hit.score, 4),
        "why": hit.why,
    }
    if hit.sub_intent is not None:
        card["sub_intent"] = hit.sub_intent  # index into the result's intent.sub_intents
    return card


class _FrontDoor(Server[Any]):
    """Advertises `tools.listChanged` on session connections when the listing is dynamic. The
    HTTP session manager builds initialization options with no arguments, so this override is
    the one place that covers stdio and HTTP alike."""

    list_changed = False

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: dict[str, dict[str, Any]] | None = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=self.list_changed),
            experimental_capabilities,
            extensions,
        )


def build_mcp_server(
    service: GatewayService,
    *,
    default_limit: int = 5,
    max_limit: int = 50,
    listing: Listing = "stable",
) -> Server[Any]:
    """The front door as a low-level MCP server; transports (HTTP, stdio) are attached by the caller.

    `listing="dynamic"`: for clients with a session, `tools/list` also holds the tools of the
    session's working set (callable directly by name), and `notifications/tools/list_changed`
    goes out whenever that set changes."""
    tools = meta_tools(max_limit, default_limit)
    # For the SDK's check of `Mcp-Param-*` headers on 2026-07-28 calls: without a lookup it runs
    # a whole internal tools/list per tools/call to find the schema. Sessionless requests are
    # listed the meta-tools only (no session, no working set), so these are all it would find.
    input_schemas = {tool.name: tool.input_schema for tool in tools}
    dynamic = listing == "dynamic" and service.memory is not None
    sessions: weakref.WeakValueDictionary[str, ServerSession] = weakref.WeakValueDictionary()

    async def on_list_tools(
        ctx: ServerRequestContext[Any], _params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        if not dynamic:
            return types.ListToolsResult(tools=tools)
        view = ScopeView(service.catalog, request_principal(ctx))
        return types.ListToolsResult(
            tools=tools + await _working_set_tools(service, view, _session_conversation(ctx))
        )

    async def on_call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        arguments = dict(params.arguments or {})
        try:
            conversation = _conversation(ctx, arguments.get("conversation"), issue=params.name == FIND_TOOLS)
        except _BadConversation as exc:
            return error_result(str(exc))
        if dynamic and conversation is not None and _session_conversation(ctx) == conversation:
            sessions[conversation] = ctx.session
        # Who is calling decides what exists for this request (the principal's scope).
        view = ScopeView(service.catalog, request_principal(ctx))
        if params.name == FIND_TOOLS:
            return await _find(service, view, arguments, default_limit, max_limit, conversation)
        if params.name == CALL_TOOL:
            return await _call(service, view, arguments, conversation)
        if params.name == FORGET_TOOLS:
            return await _forget(service, view, arguments, conversation)
        if dynamic:  # a working-set tool called by its own name
            if view.restricted and not view.allows(params.name):
                return view.unknown_tool(params.name)
            return await service.call_tool(params.name, arguments, conversation=_session_conversation(ctx))
        return error_result(f"unknown tool {params.name!r}: this gateway offers {', '.join(NAMES)}")

    async def notify(view: MemoryView) -> None:
        session = sessions.get(view.conversation)
        if session is not None:
            await session.send_tool_list_changed()

    if dynamic and service.memory is not None:
        service.memory.on_change = notify
    server = _FrontDoor(
        "toolgate",
        version="0.1.0",
        instructions=(
            "This gateway fronts many MCP servers. Use find_tools to discover the tools for a task, "
            "then call_tool to run one. Pass the conversation id from find_tools back on later calls."
        ),
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
        get_tool_input_schema=input_schemas.get,
    )
    server.list_changed = dynamic
    return server


def _session_conversation(ctx: ServerRequestContext[Any]) -> str | None:
    """The conversation of the request's own MCP session (None on sessionless HTTP)."""
    try:
        return _conversation(ctx, None, issue=False)
    except _BadConversation:
        return None


async def _working_set_tools(
    service: GatewayService, view: ScopeView, conversation: str | None
) -> list[types.Tool]:
    if conversation is None or service.memory is None:
        return []
    try:
        working_set = await service.memory.get(conversation)
    except MemoryStoreError as exc:  # the listing still works, with the meta-tools only
        logger.warning("conversation memory unavailable: %s", exc)
        return []
    if working_set is None:
        return []
    listed = []
    ordered = sorted(working_set.tools, key=lambda n: (working_set.tools[n].added_turn, n))
    for name in view.names(ordered):
        tool = service.catalog.get(name)
        if tool is not None:
            listed.append(
                types.Tool(
                    name=tool.exposed_name,
                    title=tool.title,
                    description=tool.description,
                    input_schema=tool.input_schema,
                    output_schema=tool.output_schema,
                    annotations=_annotations(tool.annotations),
                )
            )
    return listed


def _annotations(stored: dict[str, Any] | None) -> types.ToolAnnotations | None:
    """An upstream's annotations as stored; ones that no longer validate are left out."""
    if not stored:
        return None
    try:
        return types.ToolAnnotations.model_validate(stored)
    except ValidationError:
        return None


def _conversation(ctx: ServerRequestContext[Any], given: object, *, issue: bool) -> str | None:
    """The conversation a request belongs to: the caller's id when given; else its MCP session
    (HTTP on protocol 2025-11-25, or the stdio connection); else, on sessionless HTTP, a new
    id when `issue` (find_tools hands it out) and None otherwise."""
    if given is not None:
        if not isinstance(given, str):
            raise _BadConversation("'conversation' must be a string")
        try:
            return check_conversation(given)
        except InvalidConversationError as exc:
            raise _BadConversation(f"'conversation': {exc}") from None
    headers = getattr(ctx.request, "headers", None)
    if headers is None:
        return f"stdio-{id(ctx.session):x}"
    session_id = headers.get("mcp-session-id")
    if session_id:
        return f"session-{session_id}"[:128]
    return f"conv-{uuid.uuid4().hex}" if issue else None


def _structured(payload: dict[str, Any]) -> types.CallToolResult:
    # Compact separators: the text repeats structuredContent, so its size is paid twice on
    # every find_tools (encoding, the wire, the client's parse).
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=payload,
    )


def _find_error(arguments: dict[str, Any], max_limit: int) -> str | None:
    query = arguments.get("query")
    limit = arguments.get("limit")
    unknown = set(arguments) - _FIND_ARGUMENTS
    if unknown:
        return f"find_tools takes only {sorted(_FIND_ARGUMENTS)} (got {sorted(unknown)})"
    if not isinstance(query, str) or not query.strip():
        return "find_tools needs 'query': a few words describing the task"
    if len(query) > MAX_QUERY_CHARS:
        return f"find_tools 'query' is too long (at most {MAX_QUERY_CHARS} characters)"
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= max_limit
    ):
        return f"find_tools 'limit' must be an integer from 1 to {max_limit}"
    for key in ("server", "category"):
        if arguments.get(key) is not None and not isinstance(arguments[key], str):
            return f"find_tools '{key}' must be a string"
    if arguments.get("read_only") is not None and not isinstance(arguments["read_only"], bool):
        return "find_tools 'read_only' must be true or false"
    for key in ("adaptive", "include_held"):
        if arguments.get(key) is not None and not isinstance(arguments[key], bool):
            return f"find_tools '{key}' must be true or false"
    if arguments.get("mode") is not None and arguments["mode"] not in MODES:
        return f"find_tools 'mode' must be one of {list(MODES)}"
    return None


async def _find(
    service: GatewayService,
    view: ScopeView,
    arguments: dict[str, Any],
    default_limit: int,
    max_limit: int,
    conversation: str | None,
) -> types.CallToolResult:
    problem = _find_error(arguments, max_limit)
    if problem is not None:
        return error_result(problem)
    filters = SearchFilters(
        server=arguments.get("server"),
        category=arguments.get("category"),
        read_only=arguments.get("read_only"),
        scope=view.scope,
    )
    try:
        outcome = await service.find_tools(
            arguments["query"],
            arguments.get("limit", default_limit),
            filters,
            conversation=conversation,
            mode=arguments.get("mode"),
            adaptive=arguments.get("adaptive") is True,
            include_held=arguments.get("include_held") is True,
        )
    except WorkingSetFull as exc:
        return error_result(str(exc))
    payload: dict[str, Any] = {
        "tools": [tool_card(hit) for hit in outcome.hits],
        "total_tools": await view.total_tools(),
        "conversation": conversation,
    }
    if outcome.intent is not None:
        payload["intent"] = view.intent(outcome.intent.to_dict())
    if outcome.memory is not None:
        payload["memory"] = visible_memory(view, outcome.memory.as_dict())
    elif outcome.memory_error is not None:
        payload["memory_error"] = outcome.memory_error
    return _structured(payload)


async def _call(
    service: GatewayService, view: ScopeView, arguments: dict[str, Any], conversation: str | None
) -> types.CallToolResult:
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
    if view.restricted and not view.allows(name):
        return view.unknown_tool(name)  # out of scope: answered exactly like an unknown tool
    return await service.call_tool(name, inner, conversation=conversation)


async def _forget(
    service: GatewayService, view: ScopeView, arguments: dict[str, Any], conversation: str | None
) -> types.CallToolResult:
    names = arguments.get("names")
    unknown = set(arguments) - {"names", "conversation"}
    if unknown:
        return error_result(f"forget_tools takes only 'names' and 'conversation' (got {sorted(unknown)})")
    if (
        not isinstance(names, list)
        or not 1 <= len(names) <= MAX_FORGET
        or not all(isinstance(n, str) and n for n in names)
    ):
        return error_result(f"forget_tools needs 'names': 1 to {MAX_FORGET} tool names")
    if conversation is None:
        return error_result("forget_tools needs 'conversation': the id find_tools returned")
    try:
        # Out-of-scope names are dropped, so they are "not forgotten" like unknown ones.
        memory = await service.forget_tools(conversation, view.forgettable(names))
    except MemoryStoreError as exc:
        return error_result(f"the working set is unavailable: {exc}")
    return _structured(
        {
            "conversation": conversation,
            "forgotten": view.forgettable(memory.removed),
            "memory": visible_memory(view, memory.as_dict()),
        }
    )
