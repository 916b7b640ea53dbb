"""ScaleMCP-style synchronisation: upstream servers are the source of truth for their tools.

The registry does not speak MCP itself: a `ToolSource` (the gateway's upstream pool) lists a
server's tools, and this module diffs them into the database by definition hash.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio

from .errors import NotFoundError
from .listing import ToolDiff
from .repository import Registry, spec_of
from .review import ReviewPolicy
from .specs import ServerSpec, UpstreamTool

logger = logging.getLogger(__name__)


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
        if (
            notify
            and self._on_change is not None
            and (report.diff != ToolDiff(unchanged=report.diff.unchanged))
        ):
            await self._on_change()
        return report

    async def _sync_locked(self, server_id: int) -> SyncReport:
        started = time.perf_counter()
        server = await self._registry.get_server(server_id)
        name = server.name
        if not server.enabled:
            return SyncReport(server_id, name, False, ToolDiff(), "server is disabled", 0.0)
        try:
            listed = await self._source.list_tools(spec_of(server))
        except Exception as exc:  # any upstream failure is data about that server, not ours
            # record_sync returns the message scrubbed of the server's own credentials.
            error = describe_error(exc)
            error = await self._registry.record_sync(server_id, error=error) or error
            logger.warning("sync of %s failed: %s", name, error)
            return SyncReport(server_id, name, False, ToolDiff(), error, time.perf_counter() - started)
        try:
            diff = await self._registry.apply_tool_list(server_id, listed, self.review)
        except NotFoundError:
            return SyncReport(server_id, name, False, ToolDiff(), "server was deleted during sync", 0.0)
        duration = time.perf_counter() - started
        logger.info(
            "synced %s: %d created, %d updated, %d deleted, %d unchanged, %d held, %d flagged in %.2fs",
            name,
            diff.created,
            diff.updated,
            diff.deleted,
            diff.unchanged,
            diff.held,
            diff.flagged,
            duration,
        )
        return SyncReport(server_id, name, True, diff, None, duration)

    async def sync_all(self) -> list[SyncReport]:
        """Sync every enabled server concurrently (bounded); one notification at the end."""
        servers = [s for s in await self._registry.list_servers() if s.enabled]
        reports: list[SyncReport] = []

        async def one(server_id: int) -> None:
            reports.append(await self.sync_server(server_id, notify=False))

        async with anyio.create_task_group() as group:
            for server in servers:
                group.start_soon(one, server.id)
        if self._on_change is not None and any(r.ok for r in reports):
            await self._on_change()
        reports.sort(key=lambda r: r.server_id)
        return reports
