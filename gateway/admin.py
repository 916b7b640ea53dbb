"""Admin REST API: the registry's servers and tools, import and sync. Routes translate only."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Query, Request, Response, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from registry.errors import DuplicateError, InvalidSpecError, NotFoundError
from registry.importer import ImportFileError, parse_import_document
from registry.review import ReviewConflict
from registry.specs import ServerSpec

from .admin_params import MAX_ROW_ID, Offset, RowId
from .admin_schemas import (
    ExamplesImport,
    ExamplesIn,
    ImportOut,
    ServerOut,
    ServerUpdate,
    SyncOut,
    ToolList,
    ToolOut,
    ToolUpdate,
    UsageOut,
)
from .conversations import ConversationMemory
from .memory import InvalidConversationError, InvalidCursorError, MemoryUnavailableError
from .services import GatewayService

router = APIRouter(prefix="/admin", tags=["admin"])

# Row ids are 32-bit integers on PostgreSQL (and at most 64-bit on SQLite): a larger id is a
# 422 here, not a driver overflow (a 500) deeper down.
ServerId = RowId
ToolId = RowId


def _service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


@router.post("/servers", status_code=status.HTTP_201_CREATED, response_model=ServerOut)
async def create_server(spec: ServerSpec, request: Request) -> ServerOut:
    """Register a server and sync its tools at once (a failed sync leaves status `error`)."""
    service = _service(request)
    server, report = await service.register_server(spec)
    counts, reviews = await service.registry.tool_counts(), await service.registry.review_counts()
    return ServerOut.of(
        server, tool_count=counts.get(server.id, 0), sync=report, review=reviews.get(server.id)
    )


@router.get("/servers", response_model=list[ServerOut])
async def list_servers(request: Request) -> list[ServerOut]:
    registry = _service(request).registry
    counts, reviews = await registry.tool_counts(), await registry.review_counts()
    return [
        ServerOut.of(s, tool_count=counts.get(s.id, 0), review=reviews.get(s.id, (0, 0)))
        for s in await registry.list_servers()
    ]


@router.get("/servers/{server_id}", response_model=ServerOut)
async def get_server(server_id: ServerId, request: Request) -> ServerOut:
    registry = _service(request).registry
    server = await registry.get_server(server_id)
    counts, reviews = await registry.tool_counts(), await registry.review_counts()
    return ServerOut.of(server, tool_count=counts.get(server_id, 0), review=reviews.get(server_id, (0, 0)))


@router.patch("/servers/{server_id}", response_model=ServerOut)
async def update_server(server_id: ServerId, update: ServerUpdate, request: Request) -> ServerOut:
    """Change fields, enable or disable. Changed connection details reconnect and re-sync."""
    service = _service(request)
    server, report = await service.update_server(server_id, update.model_dump(exclude_unset=True))
    counts, reviews = await service.registry.tool_counts(), await service.registry.review_counts()
    return ServerOut.of(
        server, tool_count=counts.get(server_id, 0), sync=report, review=reviews.get(server_id, (0, 0))
    )


@router.delete("/servers/{server_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_server(server_id: ServerId, request: Request) -> Response:
    await _service(request).delete_server(server_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/servers/{server_id}/sync", response_model=SyncOut)
async def sync_server(server_id: ServerId, request: Request) -> SyncOut:
    service = _service(request)
    await service.registry.get_server(server_id)  # 404 before any work
    return SyncOut.of(await service.sync_server(server_id))


@router.post("/sync", response_model=list[SyncOut])
async def sync_all(request: Request) -> list[SyncOut]:
    return [SyncOut.of(r) for r in await _service(request).sync_all()]


@router.post("/import", response_model=ImportOut)
async def import_servers(
    request: Request,
    document: Annotated[
        dict[str, Any], Body(description='A Claude-Desktop-style {"mcpServers": {...}} object.')
    ],
) -> ImportOut:
    """Create or update servers from an `mcpServers` document; idempotent. A document with any
    bad entry is rejected whole (422, every problem listed) and nothing is written."""
    specs = parse_import_document(document)
    outcome = await _service(request).import_servers(specs)
    return ImportOut(
        created=outcome.result.created,
        updated=outcome.result.updated,
        unchanged=outcome.result.unchanged,
        syncs=[SyncOut.of(r) for r in outcome.reports],
    )


@router.get("/tools", response_model=ToolList)
async def list_tools(
    request: Request,
    server_id: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
    server: Annotated[str | None, Query(description="Server name")] = None,
    enabled: bool | None = None,
    q: Annotated[str | None, Query(description="Substring of the exposed name or description")] = None,
    flagged: Annotated[bool | None, Query(description="With poisoning findings (live or pending)")] = None,
    pending: Annotated[bool | None, Query(description="With a changed definition awaiting approval")] = None,
    quarantined: Annotated[bool | None, Query(description="Out of service until approved")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Offset = 0,
) -> ToolList:
    registry = _service(request).registry
    if server is not None:
        found = await registry.find_server(server)
        if found is None:
            raise NotFoundError(f"no server named {server!r}")
        server_id = found.id
    page = await registry.list_tools(
        server_id=server_id,
        enabled=enabled,
        query=q,
        limit=limit,
        offset=offset,
        flagged=flagged,
        pending=pending,
        quarantined=quarantined,
    )
    return ToolList(total=page.total, limit=limit, offset=offset, tools=[ToolOut.of(t) for t in page.tools])


@router.get("/tools/{tool_id}", response_model=ToolOut)
async def get_tool(tool_id: ToolId, request: Request) -> ToolOut:
    return ToolOut.of(await _service(request).registry.get_tool(tool_id))


@router.patch("/tools/{tool_id}", response_model=ToolOut)
async def update_tool(tool_id: ToolId, update: ToolUpdate, request: Request) -> ToolOut:
    return ToolOut.of(await _service(request).set_tool_enabled(tool_id, update.enabled))


@router.post("/tools/{tool_id}/approve", response_model=ToolOut)
async def approve_tool(tool_id: ToolId, request: Request) -> ToolOut:
    """Approve the tool's pending definition (it goes live and is re-indexed), or its flagged
    live one; lifts the quarantine. `enabled` stays as the admin set it. 409: nothing to approve."""
    return ToolOut.of(await _service(request).approve_tool(tool_id))


@router.post("/tools/{tool_id}/reject", response_model=ToolOut)
async def reject_tool(tool_id: ToolId, request: Request) -> ToolOut:
    """Drop the pending definition and keep serving the approved one; that upstream definition
    is not held again. 409: nothing pending."""
    return ToolOut.of(await _service(request).reject_tool(tool_id))


@router.get("/index")
async def index_stats(request: Request) -> dict[str, Any]:
    """The retrieval index: tools held, waiting to be embedded, embedded since start."""
    return _service(request).catalog.stats()


@router.get("/tools/{tool_id}/usage", response_model=UsageOut)
async def tool_usage(tool_id: ToolId, request: Request) -> UsageOut:
    """How many uses the tool's usage vector holds (examples and live calls)."""
    service = _service(request)
    tool = await service.registry.get_tool(tool_id)
    return UsageOut(tool=tool.exposed_name, usage_count=service.usage_count(tool.exposed_name))


@router.post("/tools/{tool_id}/examples", response_model=UsageOut)
async def add_tool_examples(tool_id: ToolId, body: ExamplesIn, request: Request) -> UsageOut:
    """Record example queries for a tool: each moves its usage vector like a live use."""
    service = _service(request)
    tool = await service.registry.get_tool(tool_id)
    recorded = await service.add_examples({tool.exposed_name: body.queries})
    name = tool.exposed_name
    return UsageOut(tool=name, recorded=recorded[name], usage_count=service.usage_count(name))


@router.post("/examples", response_model=list[UsageOut])
async def import_examples(body: ExamplesImport, request: Request) -> list[UsageOut]:
    """Example queries for many tools at once; an unknown tool name rejects the whole body."""
    service = _service(request)
    merged: dict[str, list[str]] = {}
    for item in body.examples:
        merged.setdefault(item.tool, []).extend(item.queries)
    recorded = await service.add_examples(merged)
    return [UsageOut(tool=n, recorded=k, usage_count=service.usage_count(n)) for n, k in recorded.items()]


@router.get("/conversations")
async def list_conversations(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Conversations with a working set, least recently active first (paged by `cursor`)."""
    page = await _memory(request).store.list(limit, cursor)
    return {
        "conversations": [dataclasses.asdict(item) for item in page.items],
        "next_cursor": page.next_cursor,
    }


@router.get("/conversations/{conversation:path}")
async def get_conversation(conversation: str, request: Request) -> dict[str, Any]:
    """A conversation's working set: each tool with when it was added, returned and called."""
    memory = _memory(request)
    working_set = await memory.get(conversation)
    if working_set is None:
        raise NotFoundError(f"no working set for conversation {conversation!r}")
    return {
        "conversation": conversation,
        "mode": memory.mode_of(working_set),
        "turn": working_set.turn,
        "count": len(working_set),
        "capacity": memory.rules.capacity,
        "updated_at": working_set.updated_at,
        "tools": {name: dataclasses.asdict(entry) for name, entry in working_set.tools.items()},
        "history": [dataclasses.asdict(record) for record in working_set.history],
    }


@router.delete("/conversations/{conversation:path}", status_code=status.HTTP_204_NO_CONTENT)
async def clear_conversation(conversation: str, request: Request) -> Response:
    if not await _memory(request).clear(conversation):
        raise NotFoundError(f"no working set for conversation {conversation!r}")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _memory(request: Request) -> ConversationMemory:
    memory = _service(request).memory
    if memory is None:
        raise NotFoundError("conversation memory is off")
    return memory


def _error(status_code: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status_code, content={"detail": message, **extra})


def install_error_handlers(app: FastAPI) -> None:
    """Registry errors become clear JSON with the right status."""

    async def not_found(_request: Request, exc: Exception) -> JSONResponse:
        return _error(404, str(exc))

    async def duplicate(_request: Request, exc: Exception) -> JSONResponse:
        return _error(409, str(exc))

    async def invalid_spec(_request: Request, exc: Exception) -> JSONResponse:
        return _error(422, str(exc))

    async def bad_import(_request: Request, exc: Exception) -> JSONResponse:
        problems = exc.problems if isinstance(exc, ImportFileError) else [str(exc)]
        return _error(422, "invalid import document; nothing was imported", problems=problems)

    async def memory_unavailable(_request: Request, exc: Exception) -> JSONResponse:
        return _error(503, str(exc))

    async def bad_memory_input(_request: Request, exc: Exception) -> JSONResponse:
        return _error(422, str(exc))

    async def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
        # Bodies carry upstream credentials: name the field and the problem, never echo input.
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        detail = [{k: v for k, v in error.items() if k not in ("input", "ctx")} for error in errors]
        return JSONResponse(status_code=422, content={"detail": jsonable_encoder(detail)})

    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(MemoryUnavailableError, memory_unavailable)
    app.add_exception_handler(InvalidConversationError, bad_memory_input)
    app.add_exception_handler(InvalidCursorError, bad_memory_input)
    app.add_exception_handler(NotFoundError, not_found)
    app.add_exception_handler(DuplicateError, duplicate)
    app.add_exception_handler(ReviewConflict, duplicate)
    app.add_exception_handler(InvalidSpecError, invalid_spec)
    app.add_exception_handler(ImportFileError, bad_import)
