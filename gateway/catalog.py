"""The catalog: every registered tool, held for lookup, and the retriever that searches them.

Rebuilt from the registry after every change (sync, enable/disable, delete). Only tools whose
definition hash changed are re-embedded; disabled tools stay indexed with `enabled: false` and
are filtered inside the index query. Model work runs in worker threads, outside the lock that
serialises changes to the retriever, so searches keep answering while a large sync indexes.

Refreshes coalesce: callers that queue behind a running refresh share the next one, and a bulk
change (import, sync of every server) holds refreshes until it is done, so a burst of changes
(list_changed pushes, the registry watcher's polls) reloads the catalog once, not once each.
"""

from __future__ import annotations

import ctypes
import dataclasses
import difflib
import functools
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx

from registry.models import Tool
from registry.repository import Registry, spec_of
from registry.specs import ServerSpec
from retrieval.documents import ToolText
from retrieval.index import IndexFilter, IndexScope
from retrieval.intent import Intent
from retrieval.intent_llm import LLMIntentParser, LLMSettings
from retrieval.intent_stage import PreparedQuery
from retrieval.pipeline import Hit, Retriever, ToolRecord
from retrieval.usage import Vector

from .principal import Scope
from .registry_watch import Fingerprint, fingerprint
from .usage_evidence import UsageEvidence

logger = logging.getLogger(__name__)
# Tools per embedding call. The embedder sorts a call's texts by token count and batches
# them, so a wider call pads less: measured here, calls of 64 ran at ~70% of the model's
# throughput, calls of 512 at its full rate. Searches still see new tools every ~5 s.
_CHUNK = 512


@dataclass(frozen=True, slots=True)
class CatalogTool:
    id: int
    exposed_name: str
    server: str
    name: str  # upstream name
    title: str | None
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    annotations: dict[str, Any] | None
    definition_hash: str
    enabled: bool = True  # the tool and its server are both enabled


@dataclass(frozen=True, slots=True)
class SearchHit:
    tool: CatalogTool
    score: float
    stages: Mapping[str, float] = field(default_factory=dict)
    why: str = ""
    sub_intent: int | None = None  # which part of the request it answers (intent stage)


@dataclass(frozen=True, slots=True)
class FindResult:
    hits: list[SearchHit]
    vector: Vector  # the query's embedding, for usage learning
    intent: Intent | None = None  # the parsed request, when the intent stage ran
    # Seconds per retrieval stage: "intent" (llm parse), "prepare" (parse + embed; "embed"
    # with the intent stage off), "wait" (for the catalog lock), "search" (stages 1-3).
    timings: Mapping[str, float] = field(default_factory=dict)


@dataclass
class RefreshActivity:
    """How the catalog's reloads went, for the admin API and benchmarks: whether one runs now,
    how many ran, the seconds spent reloading and, within that, embedding; and the latest
    reloads one by one, stamped with `time.monotonic()` (one clock for every process on the
    machine, so a client can tell which reloads ran during its request)."""

    running: bool = False
    refreshes: int = 0
    total_s: float = 0.0
    cpu_s: float = 0.0  # process CPU time (all threads) while reloading
    embed_s: float = 0.0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=16))

    def as_dict(self) -> dict[str, Any]:
        return {
            "running": self.running,
            "refreshes": self.refreshes,
            "total_s": round(self.total_s, 4),
            "cpu_s": round(self.cpu_s, 4),
            "embed_s": round(self.embed_s, 4),
            "last": self.recent[-1] if self.recent else {},
            "recent": list(self.recent),
        }


IntentMode = Literal["off", "builtin", "llm"]


@dataclass(frozen=True)
class IntentConfig:
    """How requests are parsed before ranking. With ``llm``, ``client`` is the shared HTTP
    client for the model endpoint (closed by whoever made it)."""

    mode: IntentMode = "off"
    llm: LLMSettings | None = None
    client: httpx.AsyncClient | None = None


@dataclass(frozen=True, slots=True)
class SearchFilters:
    server: str | None = None
    category: str | None = None
    read_only: bool | None = None
    # The caller's scope (gateway.principal.Scope); None: every tool. Applied inside the query.
    scope: Scope | None = None


def _hint(annotations: Mapping[str, Any] | None, key: str) -> bool | None:
    value = (annotations or {}).get(key)
    return value if isinstance(value, bool) else None


class Catalog:
    def __init__(self, registry: Registry, retriever: Retriever, intent: IntentConfig | None = None) -> None:
        self._registry = registry
        self.retriever = retriever
        self.intent = intent or IntentConfig()
        if self.intent.mode == "llm" and self.intent.llm is None:
            raise ValueError("the llm intent parser needs its endpoint settings")
        self._tools: dict[str, CatalogTool] = {}
        self._servable = 0  # enabled tools in `_tools`: every find reports it, so count once
        self._servers: dict[str, ServerSpec] = {}
        self._refresh_lock = anyio.Lock()
        self._lock = anyio.Lock()  # serialises retriever state changes and searches
        self._loaded = False
        self._usage = UsageEvidence(registry, retriever, self._lock)
        self.ready = False
        self.indexing = 0  # tools waiting to be embedded
        self.embedded = 0  # tools embedded since start (adopted ones are not)
        self.optimized = 0  # search-graph builds since start
        self._unoptimized = 0  # tools indexed since the last build (all of them at start)
        # Refresh tickets: a refresh covers every request made before it read the registry.
        self._requested = 0
        self._covered = 0
        self._holds = 0
        self._released = anyio.Event()
        self._released.set()
        self.activity = RefreshActivity()
        # The registry's fingerprint read just before the latest reload read its rows: the
        # registry watcher skips a change this catalog has already loaded (its own sync's).
        self.loaded_fingerprint: Fingerprint | None = None

    # -- loading -------------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Bring the catalog and the index up to date with the registry. Returns once a reload
        that began after this call has finished; callers that queue share one reload, and
        during a `hold` they wait for it to end."""
        self._requested += 1
        ticket = self._requested
        while self._holds and self._covered < ticket:
            await self._released.wait()
        async with self._refresh_lock:
            if self._covered >= ticket:
                return
            target = self._requested
            await self._reload()
            self._covered = max(self._covered, target)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold refreshes during a bulk change: they wait until it ends and then share one
        reload, instead of reloading the whole registry for every server synced meanwhile."""
        if self._holds == 0:
            self._released = anyio.Event()
        self._holds += 1
        try:
            yield
        finally:
            self._holds -= 1
            if self._holds == 0:
                self._released.set()

    async def _reload(self) -> None:
        activity = self.activity
        activity.running = True
        started, cpu, clock = time.perf_counter(), time.process_time(), time.monotonic()
        embedded_before, embed_before = self.embedded, activity.embed_s
        loaded: float | None = None
        try:
            before = await fingerprint(self._registry)
            tools: dict[str, CatalogTool] = {}
            servers: dict[str, ServerSpec] = {}
            records: list[ToolRecord] = []
            # A page of ORM rows at a time (~3.8 KB a tool): neither the load nor the index
            # sync after it, which embeds for as long as a large sync takes, holds them all.
            await self._registry.each_tool_page(
                functools.partial(self._snapshot, tools=tools, servers=servers, records=records)
            )
            loaded = time.perf_counter()
            self._tools, self._servers = tools, servers
            self.loaded_fingerprint = before
            self._servable = sum(1 for tool in tools.values() if tool.enabled)
            await self._sync_index(records)
            del records  # of unchanged tools the retriever keeps its own: these are garbage
            if not self._loaded:
                await self._usage.load()
                self._loaded = True
            self.ready = True
            await anyio.to_thread.run_sync(trim_heap)
        finally:
            activity.running = False
            finished, spent = time.perf_counter(), time.process_time() - cpu
            activity.refreshes += 1
            activity.total_s += finished - started
            activity.cpu_s += spent
            activity.recent.append(
                {
                    "started_at": round(clock, 4),
                    "finished_at": round(time.monotonic(), 4),
                    "duration_s": round(finished - started, 4),
                    "cpu_s": round(spent, 4),
                    "load_s": round(loaded - started, 4) if loaded is not None else None,
                    "embed_s": round(activity.embed_s - embed_before, 4),
                    "embedded": self.embedded - embedded_before,
                    "tools": len(self._tools),
                }
            )

    def _snapshot(
        self,
        rows: list[Tool],
        *,
        tools: dict[str, CatalogTool],
        servers: dict[str, ServerSpec],
        records: list[ToolRecord],
    ) -> None:
        """Copy a page of registry rows into the next catalog (`tools`, `servers`) and the
        retriever's records; unchanged tools keep the current catalog's objects."""
        previous = self._tools
        for row in rows:
            server = row.server
            spec = servers.get(server.name) or spec_of(server)
            servers[server.name] = spec
            enabled = row.enabled and not row.quarantined and server.enabled
            tool = _unchanged(previous.get(row.exposed_name), row, server.name, enabled) or CatalogTool(
                id=row.id,
                exposed_name=row.exposed_name,
                server=server.name,
                name=row.name,
                title=row.title,
                description=row.description,
                input_schema=row.input_schema,
                output_schema=row.output_schema,
                annotations=row.annotations,
                definition_hash=row.definition_hash,
                enabled=enabled,
            )
            tools[tool.exposed_name] = tool  # the kept tool's string: no second copy per reload
            # Built from the tool's own fields: the retriever keeps the record of an unchanged
            # tool from the reload that indexed it, so both then hold one copy of its texts.
            text = ToolText(
                tool_id=tool.exposed_name,
                server=tool.server,
                server_description=server.description,
                name=tool.name,
                title=tool.title or "",
                description=tool.description,
                input_schema=tool.input_schema,
                examples=(),
            )
            records.append(
                ToolRecord(
                    text=text,
                    version=row.definition_hash,
                    category=server.category,
                    read_only=_hint(row.annotations, "readOnlyHint"),
                    destructive=_hint(row.annotations, "destructiveHint"),
                    enabled=enabled,
                )
            )

    async def _sync_index(self, records: list[ToolRecord]) -> None:
        retriever = self.retriever
        wanted = {r.tool_id for r in records}
        async with self._lock:
            gone = [tool_id for tool_id in list(retriever.tool_ids()) if tool_id not in wanted]
            if gone:
                await anyio.to_thread.run_sync(retriever.remove, gone)
            if not self._loaded:  # after a restart, vectors already stored are reused
                self._unoptimized += len(records)  # a build with nothing to merge is quick
                records = await anyio.to_thread.run_sync(retriever.adopt, records)
            await anyio.to_thread.run_sync(retriever.apply_payloads, records)
            pending = retriever.pending(records)
        self.indexing = len(pending)
        if pending:
            logger.info("embedding %d new or changed tools", len(pending))
        for start in range(0, len(pending), _CHUNK):
            batch = pending[start : start + _CHUNK]
            began = time.perf_counter()
            embedded = await anyio.to_thread.run_sync(retriever.embed, batch)
            self.activity.embed_s += time.perf_counter() - began
            async with self._lock:
                await anyio.to_thread.run_sync(retriever.store, batch, embedded)
            self.embedded += len(batch)
            self.indexing = max(0, len(pending) - start - len(batch))
        if pending:
            await anyio.to_thread.run_sync(retriever.embedder.release_memory)
        self._unoptimized += len(pending)
        await self._maybe_optimize()

    async def _maybe_optimize(self) -> None:
        """Build the embedded engine's HNSW graph once enough tools arrived: without it a
        search scans the unindexed segment exactly (at 100k tools, 24 ms of a 49 ms find)."""
        index = self.retriever.index
        if index.optimizes_in_background or self._unoptimized < self.retriever.settings.optimize_after:
            return
        began = time.perf_counter()
        # The graph build is the reload's memory peak: hand freed heap back to the OS first.
        await anyio.to_thread.run_sync(trim_heap)
        async with self._lock:  # every index call runs under this lock: nothing overlaps
            await anyio.to_thread.run_sync(index.optimize)
        self._unoptimized = 0
        self.optimized += 1
        logger.info(
            "built the search graph over %d tools in %.1f s", len(self.retriever), time.perf_counter() - began
        )

    # -- lookups -------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Servable tools (enabled, on an enabled server), counted when the catalog reloads."""
        return self._servable

    def get(self, exposed_name: str) -> CatalogTool | None:
        """A servable tool by exposed name (disabled tools are not returned)."""
        tool = self._tools.get(exposed_name)
        return tool if tool is not None and tool.enabled else None

    def knows(self, exposed_name: str) -> bool:
        """Whether the tool is registered (enabled or not)."""
        return exposed_name in self._tools

    def usage_count(self, exposed_name: str) -> int:
        """How many uses (examples, live calls, imports) the tool's usage vector holds."""
        state = self.retriever.usage.get(exposed_name)
        return state.count if state is not None else 0

    def stats(self) -> dict[str, Any]:
        """What the index holds, for the admin API."""
        return {
            "tools": len(self.retriever),
            "servable": len(self),
            "pending": self.indexing,
            "embedded_since_start": self.embedded,
            "graph_builds_since_start": self.optimized,
            "tools_with_usage": sum(1 for _ in self.retriever.usage.items()),
            "embedder": self.retriever.embedder.model_id,
            "ready": self.ready,
            "refresh": self.activity.as_dict(),
        }

    def server_spec(self, name: str) -> ServerSpec | None:
        return self._servers.get(name)

    def suggest(self, name: str, n: int = 3) -> list[str]:
        """The exposed names closest to a mistyped one (also matching bare upstream names)."""
        servable = [t for t in self._tools.values() if t.enabled]
        exact_upstream = [t.exposed_name for t in servable if t.name == name]
        close = difflib.get_close_matches(name, [t.exposed_name for t in servable], n=n, cutoff=0.5)
        return list(dict.fromkeys(exact_upstream + close))[:n]

    # -- search and usage ----------------------------------------------------------------------

    async def embed_query(self, query: str) -> Vector:
        return await anyio.to_thread.run_sync(self.retriever.embed_query, query)

    async def search(
        self, query: str, limit: int, filters: SearchFilters | None = None, *, adaptive: bool = False
    ) -> FindResult:
        """The best `limit` servable tools for `query` (embedding runs outside the lock);
        `adaptive` may return fewer, cutting at a clear drop in score."""
        flt = _index_filter(filters)
        timings: dict[str, float] = {}
        clock = time.perf_counter
        if self.intent.mode == "off":
            started = clock()
            vector = await self.embed_query(query)
            timings["embed"] = clock() - started
            search = functools.partial(self.retriever.search_with_vector, adaptive=adaptive)
            hits = await self._locked_search(timings, search, query, vector, limit, flt)
            return FindResult(self._found(hits), vector, timings=timings)
        intent: Intent | bool = True
        if self.intent.mode == "llm":
            started = clock()
            intent = await self._llm_intent(query)
            timings["intent"] = clock() - started

        # Parsing and embedding read snapshots of the catalog's names and centroids, so they
        # run outside the lock; only the search itself is serialised with catalog changes.
        started = clock()
        prepare = functools.partial(self.retriever.prepare, query, intent=intent)
        prepared: PreparedQuery = await anyio.to_thread.run_sync(prepare)
        timings["prepare"] = clock() - started
        search = functools.partial(self.retriever.search_prepared, adaptive=adaptive)
        hits = await self._locked_search(timings, search, prepared, limit, flt)
        return FindResult(self._found(hits), prepared.vector, prepared.intent, timings)

    async def _locked_search(self, timings: dict[str, float], search: Any, *args: Any) -> list[Hit]:
        started = time.perf_counter()
        async with self._lock:
            locked = time.perf_counter()
            timings["wait"] = locked - started
            hits: list[Hit] = await anyio.to_thread.run_sync(search, *args)
        timings["search"] = time.perf_counter() - locked
        return hits

    async def _llm_intent(self, query: str) -> Intent:
        """The language model's parse; on any failure the built-in one, with the reason."""
        assert self.intent.llm is not None  # checked in __init__
        async with self._lock:
            fallback = await anyio.to_thread.run_sync(self.retriever.intent_parser)
        parser = LLMIntentParser(self.intent.llm, fallback, client=self.intent.client)
        return await parser.parse(query)

    def _found(self, hits: list[Hit]) -> list[SearchHit]:
        found = []
        for hit in hits:
            tool = self.get(hit.tool_id)
            if tool is not None:
                found.append(SearchHit(tool, hit.score, hit.stages, hit.why, hit.sub_intent))
        return found

    async def record_uses(self, uses: list[tuple[str, Vector]]) -> int:
        """A batch of uses (gateway/learning_queue.py): usage vectors and past requests updated,
        then stored. Returns how many were recorded."""
        return await self._usage.record(uses)

    async def add_examples(self, exposed_name: str, queries: list[str]) -> int:
        """Example queries for a tool count as uses of it (the same evidence live calls give).
        Returns how many were recorded; raises KeyError for a tool not in the catalog."""
        if exposed_name not in self._tools:
            raise KeyError(exposed_name)
        vectors = await anyio.to_thread.run_sync(self.retriever.embedder.encode, queries)
        return await self._usage.record([(exposed_name, vector) for vector in vectors])

    async def reload_usage(self) -> None:
        """Take in usage evidence and past requests other replicas stored since the last look."""
        await self._usage.reload()


def _malloc_trim() -> Callable[[int], int] | None:
    try:  # glibc's; other C libraries (musl, macOS) have none and need none here
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def trim_heap() -> None:
    """Return the C heap's free pages to the system after a reload. glibc keeps what a build
    freed (the embedder's batch arrays, the engine's graph-building buffers) in its arenas:
    measured, trimming left 19 MB less resident after a first build of 20k tools, 78 MB after
    the index alone built its graph over 100k. Later reloads' transients take some of it back
    (after five unchanged reloads at 20k tools RSS was the same with or without), so this
    lowers the resident set between reloads, not the peak of one. Runs in a worker thread."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _unchanged(old: CatalogTool | None, row: Tool, server: str, enabled: bool) -> CatalogTool | None:
    """The previous reload's tool when its definition is the same (the hash covers every
    definition field), with the row's id and state. Keeping it, rather than the row's fresh
    copy of the schema and texts, keeps them shared with the retriever's record: a new copy
    each reload beside the retriever's held ~1.3 KB a tool more (13 MB at 10k tools)."""
    if (
        old is None
        or old.definition_hash != row.definition_hash
        or old.server != server
        or old.name != row.name
    ):
        return None
    if old.id == row.id and old.enabled == enabled:
        return old
    return dataclasses.replace(old, id=row.id, enabled=enabled)


def _index_filter(filters: SearchFilters | None) -> IndexFilter | None:
    if filters is None or filters == SearchFilters():
        return None
    scope = filters.scope
    return IndexFilter(
        servers=frozenset([filters.server]) if filters.server is not None else None,
        categories=frozenset([filters.category]) if filters.category is not None else None,
        read_only=filters.read_only,
        scope=IndexScope(servers=scope.servers, tool_ids=scope.tools) if scope is not None else None,
    )
