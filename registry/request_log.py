"""The request log: which tools each past request used, and its query embedding.

The retriever rebuilds its past requests (nearest-query votes, the intent stage's co-usage)
from the newest rows at start and takes in other replicas' rows as they arrive. One row per
(request, tool): storing a use twice is a no-op, so a batch retried after a failure, or two
replicas recording the same use, count it once. Old rows are pruned as new ones come.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import Executable

from .models import RequestUse, Tool
from .repository import Registry

KEEP_ROWS = 30_000  # the retriever keeps 10,000 requests; a request is 1-3 uses
_PRUNE_EVERY = 1_000  # rows stored between prunes


class RequestLog:
    def __init__(self, registry: Registry, *, keep: int = KEEP_ROWS) -> None:
        self._registry = registry
        self._keep = keep
        self._since_prune = 0

    async def add(self, uses: Sequence[tuple[str, str, bytes]]) -> int:
        """Store uses (request key, exposed tool name, float32 query vector); uses of tools
        no longer registered, and uses already stored, are skipped. Returns how many rows the
        batch offered for storage."""
        if not uses:
            return 0
        async with self._registry.transaction() as session:
            names = {name for _, name, _ in uses}
            found = await session.execute(
                select(Tool.exposed_name, Tool.id).where(Tool.exposed_name.in_(names))
            )
            ids: dict[str, int] = {name: tool_id for name, tool_id in found.all()}
            rows = [
                {"request": request, "tool_id": ids[name], "vector": vector}
                for request, name, vector in uses
                if name in ids
            ]
            if rows:
                await session.execute(_insert_new(session, rows))
                self._since_prune += len(rows)
                if self._since_prune >= _PRUNE_EVERY:
                    await self._prune(session)
                    self._since_prune = 0
            await session.commit()
            return len(rows)

    async def _prune(self, session: AsyncSession) -> None:
        newest = select(func.max(RequestUse.id)).scalar_subquery()
        await session.execute(delete(RequestUse).where(RequestUse.id <= newest - self._keep))

    async def recent(self, requests: int) -> list[tuple[str, str, bytes]]:
        """The uses of the newest ``requests`` requests (by their latest stored use), oldest
        first: (request key, exposed tool name, vector). Read a page at a time."""
        newest_first: list[tuple[str, str, bytes]] = []
        seen: set[str] = set()
        query = (
            select(RequestUse.request, Tool.exposed_name, RequestUse.vector)
            .join(Tool, Tool.id == RequestUse.tool_id)
            .order_by(RequestUse.id.desc())
            .execution_options(yield_per=1000)
        )
        async with self._registry.transaction() as session:
            result = await session.stream(query)
            try:
                async for request, name, vector in result:
                    if request not in seen:
                        if len(seen) >= requests:
                            break
                        seen.add(request)
                    newest_first.append((request, name, vector))
            finally:
                await result.close()
        newest_first.reverse()
        return newest_first

    async def since(self, at: datetime) -> list[tuple[int, str, str]]:
        """Uses stored at or after ``at``, oldest first: (row id, request key, tool name)."""
        async with self._registry.transaction() as session:
            rows = await session.execute(
                select(RequestUse.id, RequestUse.request, Tool.exposed_name)
                .join(Tool, Tool.id == RequestUse.tool_id)
                .where(RequestUse.created_at >= at)
                .order_by(RequestUse.id)
            )
            return [(row_id, request, name) for row_id, request, name in rows.all()]

    async def vectors(self, row_ids: Sequence[int]) -> dict[int, bytes]:
        """The query vectors of the given rows."""
        out: dict[int, bytes] = {}
        async with self._registry.transaction() as session:
            for start in range(0, len(row_ids), 1000):
                part = row_ids[start : start + 1000]
                rows = await session.execute(
                    select(RequestUse.id, RequestUse.vector).where(RequestUse.id.in_(part))
                )
                out.update((row_id, vector) for row_id, vector in rows.all())
        return out


def _insert_new(session: AsyncSession, rows: list[dict[str, object]]) -> Executable:
    """INSERT ... ON CONFLICT DO NOTHING on (request, tool) in the session's dialect."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    return insert(RequestUse).values(rows).on_conflict_do_nothing(index_elements=["request", "tool_id"])
