"""The gateway's operations, shared by the admin REST API, the MCP front door and the CLI.

Protocol layers translate to and from these calls and nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types

from registry.errors import NotFoundError
from registry.models import Server, Tool
from registry.repository import ImportResult, Registry
from registry.specs import ServerSpec
from registry.sync import Synchronizer, SyncReport
from retrieval.intent import Intent
from retrieval.pipeline import Retriever

from .catalog import Catalog, IntentConfig, SearchFilters, SearchHit
from .conversations import ConversationMemory, MemoryView
from .forwarder import Forwarder
from .learning import UsageLearner
from .memory import MemoryStoreError, Mode
from .upstream import UpstreamPool

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FindOutcome:
    hits: list[SearchHit]
    memory: MemoryView | None = None
    memory_error: str | None = None  # the store failed: the hits are still good
    intent: Intent | None = None  # the parsed request, when the intent stage ran


@dataclass(frozen=True, slots=True)
class ImportOutcome:
    result: ImportResult
    reports: list[SyncReport]


class GatewayService:
    """Registry, sync, catalog, retrieval, usage learning and forwarding wired together."""

    def __init__(
        self,
        registry: Registry,
        pool: UpstreamPool,
        retriever: Retriever,
        *,
        sync_concurrency: int = 8,
        learner: UsageLearner | None = None,
        memory: ConversationMemory | None = None,
        intent: IntentConfig | None = None,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.catalog = Catalog(registry, retriever, intent)
        self.learner = learner
        self.memory = memory
        self.forwarder = Forwarder(self.catalog, pool)
        self.synchronizer = Synchronizer(
            registry, pool, concurrency=sync_concurrency, on_change=self.catalog.refresh
        )

    # -- servers -------------------------------------------------------------------------------

    async def register_server(self, spec: ServerSpec) -> tuple[Server, SyncReport | None]:
        """Store the server, then sync it at once. A failing sync does not undo the
        registration: the server keeps status `error` and its message until a sync succeeds."""
        server = await self.registry.create_server(spec)
        report = await self.synchronizer.sync_server(server.id) if server.enabled else None
        return await self.registry.get_server(server.id), report

    async def update_server(
        self, server_id: int, changes: dict[str, Any]
    ) -> tuple[Server, SyncReport | None]:
        server, reconnect = await self.registry.update_server(server_id, changes)
        report = None
        if reconnect or "enabled" in changes:
            await self.pool.close(server.name)
        if server.enabled and (reconnect or changes.get("enabled") is True):
            report = await self.synchronizer.sync_server(server.id)
        await self.catalog.refresh()
        return await self.registry.get_server(server_id), report

    async def delete_server(self, server_id: int) -> Server:
        server = await self.registry.delete_server(server_id)
        await self.pool.close(server.name)
        await self.catalog.refresh()
        return server

    async def import_servers(self, specs: Sequence[ServerSpec]) -> ImportOutcome:
        """Create or update servers from an import; sync only the ones that changed."""
        result = await self.registry.import_servers(specs)
        reports: list[SyncReport] = []
        limit = anyio.Semaphore(16)

        async def sync(server_id: int) -> None:
            async with limit:
                server = await self.registry.get_server(server_id)
                await self.pool.close(server.name)  # its connection details may have changed
                if server.enabled:
                    reports.append(await self.synchronizer.sync_server(server_id, notify=False))

        async with anyio.create_task_group() as group:
            for server_id in result.changed_ids:
                group.start_soon(sync, server_id)
        await self.catalog.refresh()
        reports.sort(key=lambda r: r.server_id)
        return ImportOutcome(result, reports)

    async def sync_server(self, server_id: int) -> SyncReport:
        return await self.synchronizer.sync_server(server_id)

    async def sync_all(self) -> list[SyncReport]:
        return await self.synchronizer.sync_all()

    async def on_tools_changed(self, server_name: str) -> None:
        """An upstream said its tool list changed: re-sync that server."""
        server = await self.registry.find_server(server_name)
        if server is not None and server.enabled:
            logger.info("%s announced a tool list change; syncing", server_name)
            await self.synchronizer.sync_server(server.id)

    # -- tools ---------------------------------------------------------------------------------

    async def set_tool_enabled(self, tool_id: int, enabled: bool) -> Tool:
        tool = await self.registry.set_tool_enabled(tool_id, enabled)
        await self.catalog.refresh()
        return tool

    async def add_examples(self, examples: Mapping[str, Sequence[str]]) -> dict[str, int]:
        """Example queries per tool (by exposed name), recorded as uses of it: the same evidence
        a live call gives. All names are checked first, so a bad one records nothing."""
        unknown = sorted(name for name in examples if not self.catalog.knows(name))
        if unknown:
            raise NotFoundError(f"no tools named {unknown}")
        recorded: dict[str, int] = {}
        for name, queries in examples.items():
            recorded[name] = await self.catalog.add_examples(name, list(queries))
        return recorded

    def usage_count(self, exposed_name: str) -> int:
        return self.catalog.usage_count(exposed_name)

    # -- the front door ------------------------------------------------------------------------

    async def find_tools(
        self,
        query: str,
        limit: int,
        filters: SearchFilters | None = None,
        *,
        conversation: str | None = None,
        mode: Mode | None = None,
        adaptive: bool = False,
    ) -> FindOutcome:
        """Rank the tools; in a conversation, also learn from it and update its working set
        (autonomous mode at capacity raises `WorkingSetFull`)."""
        found = await self.catalog.search(query, limit, filters, adaptive=adaptive)
        if conversation is None:
            return FindOutcome(found.hits, intent=found.intent)
        if self.learner is not None and found.hits:
            self.learner.found(conversation, found.vector, [hit.tool.exposed_name for hit in found.hits])
        if self.memory is None:
            return FindOutcome(found.hits, intent=found.intent)
        scores = {hit.tool.exposed_name: hit.score for hit in found.hits}
        try:
            view = await self.memory.on_find(conversation, scores, mode=mode)
        except MemoryStoreError as exc:
            logger.warning("conversation memory unavailable: %s", exc)
            return FindOutcome(found.hits, memory_error=str(exc), intent=found.intent)
        return FindOutcome(found.hits, view, intent=found.intent)

    async def forget_tools(self, conversation: str, names: Sequence[str]) -> MemoryView:
        if self.memory is None:
            raise MemoryStoreError("conversation memory is off")
        return await self.memory.forget(conversation, names)

    async def call_tool(
        self, name: str, arguments: dict[str, Any] | None, *, conversation: str | None = None
    ) -> types.CallToolResult:
        result = await self.forwarder.call(name, arguments)
        if result.is_error or conversation is None:
            return result
        if self.learner is not None:
            vector = self.learner.used(conversation, name)
            if vector is not None:
                try:
                    await self.catalog.record_use(name, vector)
                except Exception:  # learning is best effort: the call itself succeeded
                    logger.exception("could not record a use of %s", name)
        if self.memory is not None:
            try:
                await self.memory.on_call(conversation, name)
            except MemoryStoreError as exc:  # the call succeeded; the working set is best effort
                logger.warning("conversation memory unavailable: %s", exc)
        return result
