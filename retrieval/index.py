"""The vector index: named dense vectors per tool, a filterable payload, cosine search.

Two implementations share this interface and one contract test suite:
:class:`retrieval.index_edge.EdgeVectorIndex` (Qdrant's engine embedded in process, persisted
in a directory) and :class:`retrieval.index_qdrant.QdrantVectorIndex` (a Qdrant server, or
qdrant-client's in-memory local mode for tests). :func:`open_index` picks one.

Filters are always evaluated inside the engine's query, so a filtered search with ``limit=k``
returns ``k`` matching tools whenever that many exist, however many better ones are excluded.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

# Qdrant point ids must be ints or UUIDs: a tool id maps to a stable UUIDv5 in this namespace.
POINT_NAMESPACE = uuid.UUID("6f1d8d2c-51a4-4c55-9a7e-2f0b9c3e7a41")

TOOL_ID_KEY = "tool_id"
# Payload fields the filters use; both engines index them.
KEYWORD_FIELDS = ("server", "category")
BOOL_FIELDS = ("enabled", "read_only", "destructive")

UPSERT_BATCH = 256  # points per engine write: bounded request size, few round trips


class IndexMismatchError(Exception):
    """The stored index was built with another dimension or other vector names: rebuild it."""


class IndexInUseError(Exception):
    """An embedded index directory is already open (this engine allows one opener)."""


@dataclass(frozen=True)
class IndexedTool:
    """One tool as stored: its named vectors (L2-normalised, one dimension) and its payload.

    ``payload`` holds at least ``server`` (str) and ``enabled`` (bool), and usually
    ``category``, ``read_only`` and ``destructive`` (None when unknown); see :func:`tool_payload`.
    A named vector may be absent (no usage yet): the tool is still found through the others.
    """

    tool_id: str
    vectors: Mapping[str, NDArray[np.float32]]
    payload: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not self.tool_id:
            raise ValueError("tool_id must be a non-empty string")
        if not self.vectors:
            raise ValueError(f"{self.tool_id}: at least one named vector is needed")
        if not isinstance(self.payload.get("server"), str):
            raise ValueError(f"{self.tool_id}: payload needs a 'server' string")
        if not isinstance(self.payload.get("enabled"), bool):
            raise ValueError(f"{self.tool_id}: payload needs an 'enabled' bool")
        if self.payload.get(TOOL_ID_KEY, self.tool_id) != self.tool_id:
            raise ValueError(f"{self.tool_id}: payload 'tool_id' disagrees with the tool id")


def tool_payload(
    server: str,
    *,
    enabled: bool = True,
    category: str | None = None,
    read_only: bool | None = None,
    destructive: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The payload of an :class:`IndexedTool`, with every field the filters use."""
    return {
        "server": server,
        "enabled": enabled,
        "category": category,
        "read_only": read_only,
        "destructive": destructive,
        **extra,
    }


@dataclass(frozen=True)
class IndexScope:
    """What a caller may reach: the tools of ``servers`` plus the tools in ``tool_ids``
    (either grants a tool). An empty scope reaches nothing."""

    servers: frozenset[str] = frozenset()
    tool_ids: frozenset[str] = frozenset()

    def allows(self, server: str, tool_id: str) -> bool:
        return server in self.servers or tool_id in self.tool_ids


@dataclass(frozen=True)
class IndexFilter:
    """Which tools a search or count may return; all fields combine with AND.

    ``read_only`` matches the stored value exactly: tools whose hint is unknown (None) match
    neither True nor False. ``exclude_destructive`` drops tools whose ``destructive`` hint is
    True (unknown ones stay). Disabled tools are excluded unless ``include_disabled``.
    ``tool_ids`` restricts to a candidate pool (second-stage scoring). ``scope`` restricts to
    what a caller may reach (see :class:`IndexScope`); unlike the other fields it is an OR of
    servers and tool ids, evaluated inside the engine's query like the rest.
    """

    servers: frozenset[str] | None = None
    exclude_servers: frozenset[str] = frozenset()
    categories: frozenset[str] | None = None
    read_only: bool | None = None
    include_disabled: bool = False
    tool_ids: frozenset[str] | None = None
    exclude_destructive: bool = False
    scope: IndexScope | None = None


@dataclass(frozen=True)
class HnswSettings:
    """HNSW build and search parameters (measured by ``bench/index_speed.py``).

    Filtered HNSW loses recall as a filter gets selective (100k embedding-like points,
    ``hnsw_ef=512``: recall@10 0.997 unfiltered, 0.95 with a filter passing 40%), while exact
    search costs in proportion to the bytes it scans. So the engine searches a segment
    exactly when the vectors passing the filter take under ``full_scan_threshold_kb``
    (37.5 MB: 50k 384-dim float16 vectors; decided per segment and query, fixed when HNSW is
    built; at 100k tools an exact scan took ~11 ms, HNSW with ef 512 ~6 ms),
    and ``hnsw_ef=512`` keeps recall@10 >= 0.99 above that. The edge engine and a real
    server use these; qdrant-client's local mode is always exact.
    """

    m: int = 16
    ef_construct: int = 100
    hnsw_ef: int = 512
    full_scan_threshold_kb: int = 37_500
    indexing_threshold_kb: int | None = None  # None: the engine's default
    # Vectors stored as float16: half the memory and scan bandwidth; at 10.5k tools the top 64
    # of every query were the same as with float32, and exact scans took 1.9 ms instead of 2.5.
    float16: bool = True
    # Threads one search may use (embedded engine). A query searches one or two segments, and
    # handing them to pool threads cost more than it saved here: 2.5 -> 1.5 ms at 10.5k tools.
    search_threads: int = 1
    # Named vectors few tools have (usage: only tools that were used) are left on disk and
    # paged in when read, instead of held in memory: the engine stores every named vector
    # densely, so at 100k tools an all-but-empty usage vector otherwise took as much memory
    # as the description vector.
    cold_vectors: tuple[str, ...] = ("usage",)


class VectorIndex(Protocol):
    """Tools' named vectors with a payload; cosine similarity search with engine-side filters."""

    # True when the engine builds its search structures by itself (a Qdrant server's
    # optimiser); False when `optimize` must be called (the embedded engine).
    optimizes_in_background: bool

    @property
    def vector_names(self) -> tuple[str, ...]: ...

    @property
    def dim(self) -> int: ...

    def upsert(self, tools: Sequence[IndexedTool]) -> None:
        """Insert or wholly replace tools (vectors absent from a tool are dropped)."""

    def update_vectors(self, tool_id: str, vectors: Mapping[str, NDArray[np.float32]]) -> None:
        """Replace some named vectors of a stored tool, keeping the rest; KeyError if unknown."""

    def set_payload(self, tool_ids: Sequence[str], payload: Mapping[str, Any]) -> None:
        """Set payload fields on stored tools (others kept); unknown tool ids are skipped."""

    def delete(self, tool_ids: Sequence[str]) -> None:
        """Remove tools; they are gone from the next search. Unknown ids are ignored."""

    def search(
        self,
        vector_name: str,
        query: NDArray[np.float32],
        limit: int,
        flt: IndexFilter | None = None,
        *,
        exact: bool = False,
    ) -> list[tuple[str, float]]:
        """The ``limit`` most cosine-similar tools as ``(tool_id, similarity)``, best first."""

    def search_batch(
        self,
        vector_name: str,
        queries: NDArray[np.float32],
        limit: int,
        flt: IndexFilter | None = None,
        *,
        exact: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """:meth:`search` for each row of ``queries`` (shape ``(m, dim)``)."""

    def get_vectors(self, tool_ids: Sequence[str], vector_name: str) -> dict[str, NDArray[np.float32]]:
        """Stored vectors by tool id; tools lacking that vector (or unknown) are left out."""

    def get_payloads(self, tool_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored payloads by tool id (including ``tool_id``); unknown ids are left out."""

    def ids(self) -> set[str]:
        """Every stored tool id."""

    def count(self, flt: IndexFilter | None = None) -> int:
        """How many tools match ``flt`` (all stored tools, disabled ones too, when None)."""

    def optimize(self) -> None:
        """Build search structures (HNSW) for what has been written so far."""

    def close(self) -> None:
        """Flush and release the engine; idempotent."""


def open_index(
    url: str | None,
    path: Path,
    *,
    dim: int,
    vector_names: Sequence[str],
    collection: str = "tools",
    api_key: str | None = None,
    hnsw: HnswSettings | None = None,
) -> VectorIndex:
    """A Qdrant server's collection when ``url`` is set, else the embedded index at ``path``.

    Raises :class:`IndexMismatchError` when what is stored has another dim or vector names.
    """
    settings = hnsw or HnswSettings()
    if url:
        from retrieval.index_qdrant import QdrantVectorIndex

        return QdrantVectorIndex.connect(
            url, api_key=api_key, collection=collection, dim=dim, vector_names=vector_names, hnsw=settings
        )
    from retrieval.index_edge import EdgeVectorIndex

    return EdgeVectorIndex(path, dim=dim, vector_names=vector_names, hnsw=settings)


# -- helpers shared by the implementations ---------------------------------------------------


def point_id(tool_id: str) -> uuid.UUID:
    """The Qdrant point id of a tool."""
    return uuid.uuid5(POINT_NAMESPACE, tool_id)


def check_layout(dim: int, vector_names: Sequence[str]) -> tuple[str, ...]:
    """Validate an index's shape; returns the names as a tuple."""
    names = tuple(vector_names)
    if dim <= 0 or not names or len(set(names)) != len(names) or not all(names):
        raise ValueError(f"need dim > 0 and distinct non-empty vector names, got {dim}, {names}")
    return names


def vector_values(name: str, vector: NDArray[Any], dim: int, names: Sequence[str]) -> list[float]:
    """A named vector as the float list engines take, after checking name, shape and values."""
    if name not in names:
        raise ValueError(f"unknown vector name {name!r}; the index has {tuple(names)}")
    array = np.asarray(vector, dtype=np.float32)
    if array.shape != (dim,):
        raise ValueError(f"vector {name!r} has shape {array.shape}, the index needs ({dim},)")
    # Cosine of a zero or non-finite vector is undefined; the engines would store garbage.
    if not np.all(np.isfinite(array)) or not np.any(array):
        raise ValueError(f"vector {name!r} must be finite and non-zero")
    values: list[float] = array.tolist()
    return values


def stored_payload(tool: IndexedTool) -> dict[str, Any]:
    """The payload written for a tool: its own plus ``tool_id`` (search answers read it back)."""
    return {**tool.payload, TOOL_ID_KEY: tool.tool_id}


def check_payload_update(payload: Mapping[str, Any]) -> None:
    """Reject payload updates that would break lookups or filters."""
    if TOOL_ID_KEY in payload:
        raise ValueError("the tool_id payload field cannot be changed")
    if "server" in payload and not isinstance(payload["server"], str):
        raise ValueError("payload field 'server' must be a string")
    if "enabled" in payload and not isinstance(payload["enabled"], bool):
        raise ValueError("payload field 'enabled' must be a bool")
    for key in ("read_only", "destructive"):
        value = payload.get(key)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"payload field {key!r} must be a bool or None")


@dataclass(frozen=True)
class Match:
    """A payload condition: ``key`` is one of ``values`` (keywords) or equals the bool."""

    key: str
    values: frozenset[str] | bool


@dataclass(frozen=True)
class FilterPlan:
    """An :class:`IndexFilter` in engine-neutral terms; each engine translates it."""

    must: tuple[Match, ...]
    must_not: tuple[Match, ...]
    point_ids: frozenset[uuid.UUID] | None
    matches_nothing: bool  # an empty allow-list: skip the engine call
    # A caller's scope: the point must match one of these (server keywords, point ids).
    any_of: tuple[Match, ...] = ()
    any_of_ids: frozenset[uuid.UUID] = frozenset()

    @property
    def scoped(self) -> bool:
        return bool(self.any_of or self.any_of_ids)


def plan_filter(flt: IndexFilter | None, *, default_enabled_only: bool = True) -> FilterPlan:
    """Translate a filter; ``None`` means the default filter (enabled tools only) unless
    ``default_enabled_only`` is False (counting everything)."""
    if flt is None:
        must = (Match("enabled", True),) if default_enabled_only else ()
        return FilterPlan(must, (), None, False)
    must_list: list[Match] = []
    if flt.servers is not None:
        must_list.append(Match("server", flt.servers))
    if flt.categories is not None:
        must_list.append(Match("category", flt.categories))
    if flt.read_only is not None:
        must_list.append(Match("read_only", flt.read_only))
    if not flt.include_disabled:
        must_list.append(Match("enabled", True))
    must_not_list: list[Match] = []
    if flt.exclude_servers:
        must_not_list.append(Match("server", flt.exclude_servers))
    if flt.exclude_destructive:
        must_not_list.append(Match("destructive", True))
    must_not = tuple(must_not_list)
    ids = frozenset(point_id(t) for t in flt.tool_ids) if flt.tool_ids is not None else None
    empty = any(isinstance(m.values, frozenset) and not m.values for m in must_list) or ids == frozenset()
    any_of: tuple[Match, ...] = ()
    any_of_ids: frozenset[uuid.UUID] = frozenset()
    if flt.scope is not None:
        any_of = (Match("server", flt.scope.servers),) if flt.scope.servers else ()
        any_of_ids = frozenset(point_id(t) for t in flt.scope.tool_ids)
        empty = empty or not (any_of or any_of_ids)
    return FilterPlan(tuple(must_list), must_not, ids, empty, any_of, any_of_ids)
