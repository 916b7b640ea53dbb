"""The vector index on qdrant-client: a Qdrant server collection, or the client's local mode.

Local mode (``location=":memory:"``) implements the server API with exact search in Python:
it serves the contract tests; payload indexes and search parameters are left out there
because local mode ignores them (with a warning each time).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from qdrant_client import QdrantClient
from qdrant_client import models as qm
from qdrant_client.http.exceptions import UnexpectedResponse

from retrieval.index import (
    BOOL_FIELDS,
    KEYWORD_FIELDS,
    TOOL_ID_KEY,
    UPSERT_BATCH,
    FilterPlan,
    HnswSettings,
    IndexedTool,
    IndexFilter,
    IndexMismatchError,
    Match,
    check_layout,
    check_payload_update,
    plan_filter,
    point_id,
    stored_payload,
    vector_values,
)

_SCROLL_PAGE = 1024
_OPTIMIZE_POLL_S = 0.5


class QdrantVectorIndex:
    optimizes_in_background = True
    """A :class:`retrieval.index.VectorIndex` in one collection of a Qdrant server (or local mode)."""

    def __init__(
        self,
        client: QdrantClient,
        *,
        collection: str,
        dim: int,
        vector_names: Sequence[str],
        hnsw: HnswSettings | None = None,
        owns_client: bool = True,
    ) -> None:
        """Use ``collection``, creating it (named cosine vectors, payload indexes) if absent.

        Raises :class:`IndexMismatchError` if it exists with another dim or vector names.
        """
        self._names = check_layout(dim, vector_names)
        self._dim = dim
        self._hnsw = hnsw or HnswSettings()
        self._client = client
        self._collection = collection
        self._owns_client = owns_client
        self._closed = False
        options = client.init_options
        self._local = options.get("location") == ":memory:" or options.get("path") is not None
        self._ensure_collection()

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        api_key: str | None = None,
        collection: str = "tools",
        dim: int,
        vector_names: Sequence[str],
        hnsw: HnswSettings | None = None,
    ) -> QdrantVectorIndex:
        """The index in ``collection`` on the Qdrant server at ``url``."""
        client = QdrantClient(url=url, api_key=api_key)
        return cls(client, collection=collection, dim=dim, vector_names=vector_names, hnsw=hnsw)

    @classmethod
    def in_memory(
        cls, *, dim: int, vector_names: Sequence[str], collection: str = "tools"
    ) -> QdrantVectorIndex:
        """A throw-away index in qdrant-client's local mode (exact search; for tests)."""
        client = QdrantClient(location=":memory:")
        return cls(client, collection=collection, dim=dim, vector_names=vector_names)

    @property
    def vector_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def dim(self) -> int:
        return self._dim

    # -- writes ------------------------------------------------------------------------------

    def upsert(self, tools: Sequence[IndexedTool]) -> None:
        """Insert or wholly replace tools, in batches."""
        for start in range(0, len(tools), UPSERT_BATCH):
            points = [self._point(tool) for tool in tools[start : start + UPSERT_BATCH]]
            self._client.upsert(self._collection, points, wait=True)

    def update_vectors(self, tool_id: str, vectors: Mapping[str, NDArray[np.float32]]) -> None:
        """Replace some named vectors of one tool; its payload and other vectors stay."""
        named: dict[str, list[float]] = {
            name: vector_values(name, v, self._dim, self._names) for name, v in vectors.items()
        }
        if not named:
            return
        pid = str(point_id(tool_id))
        # Local mode raises KeyError and a server 404 for an unknown point: check first, alike.
        if not self._client.retrieve(self._collection, [pid], with_payload=False):
            raise KeyError(tool_id)
        vector: qm.VectorStruct = dict(named)
        self._client.update_vectors(self._collection, [qm.PointVectors(id=pid, vector=vector)], wait=True)

    def set_payload(self, tool_ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        """Set payload fields on the stored tools among ``tool_ids``."""
        check_payload_update(payload)
        ids: list[qm.ExtendedPointId] = [str(point_id(t)) for t in tool_ids]
        existing = [r.id for r in self._client.retrieve(self._collection, ids, with_payload=False)]
        if existing and payload:
            self._client.set_payload(self._collection, dict(payload), points=existing, wait=True)

    def delete(self, tool_ids: Sequence[str]) -> None:
        """Remove tools at once."""
        if tool_ids:
            ids: list[qm.ExtendedPointId] = [str(point_id(t)) for t in tool_ids]
            self._client.delete(self._collection, ids, wait=True)

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
        """All queries in one request."""
        rows = [vector_values(vector_name, q, self._dim, self._names) for q in np.asarray(queries)]
        plan = plan_filter(flt)
        if limit <= 0 or plan.matches_nothing or not rows:
            return [[] for _ in rows]
        params = None if self._local else qm.SearchParams(hnsw_ef=self._hnsw.hnsw_ef, exact=exact)
        engine_filter = _qdrant_filter(plan)
        requests = [
            qm.QueryRequest(
                query=row,
                using=vector_name,
                limit=limit,
                filter=engine_filter,
                params=params,
                with_payload=[TOOL_ID_KEY],
            )
            for row in rows
        ]
        answers = self._client.query_batch_points(self._collection, requests)
        return [[(_tool_id(p.payload), float(p.score)) for p in answer.points] for answer in answers]

    def get_vectors(self, tool_ids: Sequence[str], vector_name: str) -> dict[str, NDArray[np.float32]]:
        """Stored vectors of one name by tool id."""
        if vector_name not in self._names:
            raise ValueError(f"unknown vector name {vector_name!r}; the index has {self._names}")
        ids: list[qm.ExtendedPointId] = [str(point_id(t)) for t in tool_ids]
        records = self._client.retrieve(
            self._collection, ids, with_payload=[TOOL_ID_KEY], with_vectors=[vector_name]
        )
        out: dict[str, NDArray[np.float32]] = {}
        for record in records:
            vectors = record.vector
            values = vectors.get(vector_name) if isinstance(vectors, dict) else None
            if isinstance(values, list) and values:
                out[_tool_id(record.payload)] = np.asarray(values, dtype=np.float32)
        return out

    def get_payloads(self, tool_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored payloads by tool id."""
        ids: list[qm.ExtendedPointId] = [str(point_id(t)) for t in tool_ids]
        records = self._client.retrieve(self._collection, ids, with_payload=True)
        return {_tool_id(r.payload): dict(r.payload or {}) for r in records}

    def ids(self) -> set[str]:
        """Every stored tool id, read page by page."""
        out: set[str] = set()
        offset: qm.ExtendedPointId | None = None
        while True:
            records, next_offset = self._client.scroll(
                self._collection, limit=_SCROLL_PAGE, offset=offset, with_payload=[TOOL_ID_KEY]
            )
            out.update(_tool_id(r.payload) for r in records)
            if next_offset is None:
                return out
            offset = str(next_offset) if not isinstance(next_offset, int) else next_offset

    def count(self, flt: IndexFilter | None = None) -> int:
        """Exact count of matching tools; every stored tool when ``flt`` is None."""
        plan = plan_filter(flt, default_enabled_only=False)
        if plan.matches_nothing:
            return 0
        return self._client.count(self._collection, count_filter=_qdrant_filter(plan), exact=True).count

    # -- lifecycle ---------------------------------------------------------------------------

    def optimize(self, timeout_s: float = 600.0) -> None:
        """Wait (bounded) until the server's background optimiser has indexed everything."""
        deadline = time.monotonic() + timeout_s
        while self._client.get_collection(self._collection).status != qm.CollectionStatus.GREEN:
            if time.monotonic() > deadline:
                raise TimeoutError(f"collection {self._collection} still optimising after {timeout_s} s")
            time.sleep(_OPTIMIZE_POLL_S)

    def close(self) -> None:
        """Release the client if this index created it; idempotent."""
        if not self._closed and self._owns_client:
            self._client.close()
        self._closed = True

    def _point(self, tool: IndexedTool) -> qm.PointStruct:
        vector: dict[str, list[float]] = {
            name: vector_values(name, v, self._dim, self._names) for name, v in tool.vectors.items()
        }
        named: qm.VectorStruct = dict(vector)
        return qm.PointStruct(id=str(point_id(tool.tool_id)), vector=named, payload=stored_payload(tool))

    def _ensure_collection(self) -> None:
        if not self._client.collection_exists(self._collection):
            try:
                self._create_collection()
            except UnexpectedResponse as error:
                # Another replica created it first (409): check it like any existing one.
                if error.status_code != 409:
                    raise
        self._check_collection()
        if not self._local:
            for key in KEYWORD_FIELDS:
                self._client.create_payload_index(self._collection, key, qm.PayloadSchemaType.KEYWORD)
            for key in BOOL_FIELDS:
                self._client.create_payload_index(self._collection, key, qm.PayloadSchemaType.BOOL)

    def _create_collection(self) -> None:
        hnsw = self._hnsw
        self._client.create_collection(
            self._collection,
            vectors_config={
                name: qm.VectorParams(
                    size=self._dim,
                    distance=qm.Distance.COSINE,
                    datatype=qm.Datatype.FLOAT16 if hnsw.float16 else qm.Datatype.FLOAT32,
                    on_disk=True if name in hnsw.cold_vectors else None,  # see HnswSettings
                )
                for name in self._names
            },
            hnsw_config=qm.HnswConfigDiff(
                m=hnsw.m, ef_construct=hnsw.ef_construct, full_scan_threshold=hnsw.full_scan_threshold_kb
            ),
            optimizers_config=qm.OptimizersConfigDiff(indexing_threshold=hnsw.indexing_threshold_kb),
        )

    def _check_collection(self) -> None:
        stored = self._client.get_collection(self._collection).config.params.vectors
        layout = stored if isinstance(stored, dict) else {"": stored} if stored is not None else {}
        found = {name: (p.size, p.distance) for name, p in layout.items()}
        wanted = {name: (self._dim, qm.Distance.COSINE) for name in self._names}
        if found != wanted:
            raise IndexMismatchError(
                f"collection {self._collection!r} holds vectors {found}, this index needs {wanted}"
            )


def _qdrant_filter(plan: FilterPlan) -> qm.Filter | None:
    must: list[qm.Condition] = [_condition(m) for m in plan.must]
    if plan.point_ids is not None:
        must.append(qm.HasIdCondition(has_id=[str(pid) for pid in plan.point_ids]))
    if plan.scoped:  # one nested OR group: the caller's servers or tools
        should: list[qm.Condition] = [_condition(m) for m in plan.any_of]
        if plan.any_of_ids:
            should.append(qm.HasIdCondition(has_id=[str(pid) for pid in plan.any_of_ids]))
        must.append(qm.Filter(should=should))
    must_not: list[qm.Condition] = [_condition(m) for m in plan.must_not]
    if not must and not must_not:
        return None
    return qm.Filter(must=must or None, must_not=must_not or None)


def _condition(match: Match) -> qm.FieldCondition:
    if isinstance(match.values, bool):
        return qm.FieldCondition(key=match.key, match=qm.MatchValue(value=match.values))
    return qm.FieldCondition(key=match.key, match=qm.MatchAny(any=sorted(match.values)))


def _tool_id(payload: Mapping[str, Any] | None) -> str:
    value = (payload or {}).get(TOOL_ID_KEY)
    if not isinstance(value, str):
        raise RuntimeError(f"a stored point has no {TOOL_ID_KEY!r} payload")
    return value
