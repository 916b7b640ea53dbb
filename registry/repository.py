"""Reads and writes of the registry. Each method is one transaction: nothing half-written."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from weakref import WeakKeyDictionary

import anyio
import numpy as np
from pydantic import ValidationError
from sqlalchemy import func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import flag_modified, set_committed_value

from .errors import DuplicateError, InvalidSpecError, NotFoundError
from .listing import Reviewed, ToolDiff, new_row_values, review_rows, tool_diff
from .models import Server, ServerStatus, Tool, ToolUsage, utcnow
from .review import ReviewPolicy, approve, log_review, reject
from .secrets import (
    REDACTED,
    UNREADABLE,
    Cipher,
    CredentialsError,
    NoCipher,
    field_values,
    open_field,
    reseal_field,
    scrub,
    seal_field,
)
from .specs import ServerSpec, UpstreamTool

logger = logging.getLogger(__name__)

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
# Encrypted at rest (registry/secrets.py): the values of env and headers, and the URL, which
# hosted servers often make the secret itself (a password, a token in the path or query).
_SECRET_FIELDS = ("env", "headers", "url")

# Servers handed out whose credentials no configured key decrypts. Kept beside the rows rather
# than on them so that nothing in the row can be mistaken for a usable value.
_unreadable: WeakKeyDictionary[Server, str] = WeakKeyDictionary()


def spec_of(server: Server) -> ServerSpec:
    """The validated connection spec of a server the Registry returned, its credentials
    decrypted. Raises CredentialsError when no configured key decrypts them."""
    problem = _unreadable.get(server)
    if problem is not None:
        raise CredentialsError(f"{server.name} {problem}")
    return ServerSpec.model_validate({name: getattr(server, name) for name in _SPEC_FIELDS})


def _mark_synced(server: Server, at: datetime, error: str | None) -> None:
    """Record a sync outcome on the row without touching `updated_at`: that column means the
    server itself changed, and every replica's registry watcher reloads its catalog when it
    moves. Flagging it keeps its value in the UPDATE, so `onupdate` does not fire."""
    server.last_sync_at = at
    server.last_error = error
    server.status = (ServerStatus.ERROR if error else ServerStatus.OK).value
    flag_modified(server, "updated_at")


def _validation_message(exc: ValidationError) -> str:
    """A validation failure without the offending input, which may hold credentials."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class SealReport:
    """What the start-up pass over stored credentials did."""

    resealed: list[str]  # servers whose values were plaintext or under an older key
    unreadable: list[str]  # servers whose values no configured key decrypts


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

    def __init__(self, sessions: async_sessionmaker[AsyncSession], cipher: Cipher | None = None) -> None:
        """`cipher` encrypts credentials on every write and decrypts them on every read.
        Without one (tools that only list servers) values are written as given and encrypted
        ones cannot be read."""
        self._sessions = sessions
        self._cipher: Cipher = cipher if cipher is not None else NoCipher()
        # SQLite takes one writer at a time. A transaction that reads and then writes (a sync)
        # fails at once with SQLITE_BUSY when another writer committed in between, whatever the
        # busy timeout; queueing our transactions in process avoids that. PostgreSQL needs none.
        dialect = sessions.kw["bind"].dialect.name if sessions.kw.get("bind") is not None else ""
        self._serial: anyio.Lock | None = anyio.Lock() if dialect == "sqlite" else None

    @property
    def write_lock(self) -> anyio.Lock | None:
        """The lock that queues writers on SQLite (None on PostgreSQL), for writers elsewhere."""
        return self._serial

    def session(self) -> AsyncSession:
        """A raw session, for health checks."""
        return self._sessions()

    def transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        """One session shielded like this repository's own (queued behind its writers on
        SQLite), for stores kept beside it (registry/request_log.py)."""
        return self._transaction()

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

    # -- credentials ---------------------------------------------------------------------------

    def _opened(self, server: Server) -> dict[str, Any]:
        """The decrypted credential columns of a row (the row is left as stored); raises
        CredentialsError when one cannot be decrypted."""
        return {field: open_field(self._cipher, getattr(server, field)) for field in _SECRET_FIELDS}

    def _reveal(self, server: Server) -> Server:
        """Put the decrypted credentials on a loaded row, without marking it changed: the
        plaintext lives in memory only and is never flushed (writes always seal)."""
        try:
            opened = self._opened(server)
        except CredentialsError as exc:
            _unreadable[server] = str(exc)
            return server
        for field, value in opened.items():
            set_committed_value(server, field, value)
        return server

    def _reveal_tools(self, tools: Sequence[Tool]) -> list[Tool]:
        seen: set[int] = set()
        for tool in tools:
            if id(tool.server) not in seen:
                seen.add(id(tool.server))
                self._reveal(tool.server)
        return list(tools)

    def _stored_spec(self, server: Server) -> ServerSpec | None:
        """The decrypted spec of a row in a session; None when its credentials cannot be read."""
        try:
            opened = self._opened(server)
        except CredentialsError:
            return None
        fields = {name: getattr(server, name) for name in _SPEC_FIELDS}
        return ServerSpec.model_validate(fields | opened)

    def _write(self, server: Server, spec: ServerSpec, before: ServerSpec | None) -> None:
        """Copy a spec onto a row, sealing its credentials (unchanged values keep their tokens)."""
        for name in _SPEC_FIELDS:
            value = getattr(spec, name)
            if name in _SECRET_FIELDS:
                stored = getattr(server, name)
                value = seal_field(self._cipher, value, before=getattr(before, name, None), stored=stored)
                if value == stored:
                    continue
            setattr(server, name, value)

    def _secret_values(self, server: Server) -> list[str]:
        """The server's decryptable credential values (to scrub them from messages)."""
        try:
            opened = self._opened(server)
        except CredentialsError:
            return []
        return [value for field in opened.values() for value in field_values(field)]

    async def seal_credentials(self) -> SealReport:
        """Run once at start: encrypt values stored in plaintext (rows from before encryption)
        and re-encrypt values under an older key with the newest. A server whose values no key
        decrypts gets status `error` saying so; its row is kept for the right key or a PATCH."""
        resealed: list[str] = []
        unreadable: list[str] = []
        async with self._transaction() as session:
            for server in await session.scalars(select(Server).order_by(Server.id)):
                try:
                    fresh = {f: reseal_field(self._cipher, getattr(server, f)) for f in _SECRET_FIELDS}
                except CredentialsError:
                    unreadable.append(server.name)
                    message = f"CredentialsError: {server.name} {UNREADABLE}"
                    if server.last_error != message:
                        server.status = ServerStatus.ERROR.value
                        server.last_error = message
                    continue
                changed = {f: v for f, v in fresh.items() if v is not None}
                for field, value in changed.items():
                    setattr(server, field, value)
                if changed:
                    resealed.append(server.name)
            await session.commit()
        for name in unreadable:
            logger.error(
                "server %s %s It is not served until the key is fixed or its credentials are set again",
                name,
                UNREADABLE,
            )
        if resealed:
            logger.info("encrypted the credentials of %d servers with the newest key", len(resealed))
        return SealReport(resealed, unreadable)

    # -- servers -------------------------------------------------------------------------------

    async def create_server(self, spec: ServerSpec) -> Server:
        _no_placeholders(spec)
        async with self._transaction() as session:
            server = Server(**spec.model_dump(exclude=set(_SECRET_FIELDS)))
            self._write(server, spec, None)
            session.add(server)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise DuplicateError(f"a server named {spec.name!r} already exists") from None
            return self._reveal(server)

    async def get_server(self, server_id: int) -> Server:
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:
                raise NotFoundError(f"no server with id {server_id}")
            return self._reveal(server)

    async def get_servers(self, server_ids: Sequence[int]) -> dict[int, Server]:
        """The servers with these ids that exist, in one query."""
        async with self._transaction() as session:
            rows = await session.scalars(select(Server).where(Server.id.in_(list(server_ids))))
            return {server.id: self._reveal(server) for server in rows}

    async def find_server(self, name: str) -> Server | None:
        async with self._transaction() as session:
            result = await session.scalars(select(Server).where(Server.name == name))
            server = result.first()
            return self._reveal(server) if server is not None else None

    async def list_servers(self) -> list[Server]:
        async with self._transaction() as session:
            return [self._reveal(s) for s in await session.scalars(select(Server).order_by(Server.id))]

    async def tool_counts(self) -> dict[int, int]:
        async with self._transaction() as session:
            rows = await session.execute(select(Tool.server_id, func.count()).group_by(Tool.server_id))
            return {server_id: count for server_id, count in rows.all()}

    async def update_server(self, server_id: int, changes: dict[str, Any]) -> tuple[Server, bool]:
        """Apply `changes` (spec fields) after validating the merged spec. Returns the server and
        whether its connection details changed (the caller then reconnects and re-syncs).

        `env` and `headers` replace the whole map; a value of ``<redacted>`` keeps the stored
        value of that name, so a map read from the API can be sent back with one entry changed.
        A server whose stored credentials cannot be decrypted takes new ones (every non-empty
        one of env, headers and url) and is readable again."""
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:
                raise NotFoundError(f"no server with id {server_id}")
            before = self._stored_spec(server)
            current = {name: getattr(server, name) for name in _SPEC_FIELDS}
            if before is not None:
                current = before.model_dump()
            merged = current | changes
            for field in _SECRET_FIELDS:
                if before is None and field not in changes and getattr(server, field):
                    raise InvalidSpecError(f"{server.name} {UNREADABLE} Send its '{field}' again, whole")
                if field in changes and isinstance(changes[field], dict):
                    merged[field] = _keep_redacted(field, changes[field], current[field], before)
            try:
                after = ServerSpec.model_validate(merged)
            except ValidationError as exc:
                raise InvalidSpecError(_validation_message(exc)) from None
            if after.name != server.name:
                raise InvalidSpecError(
                    "a server cannot be renamed: its name prefixes every exposed tool name"
                )
            self._write(server, after, before)
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
                raise DuplicateError(f"a server named {after.name!r} already exists") from None
            reconnect = before is None or after.connection_key() != before.connection_key()
            return self._reveal(server), reconnect

    async def delete_server(self, server_id: int) -> Server:
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:
                raise NotFoundError(f"no server with id {server_id}")
            await session.delete(server)
            await session.commit()
            return self._reveal(server)

    async def record_sync(
        self, server_id: int, *, error: str | None, at: datetime | None = None
    ) -> str | None:
        """Store the outcome of a sync attempt on the server row. The error text is scrubbed of
        the server's credentials first, since upstream errors may quote them; the stored text is
        returned."""
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:  # deleted while syncing: nothing to record
                return scrub(error, []) if error else None
            stored = scrub(error, self._secret_values(server)) if error else None
            _mark_synced(server, at or utcnow(), stored)
            await session.commit()
        return stored

    # -- tools ---------------------------------------------------------------------------------

    async def list_tools(
        self,
        *,
        server_id: int | None = None,
        enabled: bool | None = None,
        query: str | None = None,
        limit: int = 100,
        offset: int = 0,
        flagged: bool | None = None,
        pending: bool | None = None,
        quarantined: bool | None = None,
    ) -> ToolPage:
        """A page of tools; `flagged`: with findings (live or pending), `pending`: with a held
        change, `quarantined`: out of service until approved."""
        conditions: list[Any] = []
        if server_id is not None:
            conditions.append(Tool.server_id == server_id)
        if enabled is not None:
            conditions.append(Tool.enabled == enabled)
        if flagged is not None:
            conditions.append(Tool.severity.is_not(None) if flagged else Tool.severity.is_(None))
        if pending is not None:
            conditions.append(Tool.pending.is_not(None) if pending else Tool.pending.is_(None))
        if quarantined is not None:
            conditions.append(Tool.quarantined == quarantined)
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
            return ToolPage(tools=self._reveal_tools(list(rows)), total=int(total or 0))

    async def get_tool(self, tool_id: int) -> Tool:
        async with self._transaction() as session:
            tool = await session.get(Tool, tool_id, options=[selectinload(Tool.server)])
            if tool is None:
                raise NotFoundError(f"no tool with id {tool_id}")
            self._reveal(tool.server)
            return tool

    async def review_counts(self) -> dict[int, tuple[int, int]]:
        """Per server id: (tools with findings, tools with a pending definition)."""
        async with self._transaction() as session:
            rows = await session.execute(
                select(
                    Tool.server_id,
                    func.count(Tool.severity),
                    func.count().filter(Tool.pending.is_not(None)),
                ).group_by(Tool.server_id)
            )
            return {server_id: (int(flagged), int(pending)) for server_id, flagged, pending in rows.all()}

    async def approve_tool(self, tool_id: int, policy: ReviewPolicy) -> Tool:
        """Apply the tool's pending definition (or approve its live one) and lift quarantine;
        raises ReviewConflict when there is nothing to approve."""
        return await self._review_tool(tool_id, policy, approve)

    async def reject_tool(self, tool_id: int, policy: ReviewPolicy) -> Tool:
        """Drop the pending definition, remembering its hash; raises ReviewConflict when none."""
        return await self._review_tool(tool_id, policy, reject)

    async def _review_tool(
        self, tool_id: int, policy: ReviewPolicy, action: Callable[[Tool, ReviewPolicy], None]
    ) -> Tool:
        async with self._transaction() as session:
            tool = await session.get(Tool, tool_id, options=[selectinload(Tool.server)], with_for_update=True)
            if tool is None:
                raise NotFoundError(f"no tool with id {tool_id}")
            action(tool, policy)
            await session.commit()
            self._reveal(tool.server)
            return tool

    async def set_tool_enabled(self, tool_id: int, enabled: bool) -> Tool:
        async with self._transaction() as session:
            tool = await session.get(Tool, tool_id, options=[selectinload(Tool.server)])
            if tool is None:
                raise NotFoundError(f"no tool with id {tool_id}")
            tool.enabled = enabled
            await session.commit()
            self._reveal(tool.server)
            return tool

    async def all_tools(self) -> list[Tool]:
        """Every tool, enabled or not, with its server loaded. Tools of servers whose
        credentials cannot be decrypted are left out: they cannot be served (the server's
        status says why)."""
        async with self._transaction() as session:
            rows = await session.scalars(select(Tool).options(selectinload(Tool.server)).order_by(Tool.id))
            return self._connectable(list(rows))

    async def each_tool_page(self, handle: Callable[[list[Tool]], None], *, page_size: int = 1000) -> None:
        """Every tool, as `all_tools` lists them, handed to `handle` a page at a time inside one
        read transaction: a catalog reload of 100k tools then never holds every row at once
        (measured ~3.8 KB of ORM row a tool, ~380 MB at 100k, most of it kept by the C heap
        afterwards). `handle` must copy what it keeps: the rows are released after it."""
        async with self._transaction() as session:
            statement = (
                select(Tool)
                .options(selectinload(Tool.server))
                .order_by(Tool.id)
                .execution_options(yield_per=page_size)
            )
            result = await session.stream_scalars(statement)
            async for page in result.partitions():
                handle(self._connectable(list(page)))

    async def servable_tools(self) -> list[Tool]:
        """Every enabled, unquarantined tool of every enabled server, with its server loaded."""
        async with self._transaction() as session:
            rows = await session.scalars(
                select(Tool)
                .join(Server)
                .where(Tool.enabled.is_(True), Tool.quarantined.is_(False), Server.enabled.is_(True))
                .options(selectinload(Tool.server))
                .order_by(Tool.id)
            )
            return self._connectable(list(rows))

    def _connectable(self, tools: list[Tool]) -> list[Tool]:
        return [tool for tool in self._reveal_tools(tools) if tool.server not in _unreadable]

    async def apply_tool_list(
        self, server_id: int, listed: Sequence[UpstreamTool], policy: ReviewPolicy | None = None
    ) -> ToolDiff:
        """Make the server's tool rows match what it listed: create, update changed definitions
        (by hash), delete the ones gone, reviewing each definition under `policy` (pinned
        changes wait in `pending`). One transaction; also marks the sync as successful."""
        policy = policy or ReviewPolicy()
        now = utcnow()
        async with self._transaction() as session:
            server = await session.get(Server, server_id)
            if server is None:
                raise NotFoundError(f"no server with id {server_id}")
            existing = {
                tool.name: tool
                for tool in await session.scalars(select(Tool).where(Tool.server_id == server_id))
            }
            created: list[Tool] = []
            reviewed = review_rows(server, existing, listed, policy, now, created.append)
            seen = {row.name for row, _, _ in reviewed}
            gone = [row for name, row in existing.items() if name not in seen]
            _mark_synced(server, now, None)
            # Updates (flushed first by the execute), then inserts, then deletes: a flush's order.
            if created:
                await session.execute(insert(Tool), [new_row_values(row) for row in created])
            for row in gone:
                await session.delete(row)
            await session.commit()
        for row, outcome, was_quarantined in reviewed:
            log_review(server.name, row, outcome, was_quarantined)
        return tool_diff(reviewed, deleted=len(gone))

    async def apply_tool_lists(
        self, listings: Sequence[tuple[int, Sequence[UpstreamTool]]], policy: ReviewPolicy | None = None
    ) -> list[ToolDiff | None]:
        """`apply_tool_list` for many servers in one transaction (None for a server deleted
        meanwhile). A sync of thousands of servers then commits a few dozen times, not once
        per server: each SQLite round trip hops to the driver's thread and back."""
        policy = policy or ReviewPolicy()
        now = utcnow()
        ids = [server_id for server_id, _ in listings]
        async with self._transaction() as session:
            servers = {s.id: s for s in await session.scalars(select(Server).where(Server.id.in_(ids)))}
            existing: dict[int, dict[str, Tool]] = {server_id: {} for server_id in servers}
            for tool in await session.scalars(select(Tool).where(Tool.server_id.in_(list(servers)))):
                existing[tool.server_id][tool.name] = tool
            results: list[tuple[Server, list[Reviewed], int] | None] = []
            created: list[Tool] = []
            gone: list[Tool] = []
            for server_id, listed in listings:
                server = servers.get(server_id)
                if server is None:
                    results.append(None)
                    continue
                rows = existing[server_id]
                reviewed = review_rows(server, rows, listed, policy, now, created.append)
                seen = {row.name for row, _, _ in reviewed}
                dropped = [row for name, row in rows.items() if name not in seen]
                gone.extend(dropped)
                _mark_synced(server, now, None)
                results.append((server, reviewed, len(dropped)))
            # The new rows of every server in one INSERT (new_row_values says why), after the
            # updates (flushed first by the execute) and before the deletes, as a flush orders them.
            if created:
                await session.execute(insert(Tool), [new_row_values(row) for row in created])
            for row in gone:
                await session.delete(row)
            await session.commit()
        diffs: list[ToolDiff | None] = []
        for result in results:
            if result is None:
                diffs.append(None)
                continue
            server, reviewed, deleted = result
            for row, outcome, was_quarantined in reviewed:
                log_review(server.name, row, outcome, was_quarantined)
            diffs.append(tool_diff(reviewed, deleted=deleted))
        return diffs

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

    async def load_usage_since(self, since: datetime) -> dict[str, tuple[int, bytes, datetime]]:
        """Usage evidence updated at or after `since`: exposed name -> (count, sum, updated_at)."""
        async with self._transaction() as session:
            rows = await session.execute(
                select(Tool.exposed_name, ToolUsage.count, ToolUsage.total, ToolUsage.updated_at)
                .join(ToolUsage, ToolUsage.tool_id == Tool.id)
                .where(ToolUsage.updated_at >= since)
            )
            return {name: (count, total, at) for name, count, total, at in rows.all()}

    async def add_usage(self, exposed_name: str, count: int, total: bytes) -> tuple[int, bytes] | None:
        """Add uses to a tool's evidence atomically (the row is locked on PostgreSQL), so that
        replicas recording uses of one tool at once lose none; returns the merged evidence,
        or None when the tool no longer exists."""
        delta = np.frombuffer(total, dtype=np.float32)
        async with self._transaction() as session:
            tool_id = await session.scalar(select(Tool.id).where(Tool.exposed_name == exposed_name))
            if tool_id is None:
                return None
            row = await session.get(ToolUsage, tool_id, with_for_update=True)
            if row is None:
                row = ToolUsage(tool_id=tool_id, count=count, total=total)
                session.add(row)
            else:
                current = np.frombuffer(row.total, dtype=np.float32)
                merged = current + delta if current.shape == delta.shape else delta
                row.count = row.count + count if current.shape == delta.shape else count
                row.total = merged.astype(np.float32).tobytes()
            await session.commit()
            return row.count, row.total

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
        for spec in specs:
            _no_placeholders(spec)
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
                    row = Server(**spec.model_dump(exclude=set(_SECRET_FIELDS)))
                    self._write(row, spec, None)
                    session.add(row)
                    created.append(spec.name)
                    touched.append(row)
                    continue
                # Compare plaintext: the stored tokens differ from a fresh encryption every time.
                # Unreadable credentials count as changed, so an import repairs them.
                before = self._stored_spec(row)
                if before != spec:
                    self._write(row, spec, before)
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


def _no_placeholders(spec: ServerSpec) -> None:
    """A new definition holding the API's redacted marker was copied from a response: storing
    it would silently replace a credential with the marker."""
    for field in ("env", "headers"):
        for name, value in getattr(spec, field).items():
            if value == REDACTED:
                raise InvalidSpecError(
                    f"{spec.name}: {field}.{name} is '{REDACTED}', a placeholder from an API "
                    "response: give the value itself"
                )


def _keep_redacted(
    field: str, sent: dict[str, Any], current: Mapping[str, str], before: ServerSpec | None
) -> dict[str, Any]:
    """A PATCHed credential map with every ``<redacted>`` value replaced by the stored one."""
    kept: dict[str, Any] = {}
    for name, value in sent.items():
        if value == REDACTED:
            if before is None or name not in current:
                raise InvalidSpecError(f"{field}.{name}: '{REDACTED}' keeps a stored value; there is none")
            value = current[name]
        kept[name] = value
    return kept
