"""The vector index on qdrant-edge: Qdrant's engine embedded in process, persisted in a directory.

Writes go to an appendable segment searched exhaustively; :meth:`EdgeVectorIndex.optimize`
builds HNSW over what is there (the embedded engine runs no background optimiser). Reopening
loads the segments as they are, without re-indexing.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import qdrant_edge as qe
from numpy.typing import NDArray

from retrieval.index import (
    BOOL_FIELDS,
    KEYWORD_FIELDS,
    TOOL_ID_KEY,
    UPSERT_BATCH,
    FilterPlan,
    HnswSettings,
    IndexedTool,
    IndexFilter,
    IndexInUseError,
    IndexMismatchError,
    Match,
    check_layout,
    check_payload_update,
    plan_filter,
    point_id,
    stored_payload,
    vector_values,
)

if TYPE_CHECKING:
    from qdrant_edge import ConditionType, NamedVector, PointId

_SCROLL_PAGE = 1024


class EdgeVectorIndex:
    optimizes_in_background = False
    """A :class:`retrieval.index.VectorIndex` stored under ``path`` (created if absent).

    Thread-safe: the engine synchronises internally, so the gateway's worker threads may
    search while another thread writes (all but :meth:`optimize`, which reopens the shard).
    """

    def __init__(
        self,
        path: Path,
        *,
        dim: int,
        vector_names: Sequence[str],
        hnsw: HnswSettings | None = None,
    ) -> None:
        """Open the index at ``path``, or create it there.

        Raises :class:`IndexMismatchError` if the stored index has another dim or vector names,
        :class:`IndexInUseError` if another open index (in any process) holds ``path``.
        """
        self._names = check_layout(dim, vector_names)
        self._dim = dim
        self._hnsw = hnsw or HnswSettings()
        self._path = path
        # Held while the shard is reopened (see optimize): a count from outside the catalog's
        # lock (gateway/scoping.py) then waits for the new shard instead of hitting a closed one.
        self._reopening = threading.Lock()
        self._lock_fd: int | None = _lock(path)
        try:
            self._shard: qe.EdgeShard | None = _open_shard(path, _config(dim, self._names, self._hnsw))
            self._ensure_payload_indexes()
        except BaseException:
            self._unlock()
            raise

    @property
    def vector_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def shard(self) -> qe.EdgeShard:
        """The open engine shard (for diagnostics); RuntimeError once closed."""
        if self._shard is None:
            raise RuntimeError(f"the index at {self._path} is closed")
        return self._shard

    # -- writes ------------------------------------------------------------------------------

    def upsert(self, tools: Sequence[IndexedTool]) -> None:
        """Insert or wholly replace tools, in batches."""
        for start in range(0, len(tools), UPSERT_BATCH):
            points = [self._point(tool) for tool in tools[start : start + UPSERT_BATCH]]
            self.shard.update(qe.UpdateOperation.upsert_points(points))

    def update_vectors(self, tool_id: str, vectors: Mapping[str, NDArray[np.float32]]) -> None:
        """Replace some named vectors of one tool; its payload and other vectors stay."""
        named: dict[str, NamedVector] = {
            name: vector_values(name, v, self._dim, self._names) for name, v in vectors.items()
        }
        if not named:
            return
        pid = point_id(tool_id)
        # The engine raises a bare Exception for an unknown point; check first for a clear KeyError.
        if not self.shard.retrieve([pid], False, False):
            raise KeyError(tool_id)
        self.shard.update(qe.UpdateOperation.update_vectors([qe.PointVectors(pid, named)]))

    def set_payload(self, tool_ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        """Set payload fields on the stored tools among ``tool_ids``."""
        check_payload_update(payload)
        ids: list[PointId] = [point_id(t) for t in tool_ids]
        existing: list[PointId] = [record.id for record in self.shard.retrieve(ids, False, False)]
        if existing and payload:
            self.shard.update(qe.UpdateOperation.set_payload(existing, dict(payload)))

    def delete(self, tool_ids: Sequence[str]) -> None:
        """Remove tools at once."""
        if tool_ids:
            ids: list[PointId] = [point_id(t) for t in tool_ids]
            self.shard.update(qe.UpdateOperation.delete_points(ids))

    # -- reads -------------------------------------------------------------------------------

    def search(
        self,
        vector_name: str,
        query: NDArray[np.float32],
        limit: int,
        flt: IndexFilter | None = None,
        *,
        exact: bool = False,
    ) -> list[tuple[str, float]]:
        """The most cosine-similar tools, filtered inside the engine."""
        return self.search_batch(vector_name, np.asarray(query)[None, :], limit, flt, exact=exact)[0]

    def search_batch(
        self,
        vector_name: str,
        queries: NDArray[np.float32],
        limit: int,
        flt: IndexFilter | None = None,
        *,
        exact: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """One planned engine batch for all queries (they share a pass over the segments)."""
        rows = [vector_values(vector_name, q, self._dim, self._names) for q in np.asarray(queries)]
        plan = plan_filter(flt)
        if limit <= 0 or plan.matches_nothing or not rows:
            return [[] for _ in rows]
        params = qe.SearchParams(hnsw_ef=self._hnsw.hnsw_ef, exact=exact)
        engine_filter = _edge_filter(plan)
        requests = [
            qe.QueryRequest(
                limit=limit,
                query=qe.Query.Nearest(row, using=vector_name),
                filter=engine_filter,
                params=params,
                with_payload=[TOOL_ID_KEY],
            )
            for row in rows
        ]
        answers = self.shard.query_batch(qe.QueryBatchRequest(requests))
        return [[(_tool_id(p.payload), float(p.score)) for p in answer] for answer in answers]

    def get_vectors(self, tool_ids: Sequence[str], vector_name: str) -> dict[str, NDArray[np.float32]]:
        """Stored vectors of one name by tool id."""
        if vector_name not in self._names:
            raise ValueError(f"unknown vector name {vector_name!r}; the index has {self._names}")
        ids: list[PointId] = [point_id(t) for t in tool_ids]
        out: dict[str, NDArray[np.float32]] = {}
        for record in self.shard.retrieve(ids, [TOOL_ID_KEY], [vector_name]):
            vectors = record.vector
            values = vectors.get(vector_name) if isinstance(vectors, dict) else None
            if isinstance(values, list) and values:
                out[_tool_id(record.payload)] = np.asarray(values, dtype=np.float32)
        return out

    def get_payloads(self, tool_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored payloads by tool id."""
        ids: list[PointId] = [point_id(t) for t in tool_ids]
        records = self.shard.retrieve(ids, True, False)
        return {_tool_id(r.payload): dict(r.payload or {}) for r in records}

    def ids(self) -> set[str]:
        """Every stored tool id, read page by page."""
        out: set[str] = set()
        offset: PointId | None = None
        while True:
            request = qe.ScrollRequest(offset=offset, limit=_SCROLL_PAGE, with_payload=[TOOL_ID_KEY])
            records, offset = self.shard.scroll(request)
            out.update(_tool_id(r.payload) for r in records)
            if offset is None:
                return out

    def count(self, flt: IndexFilter | None = None) -> int:
        """Exact count of matching tools; every stored tool when ``flt`` is None."""
        plan = plan_filter(flt, default_enabled_only=False)
        if plan.matches_nothing:
            return 0
        with self._reopening:
            return self.shard.count(qe.CountRequest(exact=True, filter=_edge_filter(plan)))

    # -- lifecycle ---------------------------------------------------------------------------

    def optimize(self) -> None:
        """Merge segments and build HNSW (blocking; tens of seconds at 100k tools).

        The engine keeps the merged-away segments' files mapped afterwards (at 100k tools
        ~300 MB of resident pages), so the shard is reopened (~0.3 s) when anything was
        merged. It is reopened before the build as well: what the writes touched (the
        write-ahead log's pages, write buffers) is then released instead of staying resident
        beside the segment the build writes (measured at 100k tools, the index alone: the
        build's peak RSS 655-658 MB instead of 724-728; that reopen took 1.9 s). Must not
        overlap other calls on this index but :meth:`count`, which waits out a reopen (the
        catalog's lock holds the rest off)."""
        self._reopen()
        if self.shard.optimize():
            self._reopen()

    def _reopen(self) -> None:
        with self._reopening:
            self.shard.flush()
            self.shard.close()
            self._shard = None
            self._shard = _open_shard(self._path, _config(self._dim, self._names, self._hnsw))

    def close(self) -> None:
        """Flush to disk and release the shard; idempotent."""
        if self._shard is not None:
            self._shard.flush()
            self._shard.close()
            self._shard = None
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _point(self, tool: IndexedTool) -> qe.Point:
        named: dict[str, NamedVector] = {
            name: vector_values(name, v, self._dim, self._names) for name, v in tool.vectors.items()
        }
        return qe.Point(point_id(tool.tool_id), named, stored_payload(tool))

    def _ensure_payload_indexes(self) -> None:
        present = set(self.shard.info().payload_schema)
        wanted = [(k, qe.PayloadSchemaType.Keyword) for k in KEYWORD_FIELDS]
        wanted += [(k, qe.PayloadSchemaType.Bool) for k in BOOL_FIELDS]
        for key, schema in wanted:
            if key not in present:
                self.shard.update(qe.UpdateOperation.create_field_index(key, schema))


def _config(dim: int, names: tuple[str, ...], hnsw: HnswSettings) -> qe.EdgeConfig:
    optimizers = None
    if hnsw.indexing_threshold_kb is not None:
        optimizers = qe.EdgeOptimizersConfig(indexing_threshold=hnsw.indexing_threshold_kb)
    datatype = qe.VectorStorageDatatype.Float16 if hnsw.float16 else qe.VectorStorageDatatype.Float32
    return qe.EdgeConfig(
        vectors={
            name: qe.EdgeVectorParams(
                size=dim,
                distance=qe.Distance.Cosine,
                datatype=datatype,
                memory=qe.Memory.Cold if name in hnsw.cold_vectors else None,
            )
            for name in names
        },
        hnsw_config=qe.HnswIndexConfig(
            m=hnsw.m, ef_construct=hnsw.ef_construct, full_scan_threshold=hnsw.full_scan_threshold_kb
        ),
        optimizers=optimizers,
        max_search_threads=hnsw.search_threads,
    )


def _lock(path: Path) -> int:
    """Hold ``<path>.lock`` exclusively: the engine is single-writer, and its own WAL lock
    fails with an opaque error, so a second opener gets a clear one instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise IndexInUseError(f"the vector index at {path} is open in another process") from None
    return fd


def _open_shard(path: Path, config: qe.EdgeConfig) -> qe.EdgeShard:
    """Load the shard at ``path`` (checking it against ``config``) or create it."""
    if not (path.is_dir() and any(path.iterdir())):
        path.mkdir(parents=True, exist_ok=True)
        return qe.EdgeShard.create(str(path), config)
    try:
        return qe.EdgeShard.load(str(path), config)
    except Exception as error:  # the binding raises bare Exceptions; only this one is ours
        if "incompatible" in str(error).lower():
            raise IndexMismatchError(f"the vector index at {path} does not fit: {error}") from error
        raise


def _edge_filter(plan: FilterPlan) -> qe.Filter | None:
    must: list[ConditionType] = [_condition(m) for m in plan.must]
    if plan.point_ids is not None:
        ids: set[PointId] = set(plan.point_ids)
        must.append(qe.HasIdCondition(ids))
    if plan.scoped:  # one nested OR group: the caller's servers or tools
        should: list[ConditionType] = [_condition(m) for m in plan.any_of]
        if plan.any_of_ids:
            scoped_ids: set[PointId] = set(plan.any_of_ids)
            should.append(qe.HasIdCondition(scoped_ids))
        must.append(qe.Filter(should=should))
    must_not: list[ConditionType] = [_condition(m) for m in plan.must_not]
    if not must and not must_not:
        return None
    return qe.Filter(must=must or None, must_not=must_not or None)


def _condition(match: Match) -> qe.FieldCondition:
    if isinstance(match.values, bool):
        # The binding turns a Python bool into the integer 1/0, which never matches a stored
        # JSON bool; a numpy bool is extracted as a real bool.
        return qe.FieldCondition(match.key, match=qe.MatchValue(np.bool_(match.values)))  # type: ignore[arg-type]
    return qe.FieldCondition(match.key, match=qe.MatchAny(sorted(match.values)))


def _tool_id(payload: dict[str, Any] | None) -> str:
    value = (payload or {}).get(TOOL_ID_KEY)
    if not isinstance(value, str):
        raise RuntimeError(f"a stored point has no {TOOL_ID_KEY!r} payload")
    return value
