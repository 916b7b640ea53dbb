"""ScaleMCP-style synchronisation: upstream servers are the source of truth for their tools.

The registry does not speak MCP itself: a `ToolSource` (the gateway's upstream pool) lists a
server's tools, and this module diffs them into the database by definition hash. Syncing many
servers at once reads their rows and stores their diffs in batches (one transaction for the
servers whose listings arrived meanwhile), so thousands of servers cost a few dozen database
transactions instead of three each.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import anyio

from .errors import NotFoundError
from .listing import ToolDiff
from .models import Server
from .repository import Registry, spec_of
from .review import ReviewPolicy
from .specs import ServerSpec, UpstreamTool

logger = logging.getLogger(__name__)
_MAX_BATCH = 64  # servers per batched read or write transaction
Item = TypeVar("Item")
Result = TypeVar("Result")


class ToolSource(Protocol):
    """Lists the tools of an upstream server (all pages)."""

    async def list_tools(self, spec: ServerSpec) -> Sequence[UpstreamTool]: ...


@dataclass(frozen=True, slots=True)
class SyncReport:
    server_id: int
    server: str
    ok: bool
    diff: ToolDiff
    error: str | None
    duration_s: float


def describe_error(exc: BaseException) -> str:
    """One line for the server's `last_error`: the innermost useful message."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:2000]


class Synchronizer:
    """Syncs one server or all of them, with bounded concurrency and one sync per server at a time."""

    def __init__(
        self,
        registry: Registry,
        source: ToolSource,
        *,
        concurrency: int = 8,
        on_change: Callable[[], Awaitable[None]] | None = None,
        review: ReviewPolicy | None = None,
    ) -> None:
        """`review`: how definitions are reviewed (findings, quarantine, pinning)."""
        self._registry = registry
        self.review = review or ReviewPolicy()
        self._source = source
        self._limit = anyio.Semaphore(concurrency)
        self._locks: dict[int, anyio.Lock] = {}
        self._on_change = on_change

    async def sync_server(self, server_id: int, *, notify: bool = True) -> SyncReport:
        """Fetch the server's tools and apply the difference. A failure is recorded on the server
        row (status `error`, `last_error`) and returned, never raised: the others keep going."""
        lock = self._locks.setdefault(server_id, anyio.Lock())
        async with lock, self._limit:
            report = await self._sync_locked(server_id)
        if notify and self._on_change is not None and changed(report):
            await self._on_change()
        return report

    async def _sync_locked(self, server_id: int) -> SyncReport:
        started = time.perf_counter()
        server = await self._registry.get_server(server_id)
        if not server.enabled:
            return SyncReport(server_id, server.name, False, ToolDiff(), "server is disabled", 0.0)
        try:
            listed = await self._source.list_tools(spec_of(server))
        except Exception as exc:  # any upstream failure is data about that server, not ours
            return await self._failed(server, exc, started)
        try:
            diff = await self._registry.apply_tool_list(server_id, listed, self.review)
        except NotFoundError:
            return SyncReport(
                server_id, server.name, False, ToolDiff(), "server was deleted during sync", 0.0
            )
        return self._synced(server, diff, started)

    async def _failed(self, server: Server, exc: Exception, started: float) -> SyncReport:
        # record_sync returns the message scrubbed of the server's own credentials.
        error = describe_error(exc)
        error = await self._registry.record_sync(server.id, error=error) or error
        logger.warning("sync of %s failed: %s", server.name, error)
        return SyncReport(server.id, server.name, False, ToolDiff(), error, time.perf_counter() - started)

    def _synced(self, server: Server, diff: ToolDiff, started: float) -> SyncReport:
        duration = time.perf_counter() - started
        logger.info(
            "synced %s: %d created, %d updated, %d deleted, %d unchanged, %d held, %d flagged in %.2fs",
            server.name,
            diff.created,
            diff.updated,
            diff.deleted,
            diff.unchanged,
            diff.held,
            diff.flagged,
            duration,
        )
        return SyncReport(server.id, server.name, True, diff, None, duration)

    async def sync_servers(self, server_ids: Sequence[int], *, notify: bool = True) -> list[SyncReport]:
        """Sync these servers concurrently (bounded), reading their rows and storing their
        diffs in batches; one notification at the end, when some server's tools changed.
        Reports come in the order of `server_ids`; failures are reports, as in `sync_server`."""
        reader: _Batcher[int, Server | None] = _Batcher(self._read_servers)
        writer: _Batcher[tuple[int, Sequence[UpstreamTool]], ToolDiff | None] = _Batcher(self._write_lists)
        reports: dict[int, SyncReport] = {}

        async def one(server_id: int) -> None:
            reports[server_id] = await self._sync_batched(server_id, reader, writer)

        async with anyio.create_task_group() as batchers:
            batchers.start_soon(reader.run)
            batchers.start_soon(writer.run)
            try:
                async with anyio.create_task_group() as group:
                    for server_id in dict.fromkeys(server_ids):
                        group.start_soon(one, server_id)
            finally:
                reader.close()
                writer.close()
        ordered = [reports[server_id] for server_id in dict.fromkeys(server_ids)]
        if notify and self._on_change is not None and any(changed(r) for r in ordered):
            await self._on_change()
        return ordered

    async def _sync_batched(
        self,
        server_id: int,
        reader: _Batcher[int, Server | None],
        writer: _Batcher[tuple[int, Sequence[UpstreamTool]], ToolDiff | None],
    ) -> SyncReport:
        lock = self._locks.setdefault(server_id, anyio.Lock())
        async with lock:
            started = time.perf_counter()
            # The row is read just before its listing (inside the bound), as `sync_server` does,
            # so a change made while a long sync runs is seen; the write waits outside the bound.
            async with self._limit:
                server = await reader.submit(server_id)
                if server is None:
                    return SyncReport(server_id, "", False, ToolDiff(), "server was deleted during sync", 0.0)
                if not server.enabled:
                    return SyncReport(server_id, server.name, False, ToolDiff(), "server is disabled", 0.0)
                try:
                    listed = await self._source.list_tools(spec_of(server))
                except Exception as exc:  # any upstream failure is data about that server, not ours
                    return await self._failed(server, exc, started)
            diff = await writer.submit((server_id, listed))
            if diff is None:
                return SyncReport(
                    server_id, server.name, False, ToolDiff(), "server was deleted during sync", 0.0
                )
            return self._synced(server, diff, started)

    async def _read_servers(self, server_ids: list[int]) -> list[Server | None]:
        found = await self._registry.get_servers(server_ids)
        return [found.get(server_id) for server_id in server_ids]

    async def _write_lists(self, listings: list[tuple[int, Sequence[UpstreamTool]]]) -> list[ToolDiff | None]:
        return await self._registry.apply_tool_lists(listings, self.review)

    async def sync_all(self, *, notify: bool = True) -> list[SyncReport]:
        """Sync every enabled server (see `sync_servers`), in id order; the notification comes
        only when some server's tools changed: an unchanged re-sync touches no tool."""
        servers = [s.id for s in await self._registry.list_servers() if s.enabled]
        return await self.sync_servers(servers, notify=notify)


def changed(report: SyncReport) -> bool:
    """Whether a sync changed any tool row (created, updated, deleted, held, reviewed)."""
    return report.diff != ToolDiff(unchanged=report.diff.unchanged)


@dataclass
class _Slot(Generic[Result]):
    done: anyio.Event = field(default_factory=anyio.Event)
    value: Result | None = None
    error: BaseException | None = None


class _Batcher(Generic[Item, Result]):
    """Runs `handle` once for all the items submitted while its previous run was busy (at most
    `_MAX_BATCH` at a time). When a batch fails, its items are handled one by one, so one bad
    item fails only its own submitter."""

    def __init__(self, handle: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._handle = handle
        self._send, self._receive = anyio.create_memory_object_stream[tuple[Item, _Slot[Result]]](math.inf)

    async def submit(self, item: Item) -> Result:
        slot: _Slot[Result] = _Slot()
        self._send.send_nowait((item, slot))
        await slot.done.wait()
        if slot.error is not None:
            raise slot.error
        return slot.value  # type: ignore[return-value]  # set whenever error is None

    def close(self) -> None:
        self._send.close()

    async def run(self) -> None:
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                while len(batch) < _MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                await self._run_batch(batch)

    async def _run_batch(self, batch: list[tuple[Item, _Slot[Result]]]) -> None:
        try:
            results = await self._handle([item for item, _ in batch])
        except Exception as exc:
            if len(batch) > 1:
                for single in batch:
                    await self._run_batch([single])
                return
            slot = batch[0][1]
            slot.error = exc
            slot.done.set()
            return
        for (_, slot), result in zip(batch, results, strict=True):
            slot.value = result
            slot.done.set()
