"""Reads and writes of the registry. Each method is one transaction: nothing half-written."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload

from .errors import DuplicateError, InvalidSpecError, NotFoundError
from .hashing import definition_hash
from .models import Server, ServerStatus, Tool, ToolUsage, utcnow
from .naming import exposed_name
from .specs import ServerSpec, UpstreamTool

_SHIELD_S = 60.0
_SPEC_FIELDS = (
    "name",
    "transport",
    "description",
    "category",
    "command",
    "args",
    "env",
    "cwd",
    "url",
    "headers",
    "enabled",
)


def spec_of(server: Server) -> ServerSpec:
    """The validated connection spec of a stored server."""
    return ServerSpec.model_validate({name: getattr(server, name) for name in _SPEC_FIELDS})


@dataclass(frozen=True, slots=True)
class ToolDiff:
    """What one sync changed in a server's tool rows."""

    created: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0


@dataclass(frozen=True, slots=True)
class ToolPage:
    tools: list[Tool]
    total: int


@dataclass(frozen=True, slots=True)
class ImportResult:
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    changed_ids: list[int]  # servers to (re)connect and sync


class Registry:
    """The registry's repository: servers and tools, over one async session factory."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        # SQLite takes one writer at a time. A transaction that reads and then writes (a sync)
        # fails at once with SQLITE_BUSY when another writer committed in between, whatever the
        # busy timeout; queueing our transactions in process avoids that. PostgreSQL needs none.
        dialect = sessions.kw["bind"].dialect.name if sessions.kw.get("bind") is not None else ""
        self._serial: anyio.Lock | None = anyio.Lock() if dialect == "sqlite" else None

    def session(self) -> AsyncSession:
        """A raw session, for health checks."""
        return self._sessions()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose database calls are not cancelled midway. Cancelling a driver call
        makes SQLAlchemy abandon the connection with a close that never finishes (seen with
        aiosqlite), which then hangs shutdown; our calls are short, so let them complete. The
        deadline keeps a dead database from holding a shutdown forever."""
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _SHIELD_S):
            if self._serial is None:
                async with self._sessions() as session:
                    yield session
            else:
                async with self._serial, self._sessions() as session:
                    yield session

    # -- servers -------------------------------------------------------------------------------

    async def create_server(self, spec: ServerSpec) -> Server:
        async with self._transaction() as session:
            server = Server(**spec.model_dump())
            session.add(server)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise DuplicateError(f"a server named {spec.name!r} already exists") from None
            return server

    async def get_server(self, server_id: int) -> Server:
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:
                raise NotFoundError(f"no server with id {server_id}")
            return server

    async def find_server(self, name: str) -> Server | None:
        async with self._transaction() as session:
            result = await session.scalars(select(Server).where(Server.name == name))
            return result.first()

    async def list_servers(self) -> list[Server]:
        async with self._transaction() as session:
            return list(await session.scalars(select(Server).order_by(Server.id)))

    async def tool_counts(self) -> dict[int, int]:
        async with self._transaction() as session:
            rows = await session.execute(select(Tool.server_id, func.count()).group_by(Tool.server_id))
            return {server_id: count for server_id, count in rows.all()}

    async def update_server(self, server_id: int, changes: dict[str, Any]) -> tuple[Server, bool]:
        """Apply `changes` (spec fields) after validating the merged spec. Returns the server and
        whether its connection details changed (the caller then reconnects and re-syncs)."""
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:
                raise NotFoundError(f"no server with id {server_id}")
            before = spec_of(server)
            merged = before.model_dump() | changes
            try:
                after = ServerSpec.model_validate(merged)
            except ValidationError as exc:
                raise InvalidSpecError(str(exc)) from None
            if after.name != before.name:
                raise InvalidSpecError(
                    "a server cannot be renamed: its name prefixes every exposed tool name"
                )
            for name in _SPEC_FIELDS:
                setattr(server, name, getattr(after, name))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise DuplicateError(f"a server named {after.name!r} already exists") from None
            return server, after.connection_key() != before.connection_key()

    async def delete_server(self, server_id: int) -> Server:
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:
                raise NotFoundError(f"no server with id {server_id}")
            await session.delete(server)
            await session.commit()
            return server

    async def record_sync(self, server_id: int, *, error: str | None, at: datetime | None = None) -> None:
        """Store the outcome of a sync attempt on the server row."""
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:
                return  # deleted while syncing: nothing to record
            server.last_sync_at = at or utcnow()
            server.last_error = error
            server.status = (ServerStatus.ERROR if error else ServerStatus.OK).value
            await session.commit()

    # -- tools ---------------------------------------------------------------------------------

    async def list_tools(
        self,
        *,
        server_id: int | None = None,
        enabled: bool | None = None,
        query: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> ToolPage:
        conditions: list[Any] = []
        if server_id is not None:
            conditions.append(Tool.server_id == server_id)
        if enabled is not None:
            conditions.append(Tool.enabled == enabled)
        if query:
            pattern = f"%{query.lower()}%"
            conditions.append(
                or_(func.lower(Tool.exposed_name).like(pattern), func.lower(Tool.description).like(pattern))
            )
        async with self._transaction() as session:
            total = await session.scalar(select(func.count()).select_from(Tool).where(*conditions))
            rows = await session.scalars(
                select(Tool)
                .where(*conditions)
                .options(selectinload(Tool.server))
                .order_by(Tool.id)
                .limit(limit)
                .offset(offset)
            )
            return ToolPage(tools=list(rows), total=int(total or 0))

    async def get_tool(self, tool_id: int) -> Tool:
        async with self._transaction() as session:
            tool = await session.get(Tool, tool_id, options=[selectinload(Tool.server)])
            if tool is None:
                raise NotFoundError(f"no tool with id {tool_id}")
            return tool

    async def set_tool_enabled(self, tool_id: int, enabled: bool) -> Tool:
        async with self._transaction() as session:
            tool = await session.get(Tool, tool_id, options=[selectinload(Tool.server)])
            if tool is None:
                raise NotFoundError(f"no tool with id {tool_id}")
            tool.enabled = enabled
            await session.commit()
            return tool

    async def all_tools(self) -> list[Tool]:
        """Every tool, enabled or not, with its server loaded."""
        async with self._transaction() as session:
            rows = await session.scalars(select(Tool).options(selectinload(Tool.server)).order_by(Tool.id))
            return list(rows)

    async def servable_tools(self) -> list[Tool]:
        """Every enabled tool of every enabled server, with its server loaded."""
        async with self._transaction() as session:
            rows = await session.scalars(
                select(Tool)
                .join(Server)
                .where(Tool.enabled.is_(True), Server.enabled.is_(True))
                .options(selectinload(Tool.server))
                .order_by(Tool.id)
            )
            return list(rows)

    async def apply_tool_list(self, server_id: int, listed: Sequence[UpstreamTool]) -> ToolDiff:
        """Make the server's tool rows match what it listed: create, update changed definitions
        (by hash), delete the ones gone. One transaction; also marks the sync as successful."""
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:
                raise NotFoundError(f"no server with id {server_id}")
            existing = {
                tool.name: tool
                for tool in await session.scalars(select(Tool).where(Tool.server_id == server_id))
            }
            created = updated = unchanged = 0
            seen: set[str] = set()
            for item in listed:
                if item.name in seen:
                    continue  # a server listing one name twice: the first definition wins
                seen.add(item.name)
                digest = definition_hash(
                    name=item.name,
                    title=item.title,
                    description=item.description,
                    input_schema=item.input_schema,
                    output_schema=item.output_schema,
                    annotations=item.annotations,
                )
                row = existing.get(item.name)
                if row is None:
                    session.add(
                        Tool(
                            server_id=server_id,
                            name=item.name,
                            exposed_name=exposed_name(server.name, item.name),
                            title=item.title,
                            description=item.description,
                            input_schema=item.input_schema,
                            output_schema=item.output_schema,
                            annotations=item.annotations,
                            definition_hash=digest,
                        )
                    )
                    created += 1
                elif row.definition_hash != digest:
                    row.title = item.title
                    row.description = item.description
                    row.input_schema = item.input_schema
                    row.output_schema = item.output_schema
                    row.annotations = item.annotations
                    row.definition_hash = digest
                    updated += 1
                else:
                    unchanged += 1
            gone = [row for name, row in existing.items() if name not in seen]
            for row in gone:
                await session.delete(row)
            server.last_sync_at = utcnow()
            server.last_error = None
            server.status = ServerStatus.OK.value
            await session.commit()
            return ToolDiff(created=created, updated=updated, deleted=len(gone), unchanged=unchanged)

    # -- usage evidence ------------------------------------------------------------------------

    async def load_usage(self) -> dict[str, tuple[int, bytes]]:
        """Usage evidence of every tool: exposed name -> (count, float32 sum as bytes)."""
        async with self._transaction() as session:
            rows = await session.execute(
                select(Tool.exposed_name, ToolUsage.count, ToolUsage.total).join(
                    ToolUsage, ToolUsage.tool_id == Tool.id
                )
            )
            return {name: (count, total) for name, count, total in rows.all()}

    async def save_usage(self, exposed_name: str, count: int, total: bytes) -> bool:
        """Store a tool's usage evidence; False when the tool no longer exists."""
        async with self._transaction() as session:
            tool_id = await session.scalar(select(Tool.id).where(Tool.exposed_name == exposed_name))
            if tool_id is None:
                return False
            row = await session.get(ToolUsage, tool_id)
            if row is None:
                session.add(ToolUsage(tool_id=tool_id, count=count, total=total))
            else:
                row.count = count
                row.total = total
            await session.commit()
            return True

    async def import_servers(self, specs: Sequence[ServerSpec]) -> ImportResult:
        """Create or update every spec in one transaction; identical servers are left untouched, so
        importing the same file twice changes nothing."""
        created: list[str] = []
        updated: list[str] = []
        unchanged: list[str] = []
        touched: list[Server] = []
        async with self._transaction() as session:
            by_name = {
                s.name: s
                for s in await session.scalars(
                    select(Server).where(Server.name.in_([spec.name for spec in specs]))
                )
            }
            for spec in specs:
                row = by_name.get(spec.name)
                if row is None:
                    row = Server(**spec.model_dump())
                    session.add(row)
                    created.append(spec.name)
                    touched.append(row)
                elif spec_of(row) != spec:
                    for name in _SPEC_FIELDS:
                        setattr(row, name, getattr(spec, name))
                    updated.append(spec.name)
                    touched.append(row)
                else:
                    unchanged.append(spec.name)
            try:
                await session.commit()
            except IntegrityError as exc:  # a concurrent import took a name first
                await session.rollback()
                raise DuplicateError(f"import conflicted with a concurrent change: {exc.orig}") from None
            return ImportResult(created, updated, unchanged, [row.id for row in touched])
