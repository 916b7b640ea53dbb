"""The retrieval pipeline: stage 1 (dense + lexical + server routing, fused by rank), stage 2
(refinement of the candidate pool with features stage 1 cannot afford), stage 3 (the cut).

Plain data in and out. Blocking: the gateway runs it in a worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .documents import ToolText
from .fusion import hierarchical, normalise_max, rrf, top
from .index import IndexedTool, IndexFilter, VectorIndex, tool_payload
from .lexical import LexicalIndex
from .text import split_words
from .usage import MemoryUsageStore, UsageState, Vector, add_use, blended_vector

DESCRIPTION = "description"
USAGE = "usage"
VECTOR_NAMES = (DESCRIPTION, USAGE)
_EMBED_TEXT_CHARS = 1000  # MiniLM reads ~256 word pieces; more text only costs time


class Embedder(Protocol):
    """What the pipeline needs of an embedding model (retrieval.embedder provides them)."""

    model_id: str
    dim: int

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class ToolRecord:
    """One tool as the retriever sees it."""

    text: ToolText
    version: str = ""  # definition hash: an unchanged version is never re-embedded
    category: str | None = None
    read_only: bool | None = None
    destructive: bool | None = None
    enabled: bool = True

    @property
    def tool_id(self) -> str:
        return self.text.tool_id


@dataclass(frozen=True)
class RetrievalSettings:
    pool_size: int = 64  # stage-1 candidates per list (ToolRefiner's pool)
    rrf_k: float = 60.0
    weight_dense: float = 1.0
    weight_lexical: float = 1.0
    weight_routed: float = 0.5
    routed_servers: int = 5  # servers whose tools the hierarchical list draws from
    refine: bool = True
    # Stage-2 feature weights (added to the stage-1 fused score, each feature scaled to 0..1).
    refine_dense: float = 0.010
    refine_lexical: float = 0.010
    refine_server: float = 0.006
    refine_coherence: float = 0.004
    refine_usage: float = 0.002


@dataclass(frozen=True, slots=True)
class Embedded:
    """Vectors computed for a batch of tools, before they are stored."""

    vectors: np.ndarray
    servers: dict[str, Vector]


@dataclass(frozen=True, slots=True)
class Hit:
    tool_id: str
    score: float
    stages: Mapping[str, float] = field(default_factory=dict)
    why: str = ""


def embedding_text(tool: ToolText) -> str:
    """What the description vector embeds: readable name, server and description."""
    name = " ".join(split_words(tool.name)) or tool.name
    head = f"{tool.title or name} ({tool.server})"
    return f"{head}: {tool.description}"[:_EMBED_TEXT_CHARS]


def server_text(server: str, description: str) -> str:
    words = " ".join(split_words(server)) or server
    return f"{words}: {description}"[:_EMBED_TEXT_CHARS] if description else words


class Retriever:
    """Finds the tools that fit a query among everything indexed."""

    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        settings: RetrievalSettings | None = None,
        usage: MemoryUsageStore | None = None,
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.usage = usage or MemoryUsageStore()
        self.settings = settings or RetrievalSettings()
        self.lexical = LexicalIndex()
        self._records: dict[str, ToolRecord] = {}
        self._server_sum: dict[str, Vector] = {}
        self._server_count: dict[str, int] = {}
        self._server_text: dict[str, Vector] = {}
        self._server_matrix: tuple[list[str], np.ndarray] | None = None
        self._has_usage = False

    # -- indexing ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, tool_id: object) -> bool:
        return tool_id in self._records

    def record(self, tool_id: str) -> ToolRecord | None:
        return self._records.get(tool_id)

    def tool_ids(self) -> list[str]:
        return list(self._records)

    def upsert(
        self,
        records: Sequence[ToolRecord],
        *,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Index new or changed tools; unchanged versions are skipped (not re-embedded).
        Returns how many were embedded."""
        self.apply_payloads(records)
        changed = self.pending(records)
        for start in range(0, len(changed), batch_size):
            batch = changed[start : start + batch_size]
            self.store(batch, self.embed(batch, batch_size=batch_size))
            if progress is not None:
                progress(len(batch))
        return len(changed)

    def pending(self, records: Sequence[ToolRecord]) -> list[ToolRecord]:
        """The records whose text is new or changed: they need embedding."""
        return [r for r in records if self._needs_embedding(r)]

    def apply_payloads(self, records: Sequence[ToolRecord]) -> None:
        """Payload-only changes (enabled, category, hints) of known versions: no embedding."""
        for record in records:
            old = self._records.get(record.tool_id)
            if (
                old is not None
                and old.version == record.version
                and old.text == record.text
                and old != record
            ):
                self.index.set_payload([record.tool_id], _payload(record, self.embedder.model_id))
                self._records[record.tool_id] = record

    def embed(self, records: Sequence[ToolRecord], *, batch_size: int = 64) -> Embedded:
        """Model work only (no state changes), so a caller can run it outside any lock: the
        tools' description vectors and the vectors of servers not seen before."""
        vectors = self.embedder.encode([embedding_text(r.text) for r in records], batch_size=batch_size)
        return Embedded(vectors, self._embed_servers(records))

    def _embed_servers(self, records: Sequence[ToolRecord]) -> dict[str, Vector]:
        new: dict[str, str] = {}
        for record in records:
            server = record.text.server
            if server not in self._server_text and server not in new:
                new[server] = server_text(server, record.text.server_description)
        if not new:
            return {}
        vectors = self.embedder.encode(list(new.values()))
        return dict(zip(new, vectors, strict=True))

    def store(self, records: Sequence[ToolRecord], embedded: Embedded) -> None:
        """Write embedded tools into the index and the in-memory views."""
        self._server_text.update(embedded.servers)
        points = []
        for record, vector in zip(records, embedded.vectors, strict=True):
            if record.tool_id in self._records:
                self._forget(record.tool_id)
            named: dict[str, Vector] = {DESCRIPTION: vector}
            usage = blended_vector(vector, self.usage.get(record.tool_id))
            if usage is not None:
                named[USAGE] = usage
                self._has_usage = True
            payload = _payload(record, self.embedder.model_id)
            points.append(IndexedTool(tool_id=record.tool_id, vectors=named, payload=payload))
            self._remember(record, vector)
        self.index.upsert(points)

    def adopt(self, records: Sequence[ToolRecord]) -> list[ToolRecord]:
        """Take over tools already in a persisted index at the same version and embedder (a
        restart); returns the records that still need `upsert`. Embeds server texts only."""
        ids = [r.tool_id for r in records]
        stored = self.index.get_vectors(ids, DESCRIPTION)
        payloads = self.index.get_payloads(ids)
        missing: list[ToolRecord] = []
        adopted: list[ToolRecord] = []
        for record in records:
            payload = payloads.get(record.tool_id, {})
            current = (
                payload.get("version") == record.version and payload.get("embedder") == self.embedder.model_id
            )
            if record.tool_id not in stored or not current:
                missing.append(record)
            else:
                adopted.append(record)
        self._server_text.update(self._embed_servers(adopted))
        for record in adopted:
            self._remember(record, stored[record.tool_id])
            if payloads[record.tool_id].get("enabled") != record.enabled:
                self.index.set_payload([record.tool_id], _payload(record, self.embedder.model_id))
        return missing

    def _needs_embedding(self, record: ToolRecord) -> bool:
        old = self._records.get(record.tool_id)
        return old is None or old.version != record.version or old.text != record.text

    def _remember(self, record: ToolRecord, vector: Vector) -> None:
        self._records[record.tool_id] = record
        self.lexical.add(record.text)
        server = record.text.server
        self._server_sum[server] = self._server_sum.get(server, np.zeros_like(vector)) + vector
        self._server_count[server] = self._server_count.get(server, 0) + 1
        self._server_matrix = None

    def _forget(self, tool_id: str) -> None:
        record = self._records.pop(tool_id, None)
        if record is None:
            return
        self.lexical.remove(tool_id)
        server = record.text.server
        vector = self.index.get_vectors([tool_id], DESCRIPTION).get(tool_id)
        if vector is not None and server in self._server_sum:
            self._server_sum[server] = self._server_sum[server] - vector
        self._server_count[server] = self._server_count.get(server, 1) - 1
        if self._server_count[server] <= 0:
            self._server_sum.pop(server, None)
            self._server_count.pop(server, None)
            self._server_text.pop(server, None)
        self._server_matrix = None

    def remove(self, tool_ids: Iterable[str]) -> None:
        """Drop tools at once: they disappear from every list immediately."""
        ids = [tool_id for tool_id in tool_ids if tool_id in self._records]
        for tool_id in ids:
            self._forget(tool_id)
        if ids:
            self.index.delete(ids)

    # -- usage ---------------------------------------------------------------------------------

    def embed_query(self, query: str) -> Vector:
        vector: Vector = self.embedder.encode([query])[0]
        return vector

    def record_use(self, tool_id: str, query_vector: Vector) -> UsageState | None:
        """One successful use of a tool for a query: O(1) update of its usage vector. Returns
        the tool's new evidence (for the caller to persist), None for an unknown tool."""
        if tool_id not in self._records:
            return None
        state = add_use(self.usage.get(tool_id), query_vector)
        self.usage.put(tool_id, state)
        self._apply_usage(tool_id, state)
        return state

    def load_usage(self, states: Mapping[str, UsageState]) -> None:
        """Seed usage evidence (from persistent storage) for tools already indexed."""
        for tool_id, state in states.items():
            if tool_id in self._records:
                self.usage.put(tool_id, state)
                self._apply_usage(tool_id, state)

    def reset_usage(self) -> None:
        """Forget every use (between evaluation folds): usage views fall back to descriptions."""
        touched = [tool_id for tool_id, _ in self.usage.items() if tool_id in self._records]
        descriptions = self.index.get_vectors(touched, DESCRIPTION)
        for tool_id, vector in descriptions.items():
            self.index.update_vectors(tool_id, {USAGE: vector})
        self.usage.clear()
        self._has_usage = False

    def _apply_usage(self, tool_id: str, state: UsageState) -> None:
        description = self.index.get_vectors([tool_id], DESCRIPTION).get(tool_id)
        if description is None:
            return
        blended = blended_vector(description, state)
        if blended is not None:
            self.index.update_vectors(tool_id, {USAGE: blended})
            self._has_usage = True

    # -- search --------------------------------------------------------------------------------

    def search(self, query: str, limit: int, flt: IndexFilter | None = None) -> list[Hit]:
        return self.search_with_vector(query, self.embed_query(query), limit, flt)

    def search_with_vector(
        self, query: str, vector: Vector, limit: int, flt: IndexFilter | None = None
    ) -> list[Hit]:
        """Stage 1, stage 2 and the cut, for a query whose embedding is already known."""
        s = self.settings
        pool = max(s.pool_size, limit)
        dense = dict(self.index.search(DESCRIPTION, vector, pool, flt))
        if self._has_usage:
            for tool_id, score in self.index.search(USAGE, vector, pool, flt):
                if score > dense.get(tool_id, -1.0):
                    dense[tool_id] = score
        lexical = dict(self.lexical.search(query, pool, allowed=self._allowed(flt)))
        server_scores = self._server_scores(vector, flt)
        routed = self._routed(vector, server_scores, pool, flt)
        fused = rrf(
            {"dense": top(dense, pool), "lexical": top(lexical, pool), "routed": top(routed, pool)},
            {"dense": s.weight_dense, "lexical": s.weight_lexical, "routed": s.weight_routed},
            k=s.rrf_k,
        )
        candidates = top(fused, pool)
        if s.refine:
            final = self._refine(candidates, vector, dense, lexical, server_scores)
        else:
            final = {tool_id: score for tool_id, score in candidates}
        hits = []
        for tool_id, score in top(final, limit):
            stages = {
                "fused": round(fused.get(tool_id, 0.0), 6),
                "dense": round(dense.get(tool_id, 0.0), 4),
                "lexical": round(lexical.get(tool_id, 0.0), 4),
                "server": round(server_scores.get(self._records[tool_id].text.server, 0.0), 4),
            }
            hits.append(Hit(tool_id, score, stages, _why(stages, tool_id in routed)))
        return hits

    def _allowed(self, flt: IndexFilter | None) -> Callable[[str], bool] | None:
        if flt is None:
            return lambda tool_id: self._records[tool_id].enabled if tool_id in self._records else False

        def allowed(tool_id: str) -> bool:
            record = self._records.get(tool_id)
            if record is None or (not record.enabled and not flt.include_disabled):
                return False
            server = record.text.server
            if flt.servers is not None and server not in flt.servers:
                return False
            if server in flt.exclude_servers:
                return False
            if flt.categories is not None and record.category not in flt.categories:
                return False
            if flt.read_only is not None and record.read_only != flt.read_only:
                return False
            return flt.tool_ids is None or tool_id in flt.tool_ids

        return allowed

    def _server_scores(self, vector: Vector, flt: IndexFilter | None) -> dict[str, float]:
        """Similarity of the query to each server: its name and description, and the centroid
        of its tools."""
        if self._server_matrix is None:
            names = sorted(self._server_sum)
            rows = []
            for name in names:
                centroid = self._server_sum[name]
                centroid = centroid / max(float(np.linalg.norm(centroid)), 1e-9)
                combined = centroid + self._server_text.get(name, np.zeros_like(centroid))
                rows.append(combined / max(float(np.linalg.norm(combined)), 1e-9))
            matrix = (
                np.vstack(rows).astype(np.float32) if rows else np.zeros((0, vector.shape[0]), np.float32)
            )
            self._server_matrix = (names, matrix)
        names, matrix = self._server_matrix
        if not names:
            return {}
        sims = matrix @ vector
        scores = {name: float(sim) for name, sim in zip(names, sims, strict=True)}
        if flt is not None and flt.servers is not None:
            scores = {k: v for k, v in scores.items() if k in flt.servers}
        if flt is not None and flt.exclude_servers:
            scores = {k: v for k, v in scores.items() if k not in flt.exclude_servers}
        return scores

    def _routed(
        self, vector: Vector, server_scores: Mapping[str, float], pool: int, flt: IndexFilter | None
    ) -> dict[str, float]:
        """MCP-Zero: pick the best servers, then tools within them, scored hierarchically."""
        best = top(server_scores, self.settings.routed_servers)
        if not best:
            return {}
        base = flt or IndexFilter()
        routed_filter = IndexFilter(
            servers=frozenset(name for name, _ in best),
            exclude_servers=base.exclude_servers,
            categories=base.categories,
            read_only=base.read_only,
            include_disabled=base.include_disabled,
            tool_ids=base.tool_ids,
        )
        scores = dict(best)
        out: dict[str, float] = {}
        for tool_id, sim in self.index.search(DESCRIPTION, vector, pool, routed_filter):
            server = self._records[tool_id].text.server if tool_id in self._records else None
            if server is not None:
                out[tool_id] = hierarchical(scores.get(server, 0.0), sim)
        return out

    def _refine(
        self,
        candidates: Sequence[tuple[str, float]],
        vector: Vector,
        dense: Mapping[str, float],
        lexical: Mapping[str, float],
        server_scores: Mapping[str, float],
    ) -> dict[str, float]:
        """Stage 2: re-score the pool jointly. Features: dense and lexical strength relative to
        the pool, the server's similarity, server coherence (other strong candidates on the
        same server: tasks tend to use several tools of one server), usage evidence."""
        s = self.settings
        ids = [tool_id for tool_id, _ in candidates]
        missing = [tool_id for tool_id in ids if tool_id not in dense]
        if missing:  # lexical-only candidates: compute their cosine now, the pool is small
            for tool_id, stored in self.index.get_vectors(missing, DESCRIPTION).items():
                dense = {**dense, tool_id: float(stored @ vector)}
        dense_n = normalise_max({i: max(dense.get(i, 0.0), 0.0) for i in ids})
        lexical_n = normalise_max({i: lexical.get(i, 0.0) for i in ids})
        server_of = {i: self._records[i].text.server for i in ids}
        server_n = normalise_max({i: max(server_scores.get(server_of[i], 0.0), 0.0) for i in ids})
        stage1 = dict(candidates)
        share: dict[str, float] = {}
        for i in ids:
            share[server_of[i]] = share.get(server_of[i], 0.0) + stage1[i]
        coherence = normalise_max({i: share[server_of[i]] - stage1[i] for i in ids})
        usage_n = {}
        for i in ids:
            state = self.usage.get(i)
            usage_n[i] = math.log1p(state.count) / math.log1p(50) if state else 0.0
        return {
            i: stage1[i]
            + s.refine_dense * dense_n[i]
            + s.refine_lexical * lexical_n[i]
            + s.refine_server * server_n[i]
            + s.refine_coherence * coherence[i]
            + s.refine_usage * min(usage_n[i], 1.0)
            for i in ids
        }


def _payload(record: ToolRecord, embedder: str = "") -> dict[str, object]:
    return tool_payload(
        record.text.server,
        enabled=record.enabled,
        category=record.category,
        read_only=record.read_only,
        destructive=record.destructive,
        version=record.version,
        embedder=embedder,
    )


def _why(stages: Mapping[str, float], routed: bool) -> str:
    parts = []
    if stages.get("dense", 0.0) > 0:
        parts.append(f"meaning {stages['dense']:.2f}")
    if stages.get("lexical", 0.0) > 0:
        parts.append(f"words {stages['lexical']:.1f}")
    if routed:
        parts.append(f"server {stages.get('server', 0.0):.2f}")
    return ", ".join(parts) or "weak match"
