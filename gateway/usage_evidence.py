"""Usage evidence between the retriever and the registry.

Two stores, both shared by replicas through the database:

- per tool, the count and running sum of the query embeddings that used it (the usage
  vector, registry ``tool_usage``), added to atomically;
- per request, which tools it used and its query embedding (registry/request_log.py), from
  which the retriever's past requests (nearest-query votes, co-usage) are rebuilt at start.

A use is stored in the request log first and in the tool's evidence second: a replica that
sees the evidence change (its registry watcher) then finds the request rows already there.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import anyio
import numpy as np

from registry.models import utcnow
from registry.repository import Registry
from registry.request_log import RequestLog
from retrieval.past import request_key
from retrieval.pipeline import Retriever
from retrieval.usage import UsageState, Vector

_CLOCK_MARGIN = timedelta(seconds=60)  # replicas stamp usage rows with their own clocks


class UsageEvidence:
    """Records uses into the retriever and the registry, and loads what others recorded.
    ``lock`` is the catalog's: it serialises every change to the retriever."""

    def __init__(self, registry: Registry, retriever: Retriever, lock: anyio.Lock) -> None:
        self._registry = registry
        self._requests = RequestLog(registry)
        self._retriever = retriever
        self._lock = lock
        self._seen = datetime.min.replace(tzinfo=UTC)  # newest evidence taken in

    async def load(self) -> None:
        """At start: every tool's evidence, and the newest past requests."""
        self._seen = utcnow()
        dim = self._retriever.embedder.dim
        stored = await self._registry.load_usage()
        states = {
            name: state
            for name, (count, total) in stored.items()
            if (state := usage_state(count, total, dim)) is not None
        }
        uses = await self._requests.recent(self._retriever.past.capacity)
        if states or uses:
            async with self._lock:
                await anyio.to_thread.run_sync(self._retriever.load_usage, states)
                await anyio.to_thread.run_sync(self._remember, uses)

    def _remember(self, uses: Sequence[tuple[str, str, bytes]]) -> None:
        dim = self._retriever.embedder.dim
        for request, name, vector in uses:
            if len(vector) == 4 * dim:  # rows stored by another embedder are not comparable
                self._retriever.past.add(name, np.frombuffer(vector, dtype=np.float32).copy(), request)

    async def record(self, uses: Sequence[tuple[str, Vector]]) -> int:
        """Uses (exposed tool name, query embedding): usage vectors updated under one lock
        acquisition, stored evidence added once per tool. Returns how many were recorded;
        uses of tools that left the catalog are skipped."""
        latest: dict[str, UsageState] = {}
        sums: dict[str, tuple[int, Vector]] = {}
        kept: list[tuple[str, Vector]] = []

        def apply() -> None:
            for name, vector in uses:
                state = self._retriever.record_use(name, vector)
                if state is None:
                    continue  # the tool left the catalog meanwhile
                kept.append((name, vector))
                latest[name] = state
                count, total = sums.get(name, (0, np.zeros_like(vector, dtype=np.float32)))
                sums[name] = (count + 1, total + np.asarray(vector, dtype=np.float32))

        async with self._lock:
            await anyio.to_thread.run_sync(apply)
        await self._requests.add([(request_key(v), name, _bytes(v)) for name, v in kept])
        recorded = 0
        for name, (count, total) in sums.items():
            if await self._add(name, count, total, latest[name]):
                recorded += count
        return recorded

    async def _add(self, exposed_name: str, count: int, total: Vector, local: UsageState) -> bool:
        """Add uses to the stored evidence, which other replicas add to as well: when the merged
        total differs from ours, theirs came in between, so adopt the merged one."""
        merged = await self._registry.add_usage(exposed_name, count, _bytes(total))
        if merged is None:
            return False
        stored_count, stored_total = merged
        if stored_count != local.count:
            state = usage_state(stored_count, stored_total, self._retriever.embedder.dim)
            if state is not None:
                async with self._lock:
                    await anyio.to_thread.run_sync(self._retriever.load_usage, {exposed_name: state})
        return True

    async def reload(self) -> None:
        """Take in evidence and requests other replicas stored since the last look (with a
        margin for their clocks); what we already hold changes nothing."""
        since = self._seen - _CLOCK_MARGIN
        rows = await self._registry.load_usage_since(since)
        states: dict[str, UsageState] = {}
        for name, (count, total, updated_at) in rows.items():
            self._seen = max(self._seen, updated_at)
            ours = self._retriever.usage.get(name)
            if ours is not None and ours.count == count:
                continue
            state = usage_state(count, total, self._retriever.embedder.dim)
            if state is not None:
                states[name] = state
        past = self._retriever.past
        new = [row for row in await self._requests.since(since) if not past.knows(row[1], row[2])]
        vectors = await self._requests.vectors([row_id for row_id, _, _ in new]) if new else {}
        uses = [(request, name, vectors[row_id]) for row_id, request, name in new if row_id in vectors]
        if states or uses:
            async with self._lock:
                if states:
                    await anyio.to_thread.run_sync(self._retriever.load_usage, states)
                await anyio.to_thread.run_sync(self._remember, uses)


def usage_state(count: int, total: bytes, dim: int) -> UsageState | None:
    if len(total) != 4 * dim:
        return None  # stored by another embedder: not comparable
    return UsageState(total=np.frombuffer(total, dtype=np.float32).copy(), count=count)


def _bytes(vector: Vector) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()
