"""The gateway's operations, shared by the admin REST API, the MCP front door and the CLI.

Protocol layers translate to and from these calls and nothing more.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from pydantic import ValidationError

from registry.errors import NotFoundError
from registry.importer import ImportFileError
from registry.models import Server, Tool
from registry.repository import ImportResult, Registry, spec_of
from registry.review import ReviewPolicy
from registry.specs import ServerSpec
from registry.sync import Synchronizer, SyncReport, changed
from retrieval.intent import Intent
from retrieval.pipeline import Retriever

from .catalog import Catalog, IntentConfig, SearchFilters, SearchHit
from .conversations import ConversationMemory, MemoryView, fresh_first
from .forwarder import Forwarder
from .learning import Learner, LearnerUnavailableError
from .learning_queue import LearningQueue
from .memory import MemoryStoreError, Mode
from .tool_stats import ToolStats
from .tracing import Telemetry
from .upstream import UpstreamPool
from .upstream_policy import UpstreamPolicy, UpstreamRefused

logger = logging.getLogger(__name__)

# A find searches at most this much deeper than its limit to step past tools already held.
MAX_HELD_SKIPPED = 50


@dataclass(frozen=True, slots=True)
class FindOutcome:
    hits: list[SearchHit]
    memory: MemoryView | None = None
    memory_error: str | None = None  # the store failed: the hits are still good
    intent: Intent | None = None  # the parsed request, when the intent stage ran
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage, in order


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
        learner: Learner | None = None,
        memory: ConversationMemory | None = None,
        intent: IntentConfig | None = None,
        policy: UpstreamPolicy | None = None,
        review: ReviewPolicy | None = None,
    ) -> None:
        self.registry = registry
        self.review = review or ReviewPolicy()  # findings, quarantine and pinning at sync
        self.policy = policy or UpstreamPolicy()
        self.pool = pool
        self.catalog = Catalog(registry, retriever, intent)
        self.learner = learner
        self.learning = LearningQueue(self.catalog)  # its `run` is started by the runtime
        self.memory = memory
        self.forwarder = Forwarder(self.catalog, pool)
        self.tool_stats = ToolStats()  # found vs called per tool, for the console
        self.telemetry = Telemetry()  # records nothing until the HTTP app sets its own
        self.synchronizer = Synchronizer(
            registry,
            pool,
            concurrency=sync_concurrency,
            on_change=self.catalog.refresh,
            review=self.review,
        )

    def set_telemetry(self, telemetry: Telemetry) -> None:
        """Report find_tools, call_tool and upstream calls (metrics, spans) through `telemetry`."""
        self.telemetry = telemetry
        self.forwarder.telemetry = telemetry

    # -- servers -------------------------------------------------------------------------------

    async def register_server(self, spec: ServerSpec) -> tuple[Server, SyncReport | None]:
        """Store the server, then sync it at once. A failing sync does not undo the
        registration: the server keeps status `error` and its message until a sync succeeds.
        An upstream that policy forbids (SSRF guard, stdio allow-list) is refused first."""
        await self.policy.check(spec)
        server = await self.registry.create_server(spec)
        report = await self.synchronizer.sync_server(server.id) if server.enabled else None
        return await self.registry.get_server(server.id), report

    async def update_server(
        self, server_id: int, changes: dict[str, Any]
    ) -> tuple[Server, SyncReport | None]:
        await self._check_changes(server_id, changes)
        server, reconnect = await self.registry.update_server(server_id, changes)
        report = None
        if reconnect or "enabled" in changes:
            await self.pool.close(server.name)
        if server.enabled and (reconnect or changes.get("enabled") is True):
            report = await self.synchronizer.sync_server(server.id)
        await self.catalog.refresh()
        return await self.registry.get_server(server_id), report

    async def _check_changes(self, server_id: int, changes: dict[str, Any]) -> None:
        """Policy applies to where a server points, so check the merged spec when that moves."""
        if not changes.keys() & {"transport", "url", "command"}:
            return
        current = spec_of(await self.registry.get_server(server_id))
        try:
            merged = ServerSpec.model_validate({**current.model_dump(), **changes})
        except ValidationError:
            return  # not a valid spec: the registry refuses it with the full message
        await self.policy.check(merged)

    async def delete_server(self, server_id: int) -> Server:
        server = await self.registry.delete_server(server_id)
        await self.pool.close(server.name)
        await self.catalog.refresh()
        return server

    async def import_servers(self, specs: Sequence[ServerSpec]) -> ImportOutcome:
        """Create or update servers from an import; sync only the ones that changed. Any spec
        that policy forbids rejects the whole import, with every refusal listed."""
        refused = []
        for spec in specs:
            try:
                await self.policy.check(spec)
            except UpstreamRefused as exc:
                refused.append(f"{spec.name}: {exc}")
        if refused:
            raise ImportFileError(refused)
        # One catalog reload at the end, not one per refresh asked for while servers sync.
        async with self.catalog.hold():
            result = await self.registry.import_servers(specs)
            touched = await self.registry.get_servers(result.changed_ids)
            for server in touched.values():
                await self.pool.close(server.name)  # its connection details may have changed
            enabled = sorted(server.id for server in touched.values() if server.enabled)
            reports = await self.synchronizer.sync_servers(enabled, notify=False)
        await self.catalog.refresh()
        return ImportOutcome(result, reports)

    async def sync_server(self, server_id: int) -> SyncReport:
        return await self.synchronizer.sync_server(server_id)

    async def sync_all(self) -> list[SyncReport]:
        """Sync every server; the catalog reloads once at the end, when any tool changed."""
        async with self.catalog.hold():
            reports = await self.synchronizer.sync_all(notify=False)
        if any(changed(r) for r in reports):
            await self.catalog.refresh()
        return reports

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

    async def approve_tool(self, tool_id: int) -> Tool:
        """Approve the tool's pending (or unapproved live) definition and lift its quarantine;
        the catalog re-indexes the new definition. ReviewConflict when nothing waits."""
        tool = await self.registry.approve_tool(tool_id, self.review)
        logger.info("approved the definition of %s", tool.exposed_name)
        await self.catalog.refresh()
        return tool

    async def reject_tool(self, tool_id: int) -> Tool:
        """Drop the tool's pending definition and keep serving the approved one."""
        tool = await self.registry.reject_tool(tool_id, self.review)
        logger.info("rejected the pending definition of %s", tool.exposed_name)
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
        include_held: bool = False,
    ) -> FindOutcome:
        """Rank the tools; in a conversation, also learn from it and update its working set
        (autonomous mode at capacity raises `WorkingSetFull`). Tools the working set holds are
        named in the memory view instead of returned, unless `include_held`."""
        with self.telemetry.find() as record:
            held = frozenset() if include_held else await self._held(conversation)
            outcome = await self._find_tools(query, limit, filters, conversation, mode, adaptive, held)
            size = outcome.memory.count if outcome.memory is not None else None
            record.found(outcome.timings, len(outcome.hits), size)
        return outcome

    async def _find_tools(
        self,
        query: str,
        limit: int,
        filters: SearchFilters | None,
        conversation: str | None,
        mode: Mode | None,
        adaptive: bool,
        held: frozenset[str],
    ) -> FindOutcome:
        # Deep enough that `limit` tools not held yet remain after the held ones are set aside.
        depth = min(limit + len(held), limit + MAX_HELD_SKIPPED)
        found = await self.catalog.search(query, depth, filters, adaptive=adaptive)
        timings = found.timings
        if conversation is None:
            return FindOutcome(found.hits, intent=found.intent, timings=timings)
        by_name = {hit.tool.exposed_name: hit for hit in found.hits}
        fresh, matched = fresh_first(list(by_name), held, limit)
        if not fresh and matched:
            # The set holds every match: answer with the best of them again rather than with
            # nothing (they count as returned again; the rest are named as held).
            fresh = matched[:limit]
            matched = matched[limit:]
        hits = [by_name[name] for name in fresh]
        self.tool_stats.record_found(fresh)
        if self.learner is not None and by_name:
            try:  # a later call of a held match is a use of it for this query, too
                await self.learner.found(conversation, found.vector, fresh + matched)
            except LearnerUnavailableError as exc:  # learning is best effort; the find is good
                logger.warning("%s", exc)
        if self.memory is None:
            return FindOutcome(hits, intent=found.intent, timings=timings)
        # Every held tool ranked above the last fresh card counts as returned again: it still
        # matches the request, so it outlives idle tools of an earlier topic (the capacity
        # rule bounds the set). Replayed, this loses a third fewer found-then-pruned tools than
        # refreshing only the plain top `limit` (bench/memory_policies.py).
        scores = {name: by_name[name].score for name in fresh + matched}
        started = time.perf_counter()
        try:
            view = await self.memory.on_find(conversation, scores, mode=mode, query=query, matched=matched)
        except MemoryStoreError as exc:
            logger.warning("conversation memory unavailable: %s", exc)
            timings = {**timings, "memory": time.perf_counter() - started}
            return FindOutcome(hits, memory_error=str(exc), intent=found.intent, timings=timings)
        timings = {**timings, "memory": time.perf_counter() - started}
        return FindOutcome(hits, view, intent=found.intent, timings=timings)

    async def _held(self, conversation: str | None) -> frozenset[str]:
        """The working set's names when results skip held tools; empty when the store fails
        (on_find then reports the failure) or the conversation is new."""
        if conversation is None or self.memory is None or not self.memory.fresh_results:
            return frozenset()
        try:
            return await self.memory.held(conversation)
        except MemoryStoreError:
            return frozenset()

    async def forget_tools(self, conversation: str, names: Sequence[str]) -> MemoryView:
        if self.memory is None:
            raise MemoryStoreError("conversation memory is off")
        return await self.memory.forget(conversation, names)

    async def call_tool(
        self, name: str, arguments: dict[str, Any] | None, *, conversation: str | None = None
    ) -> types.CallToolResult:
        with self.telemetry.call(name) as record:
            result = await self._call_tool(name, arguments, conversation)
            record.result(result)
        return result

    async def _call_tool(
        self, name: str, arguments: dict[str, Any] | None, conversation: str | None
    ) -> types.CallToolResult:
        result = await self.forwarder.call(name, arguments)
        if not result.is_error:
            self.tool_stats.record_called(name)
        if result.is_error or conversation is None:
            return result
        if self.learner is not None:
            try:
                vector = await self.learner.used(conversation, name)
                if vector is not None:
                    self.learning.submit(name, vector)  # recorded off this call's path
            except LearnerUnavailableError as exc:
                logger.warning("%s", exc)
            except Exception:  # learning is best effort: the call itself succeeded
                logger.exception("could not record a use of %s", name)
        if self.memory is not None:
            try:
                await self.memory.on_call(conversation, name)
            except MemoryStoreError as exc:  # the call succeeded; the working set is best effort
                logger.warning("conversation memory unavailable: %s", exc)
        return result
