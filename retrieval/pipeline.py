"""The retrieval pipeline: stage 1 (dense + lexical + server routing, fused by rank), stage 2
(refinement of the candidate pool with features stage 1 cannot afford), stage 3 (the cut).

Plain data in and out. Blocking: the gateway runs it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .documents import ToolText
from .fusion import (
    ServerScores,
    adaptive_cut,
    hierarchical,
    normalise_max,
    normalise_range,
    rrf,
    server_support,
    top,
)
from .index import IndexedTool, IndexFilter, VectorIndex, tool_payload
from .intent import Intent, IntentParser
from .intent_stage import (
    Candidates,
    IntentCatalog,
    PreparedQuery,
    build_candidates,
    cohere,
    fuse,
    intent_ranking,
    reads_only,
    subspace_scores,
)
from .lexical import LexicalIndex
from .past import PastRequests
from .settings import RetrievalSettings as RetrievalSettings
from .settings import intent_weights as intent_weights
from .text import dense_query, query_parts, split_words
from .usage import MemoryUsageStore, UsageState, Vector, add_use, blended_vector

DESCRIPTION = "description"
USAGE = "usage"
VECTOR_NAMES = (DESCRIPTION, USAGE)
_EMBED_TEXT_CHARS = 1000  # MiniLM reads ~256 word pieces; more text only costs time
EMBED_BATCH = 64
_ADOPT_PAGE = 1000  # tools whose stored vectors a restart reads back per index call
_CHUNK_BATCHES = 8  # batches per embed call in upsert: progress granularity vs. sorting scope
# One request's BM25 searches (LexicalIndex.searcher): text and depth -> ranked tool ids.
Lexical = Callable[[str, int], list[tuple[str, float]]]
# A model run's fixed cost in word pieces (per-run overhead / cost per padded piece).
_RUN_PIECES = 9
_MIN_ROWS = 1024  # first capacity of the description matrix (it grows as it fills)
# float16 -> float32 by table lookup: numpy's cast converts element by element here, and a
# request widens ~350 rows (~0.1 ms less per request at 10k tools); the values are the same.
_HALF_TO_SINGLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


class Embedder(Protocol):
    """What the pipeline needs of an embedding model (retrieval.embedder provides them)."""

    model_id: str
    dim: int

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray: ...

    def token_counts(self, texts: Sequence[str]) -> list[int]: ...

    def release_memory(self) -> None: ...


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
    sub_intent: int | None = None  # index of the sub-intent it serves (intent stage only)


def embedding_text(tool: ToolText) -> str:
    """What the description vector embeds: readable name, server and description."""
    name = " ".join(split_words(tool.name)) or tool.name
    head = f"{tool.title or name} ({tool.server})"
    return f"{head}: {tool.description}"[:_EMBED_TEXT_CHARS]


def server_text(server: str, description: str) -> str:
    words = " ".join(split_words(server)) or server
    return f"{words}: {description}"[:_EMBED_TEXT_CHARS] if description else words


class VectorRows:
    """Unit vectors by tool id in one contiguous float16 matrix (rows reused after removal).

    The index stores float16 too, so re-scoring a pool with these rows sees the values that
    ranked it; one matrix instead of 100k small arrays is 77 MB instead of 160 at 100k tools.
    Callers serialise writes with searches (the gateway's catalog lock); growth copies into
    a new matrix before swapping it in, so a reader never sees a half-copied one."""

    def __init__(self, dim: int) -> None:
        self._dim = dim
        self._matrix = np.zeros((0, dim), np.float16)
        self._row: dict[str, int] = {}
        self._free: list[int] = []
        self._used = 0  # rows ever handed out (the rest of the matrix is spare capacity)

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, tool_id: object) -> bool:
        return tool_id in self._row

    def put(self, tool_id: str, vector: Vector) -> Vector:
        """Store ``vector`` for ``tool_id``; returns it as stored (float16 values in float32),
        so sums kept elsewhere add exactly what a later :meth:`pop` takes away."""
        row = self._row.get(tool_id)
        if row is None:
            row = self._free.pop() if self._free else self._grow()
            self._row[tool_id] = row
        self._matrix[row] = vector
        stored: Vector = self._matrix[row].astype(np.float32)
        return stored

    def _grow(self) -> int:
        if self._used == len(self._matrix):
            # A quarter more each time: at most ~25% spare rows (doubling left up to half of
            # a 100k matrix empty), still amortised O(1) per row.
            rows = max(_MIN_ROWS, len(self._matrix) + len(self._matrix) // 4)
            bigger = np.zeros((rows, self._dim), np.float16)
            bigger[: self._used] = self._matrix[: self._used]
            self._matrix = bigger
        self._used += 1
        return self._used - 1

    def get(self, tool_id: str) -> Vector | None:
        row = self._row.get(tool_id)
        if row is None:
            return None
        vector: Vector = self._matrix[row].astype(np.float32)
        return vector

    def pop(self, tool_id: str) -> Vector | None:
        row = self._row.pop(tool_id, None)
        if row is None:
            return None
        vector: Vector = self._matrix[row].astype(np.float32)
        self._free.append(row)
        return vector

    def rows(self, tool_ids: Sequence[str]) -> np.ndarray:
        """The vectors of ``tool_ids`` (all of which must be stored) as a float32 matrix."""
        index = np.fromiter((self._row[i] for i in tool_ids), np.intp, len(tool_ids))
        return np.take(_HALF_TO_SINGLE, self._matrix[index].view(np.uint16))

    def dots(self, tool_ids: Sequence[str], vector: Vector) -> dict[str, float]:
        """Cosine of ``vector`` with each stored tool among ``tool_ids``."""
        known = [i for i in tool_ids if i in self._row]
        if not known:
            return {}
        # einsum, not BLAS: see fusion.ServerScores.
        sims = np.einsum("ij,j->i", self.rows(known), np.asarray(vector, np.float32))
        return dict(zip(known, sims.tolist(), strict=True))


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
        # Server names, their unit rows and each name's row: one tuple, replaced whole, so a
        # reader never pairs a row map with another build's matrix.
        self._server_matrix: tuple[list[str], np.ndarray, dict[str, int]] | None = None
        # Description vectors of indexed tools (also in the index): stage 2 and usage updates
        # read them per query, and a round trip to the index per candidate costs milliseconds.
        self._vectors = VectorRows(embedder.dim)
        self._has_usage = False
        # Past requests and the tools they used: the nearest-query votes and the intent stage's
        # co-usage read them; the gateway stores them and replays them at start.
        self.past = PastRequests()
        self._intent = IntentCatalog()

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
        batch_size: int = EMBED_BATCH,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Index new or changed tools; unchanged versions are skipped (not re-embedded).
        Returns how many were embedded.

        The model's cost is set by the padded batch width, so pending tools come in order of
        text length and are embedded in chunks of several batches (the embedder sorts within
        a call as well); new servers' texts are embedded in the same calls."""
        self.apply_payloads(records)
        changed = self.pending(records)
        chunk = batch_size * _CHUNK_BATCHES
        for start in range(0, len(changed), chunk):
            part = changed[start : start + chunk]
            self.store(part, self.embed(part, batch_size=batch_size))
            if progress is not None:
                progress(len(part))
        if changed:
            self.embedder.release_memory()
        return len(changed)

    def pending(self, records: Sequence[ToolRecord]) -> list[ToolRecord]:
        """The records whose text is new or changed: they need embedding. Fewest tokens first,
        so that consecutive batches have similar widths and pad little. Token counts, not
        characters: chunks cut from a character order overlap in width, and on the 10,489
        ToolBench + toolsdk tools embedding them took 8% longer (tokenizing is ~1%)."""
        changed = [r for r in records if self._needs_embedding(r)]
        if len(changed) < 2:
            return changed
        counts = self.embedder.token_counts([embedding_text(r.text) for r in changed])
        order = sorted(range(len(changed)), key=counts.__getitem__)
        return [changed[i] for i in order]

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
                vector = self._vectors.get(record.tool_id)
                if vector is not None:
                    self._intent.recategorise(old.category, record.category, vector)

    def embed(self, records: Sequence[ToolRecord], *, batch_size: int = EMBED_BATCH) -> Embedded:
        """Model work only (no state changes), so a caller can run it outside any lock: the
        tools' description vectors and the vectors of servers not seen before, in one call."""
        servers = self._new_server_texts(records)
        texts = [embedding_text(r.text) for r in records] + list(servers.values())
        vectors = self.embedder.encode(texts, batch_size=batch_size)
        n = len(records)
        return Embedded(vectors[:n], dict(zip(servers, vectors[n:], strict=True)))

    def _new_server_texts(self, records: Sequence[ToolRecord]) -> dict[str, str]:
        """Texts of servers not embedded yet. Only servers with a description: every tool text
        already carries its server's name, so the centroid of a server's tools stands for a
        bare name (measured: the same quality, and ~10% less embedding on ToolBench)."""
        new: dict[str, str] = {}
        for record in records:
            server = record.text.server
            if server not in self._server_text and server not in new and record.text.server_description:
                new[server] = server_text(server, record.text.server_description)
        return new

    def _embed_servers(self, records: Sequence[ToolRecord]) -> dict[str, Vector]:
        new = self._new_server_texts(records)
        if not new:
            return {}
        vectors = self.embedder.encode(list(new.values()))
        return dict(zip(new, vectors, strict=True))

    def store(self, records: Sequence[ToolRecord], embedded: Embedded) -> None:
        """Write embedded tools into the index and the in-memory views."""
        # Copies: a row of the embedder's batch output would keep the whole batch alive.
        self._server_text.update({name: np.array(v, np.float32) for name, v in embedded.servers.items()})
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
        restart); returns the records that still need `upsert`. Embeds server texts only.
        A page of tools at a time: the index hands vectors back as Python lists, ~8 KB a
        tool, which for 100k tools at once was ~800 MB of the restart's peak."""
        missing: list[ToolRecord] = []
        for start in range(0, len(records), _ADOPT_PAGE):
            missing.extend(self._adopt_page(records[start : start + _ADOPT_PAGE]))
        return missing

    def _adopt_page(self, records: Sequence[ToolRecord]) -> list[ToolRecord]:
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
        vector = self._vectors.put(record.tool_id, vector)
        self.lexical.add(record.text)
        server = record.text.server
        self._server_sum[server] = self._server_sum.get(server, np.zeros_like(vector)) + vector
        self._server_count[server] = self._server_count.get(server, 0) + 1
        self._server_matrix = None
        self._intent.add(record.tool_id, record.text, record.category, vector)
        self._intent.servers_changed()

    def _forget(self, tool_id: str) -> None:
        record = self._records.pop(tool_id, None)
        if record is None:
            return
        self.lexical.remove(tool_id)
        server = record.text.server
        vector = self._vectors.pop(tool_id)
        if vector is not None and server in self._server_sum:
            self._server_sum[server] = self._server_sum[server] - vector
        self._server_count[server] = self._server_count.get(server, 1) - 1
        if self._server_count[server] <= 0:
            self._server_sum.pop(server, None)
            self._server_count.pop(server, None)
            self._server_text.pop(server, None)
        self._server_matrix = None
        self._intent.remove(tool_id, record.text, record.category, vector)
        self._intent.servers_changed()

    def remove(self, tool_ids: Iterable[str]) -> None:
        """Drop tools at once: they disappear from every list immediately."""
        ids = [tool_id for tool_id in tool_ids if tool_id in self._records]
        for tool_id in ids:
            self._forget(tool_id)
        if ids:
            self.index.delete(ids)

    # -- usage ---------------------------------------------------------------------------------

    def embed_query(self, query: str) -> Vector:
        """The query's vector for the dense stages (and for usage learning)."""
        text = dense_query(query) if self.settings.compact_query else query
        vector: Vector = self.embedder.encode([text])[0]
        return vector

    def record_use(self, tool_id: str, query_vector: Vector) -> UsageState | None:
        """One successful use of a tool for a query: O(1) update of its usage vector. Returns
        the tool's new evidence (for the caller to persist), None for an unknown tool."""
        if tool_id not in self._records:
            return None
        state = add_use(self.usage.get(tool_id), query_vector)
        self.usage.put(tool_id, state)
        self._apply_usage(tool_id, state)
        self.past.add(tool_id, query_vector)
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
        for tool_id in touched:
            description = self._vectors.get(tool_id)
            if description is not None:
                self.index.update_vectors(tool_id, {USAGE: description})
        self.usage.clear()
        self._has_usage = False
        self.past.clear()

    def _apply_usage(self, tool_id: str, state: UsageState) -> None:
        description = self._vectors.get(tool_id)
        if description is None:
            return
        blended = blended_vector(description, state)
        if blended is not None:
            self.index.update_vectors(tool_id, {USAGE: blended})
            self._has_usage = True

    # -- search --------------------------------------------------------------------------------

    def intent_parser(self) -> IntentParser:
        """The built-in intent parser over the current catalog (tool and server names, server
        and category centroids); rebuilt lazily after the catalog changed. The LLM parser
        takes it as its fallback."""
        return self._intent.parser(lambda: self._server_rows()[:2])

    def prepare(self, query: str, *, intent: Intent | bool = False) -> PreparedQuery:
        """Embed ``query`` (and, with an intent, its sub-intent spans) for
        :meth:`search_prepared`. ``intent``: True parses with the built-in parser, an
        :class:`Intent` (from the LLM parser) is used as given, False runs no intent stage.
        The intent comes back with domain hints. ``vector`` is what :meth:`embed_query`
        returns, except for a request of several sub-intents with
        ``settings.intent_whole_from_spans``: then it is the spans' length-weighted mean."""
        text = dense_query(query) if self.settings.compact_query else query
        if intent is False:
            return PreparedQuery(query, self.embedder.encode([text])[0])
        parser = self.intent_parser()
        parse_s = 0.0
        if intent is True:
            started = time.perf_counter()
            intent = parser.parse(query)
            parse_s = time.perf_counter() - started
        subs = intent.sub_intents
        if len(subs) < 2 and not (subs and self.settings.intent_single):
            vector: Vector = self.embedder.encode([text])[0]
            # One sub-intent or none: the request's own vector stands for its span.
            intent = parser.with_domains(intent, np.tile(vector, (len(subs), 1)))
            return PreparedQuery(query, vector, intent, None, parse_s)
        spans = [dense_query(s.span) if self.settings.compact_query else s.span for s in subs]
        if self.settings.intent_whole_from_spans:
            span_vectors = self._embed_spans(spans)
            whole = _length_weighted_mean(span_vectors, spans)
        else:
            # One call. The embedder batches by length, so with a batch of len(spans) the spans
            # (parts of the query, shorter) share one batch and the query runs alone: its vector
            # is exactly embed_query's, and the spans are not padded to the query's width.
            vectors = self.embedder.encode([text, *spans], batch_size=len(spans))
            span_vectors = np.ascontiguousarray(vectors[1:], dtype=np.float32)
            whole = vectors[0]
        intent = parser.with_domains(intent, span_vectors)
        return PreparedQuery(query, whole, intent, span_vectors, parse_s)

    def _embed_spans(self, spans: Sequence[str]) -> np.ndarray:
        """The spans' vectors, in the model runs that cost least: a run costs about its rows
        times its widest row in word pieces, plus a fixed ~9 pieces' worth (measured here), so
        one batch pads a short span to a long one's width and one run per span pays the fixed
        part each time; :func:`_run_groups` picks between (1.6 + 0.17 ms a piece on this
        machine; ToolBench's requests: ~8% less model time than one batch)."""
        out = np.empty((len(spans), self.embedder.dim), np.float32)
        for group in _run_groups(self.embedder.token_counts(spans)):
            out[group] = self.embedder.encode([spans[i] for i in group], batch_size=len(group))
        return out

    def search(
        self,
        query: str,
        limit: int,
        flt: IndexFilter | None = None,
        *,
        adaptive: bool = False,
        intent: Intent | bool | None = None,
    ) -> list[Hit]:
        """Prepare and search in one call; ``intent`` None follows ``settings.intent``."""
        use = self.settings.intent if intent is None else intent
        if use is False:
            return self.search_with_vector(query, self.embed_query(query), limit, flt, adaptive=adaptive)
        return self.search_prepared(self.prepare(query, intent=use), limit, flt, adaptive=adaptive)

    def search_prepared(
        self, prepared: PreparedQuery, limit: int, flt: IndexFilter | None = None, *, adaptive: bool = False
    ) -> list[Hit]:
        """Search a prepared query. Without an intent stage (no intent, or one sub-intent) this
        is :meth:`search_with_vector`. An intent that only reads also excludes destructive
        tools inside the query, unless ``flt`` asks for tools that change state."""
        intent = prepared.intent
        if reads_only(intent) and not (
            flt is not None and (flt.read_only is False or flt.exclude_destructive)
        ):
            flt = dataclasses.replace(flt or IndexFilter(), exclude_destructive=True)
        if intent is None or prepared.span_vectors is None:
            return self.search_with_vector(prepared.query, prepared.vector, limit, flt, adaptive=adaptive)
        return self._search_intent(prepared, intent, limit, flt, adaptive)

    def search_with_vector(
        self,
        query: str,
        vector: Vector,
        limit: int,
        flt: IndexFilter | None = None,
        *,
        adaptive: bool = False,
    ) -> list[Hit]:
        """Stage 1, stage 2 and the cut, for a query whose embedding is already known.

        With ``adaptive`` the cut returns between 1 and ``limit`` hits (see :func:`adaptive_cut`)."""
        s = self.settings
        first = self._stage1(query, vector, limit, flt)
        if s.refine:
            final = self._refine(
                first.candidates, vector, first.dense, first.lexical, first.parts, first.servers, query
            )
        else:
            final = dict(first.candidates)
        ranked = top(final, limit)
        if adaptive:
            ranked = adaptive_cut(ranked, s.cut_gap, s.cut_keep)
        return [self._hit(first, tool_id, score) for tool_id, score in ranked]

    def _stage1(
        self, query: str, vector: Vector, limit: int, flt: IndexFilter | None, search: Lexical | None = None
    ) -> _Stage1:
        """``search``: the request's BM25 searcher when the caller has used it already."""
        s = self.settings
        pool = max(s.pool_size, limit)
        dense = dict(self.index.search(DESCRIPTION, vector, pool, flt))
        if self._has_usage:
            for tool_id, score in self.index.search(USAGE, vector, pool, flt):
                if score > dense.get(tool_id, -1.0):
                    dense[tool_id] = score
        allowed = self._allowed(flt)
        search = search or self.lexical.searcher(allowed)
        lexical = dict(search(query, pool))
        parts = self._parts(query, search) if s.weight_parts or s.refine_parts else []
        server_scores = self._server_scores(vector, flt)
        routed = self._routed(vector, server_scores, pool, flt)
        lists: dict[str, Sequence[tuple[str, float]]] = {
            "dense": top(dense, pool),
            "lexical": top(lexical, pool),
            "routed": top(routed, pool),
        }
        weights = {"dense": s.weight_dense, "lexical": s.weight_lexical, "routed": s.weight_routed}
        for n, part in enumerate(parts):
            lists[f"part{n}"] = top(part, s.part_pool)
            weights[f"part{n}"] = s.weight_parts / len(parts)
        fused = rrf(lists, weights, k=s.rrf_k)
        return _Stage1(dense, lexical, parts, server_scores, routed, fused, top(fused, pool), allowed)

    def _hit(self, first: _Stage1, tool_id: str, score: float, sub_intent: int | None = None) -> Hit:
        stages = {
            "fused": round(first.fused.get(tool_id, 0.0), 6),
            "dense": round(first.dense.get(tool_id, 0.0), 4),
            "lexical": round(first.lexical.get(tool_id, 0.0), 4),
            "server": round(first.servers.get(self._records[tool_id].text.server, 0.0), 4),
        }
        return Hit(tool_id, score, stages, _why(stages, tool_id in first.routed), sub_intent)

    def _search_intent(
        self, prepared: PreparedQuery, intent: Intent, limit: int, flt: IndexFilter | None, adaptive: bool
    ) -> list[Hit]:
        """The intent stage (see intent_stage): candidates scored per sub-intent and subspace,
        merged with the whole request's ranking."""
        s = self.settings
        first, cands = self._intent_candidates(prepared, intent, limit, flt)
        if not cands.ids:
            return []
        weights = intent_weights(s)
        if weights.active():
            features = subspace_scores(intent.sub_intents, cands, self.lexical.idf, weights.active())
            scores = cohere(fuse(features, weights), cands.servers, s.intent_cohere)
        else:  # nothing weighs anything: the whole request's ranking alone
            scores = np.zeros((len(intent.sub_intents), len(cands.ids)))
        bonus = None
        if s.intent_co_usage and self.past.co:
            bonus = s.intent_co_usage * self.past.co.share(scores, cands.ids, s.intent_co_heads)
        ranked = intent_ranking(cands, scores, limit, mix=s.intent_mix, k=s.intent_rank_k, bonus=bonus)
        if adaptive:
            kept = len(
                adaptive_cut([(tool_id, score) for tool_id, score, _ in ranked], s.cut_gap, s.cut_keep)
            )
            ranked = ranked[:kept]
        return [self._hit(first, tool_id, score, serves) for tool_id, score, serves in ranked]

    def intent_candidates(
        self, prepared: PreparedQuery, limit: int, flt: IndexFilter | None = None
    ) -> Candidates:
        """What the intent stage scores for ``prepared`` (which must carry span vectors): for
        tuning its weights offline (bench/intent_tune.py)."""
        if prepared.intent is None or prepared.span_vectors is None:
            raise ValueError("the prepared query has no sub-intent spans")
        return self._intent_candidates(prepared, prepared.intent, limit, flt, every=True)[1]

    def _intent_candidates(
        self,
        prepared: PreparedQuery,
        intent: Intent,
        limit: int,
        flt: IndexFilter | None,
        every: bool = False,
    ) -> tuple[_Stage1, Candidates]:
        """Stage 1's pool, each span's own dense and lexical candidates, the tools a span
        names and the other tools of the best candidates' servers, re-scored by stage 2 for
        the whole request. ``every``: also the inputs of subspaces that weigh nothing."""
        s = self.settings
        query, vector, spans = prepared.query, prepared.vector, prepared.span_vectors
        assert spans is not None
        # The spans' BM25 first: a sentence that a span repeats (about half of the spans on
        # ToolBench) is then not scored again by stage 1 (a shallower list is a prefix).
        search = self.lexical.searcher(self._allowed(flt))
        # Deeper than the span's own candidates: its BM25 is also a feature of the others
        # (below that depth it counts as 0; scoring every match cost ~2 ms a span at 10k).
        span_lexical = [search(sub.span, max(s.intent_pool, s.pool_size)) for sub in intent.sub_intents]
        first = self._stage1(query, vector, limit, flt, search)
        allowed = first.allowed
        ids = dict.fromkeys(tool_id for tool_id, _ in first.candidates)
        for near in self._span_dense(first, spans):
            ids.update(dict.fromkeys(near))
        lexical = []
        extra: list[str] = []
        for sub, found in zip(intent.sub_intents, span_lexical, strict=True):
            ids.update(dict.fromkeys(tool_id for tool_id, _ in found[: s.intent_pool]))
            lexical.append(dict(found))
            for tool_name in sub.named_tools:
                extra += self._intent.ids_named(tool_name)
        # Tasks often use several tools of one server: its other tools are candidates too.
        for tool_id, _ in first.candidates[: s.intent_siblings]:
            extra += self._intent.server_tools(self._records[tool_id].text.server, _MAX_SIBLINGS)
        ids.update(dict.fromkeys(i for i in extra if allowed is None or allowed(i)))
        order = [tool_id for tool_id in ids if tool_id in self._vectors]
        pool = [(tool_id, first.fused.get(tool_id, 0.0)) for tool_id in order]
        if s.refine and pool:
            whole = self._refine(pool, vector, first.dense, first.lexical, first.parts, first.servers, query)
        else:
            whole = dict(pool)
        records = [self._records[tool_id] for tool_id in order]
        description = self._vectors.rows(order)
        servers = None  # the server subspace's input: built when it weighs, or for tuning
        if every or s.intent_server:
            servers = np.zeros_like(description)
            _, matrix, row_of = self._server_rows()
            for k, record in enumerate(records):
                row = row_of.get(record.text.server)
                if row is not None:
                    servers[k] = matrix[row]
        usage = None
        if s.intent_usage:
            usage = [blended_vector(description[k], self.usage.get(i)) for k, i in enumerate(order)]
        fields = [self._intent.fields[i] for i in order]
        context = [whole.get(i, 0.0) for i in order]
        cands = build_candidates(order, records, fields, spans, description, servers, usage, lexical, context)
        return first, cands

    def _span_dense(self, first: _Stage1, spans: np.ndarray) -> list[list[str]]:
        """Each span's ``intent_pool`` best tools by cosine (the better of description and
        usage view), among the tools stage 1 already listed for the whole request (its dense,
        lexical, routed and per-sentence lists: ~100-300 tools, all passing the filter).

        The index query per span this replaces cost ~1 ms a span at 10.5k tools (2.5 ms a
        request; this 0.4 ms, bench/intent_cost.py --compare), and an exact scan of every row
        would first widen 10k float16 rows (~8 ms). A span's best tool is among these lists
        93% of the time at 10.5k tools, and the stage's results held: ToolBench 5-fold with the
        stage on, Recall@5 and Completeness@10 unchanged; with the 8k distractors Recall@5
        -0.001, Completeness@10 +0.005 (bench/retrieval_toolbench.py)."""
        pool = [
            tool_id
            for tool_id in dict.fromkeys(
                itertools.chain(first.dense, first.lexical, first.routed, *first.parts)
            )
            if tool_id in self._vectors
        ]
        if not pool or not len(spans):
            return [[] for _ in range(len(spans))]
        queries = np.asarray(spans, np.float32)
        rows = self._vectors.rows(pool)
        sims = np.einsum("sd,nd->sn", queries, rows)
        if self._has_usage:  # the usage view, as the index's usage vectors hold it
            used = [(k, self.usage.get(tool_id)) for k, tool_id in enumerate(pool)]
            views = [(k, blended_vector(rows[k], state)) for k, state in used if state is not None]
            columns = [k for k, view in views if view is not None]
            if columns:
                matrix = np.vstack([view for _, view in views if view is not None]).astype(np.float32)
                sims[:, columns] = np.maximum(sims[:, columns], np.einsum("sd,nd->sn", queries, matrix))
        return [[pool[k] for k in row] for row in _top_columns(sims, self.settings.intent_pool).tolist()]

    def _span_dense_index(self, spans: np.ndarray, flt: IndexFilter | None) -> list[list[str]]:
        """The spans' ``intent_pool`` best tools from index queries, one list per span and
        vector name (description, then usage): what :meth:`_span_dense` stands for, kept to
        measure it against (tests, bench/intent_cost.py)."""
        out: list[list[str]] = []
        for name in [DESCRIPTION, USAGE] if self._has_usage else [DESCRIPTION]:
            for found in self.index.search_batch(name, spans, self.settings.intent_pool, flt):
                out.append([tool_id for tool_id, _ in found])
        return out

    def _parts(self, query: str, search: Lexical) -> list[dict[str, float]]:
        """BM25 of each sentence of a multi-sentence request on its own."""
        return [dict(search(part, self.settings.part_pool)) for part in query_parts(query)]

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
            if flt.exclude_destructive and record.destructive:
                return False
            if flt.scope is not None and not flt.scope.allows(server, tool_id):
                return False
            return flt.tool_ids is None or tool_id in flt.tool_ids

        return allowed

    def _server_scores(self, vector: Vector, flt: IndexFilter | None) -> ServerScores:
        """Similarity of the query to each server: its name and description, and the centroid
        of its tools."""
        names, matrix, row_of = self._server_rows()
        allowed = None
        if flt is not None and (flt.servers is not None or flt.exclude_servers):
            allowed = {
                name
                for name in (flt.servers if flt.servers is not None else names)
                if name not in flt.exclude_servers
            }
        if flt is not None and flt.scope is not None:
            # Route only to servers holding a tool in the caller's scope, as a server filter would.
            reachable = set(flt.scope.servers)
            for tool_id in flt.scope.tool_ids:
                record = self._records.get(tool_id)
                if record is not None:
                    reachable.add(record.text.server)
            allowed = reachable if allowed is None else allowed & reachable
        return ServerScores(names, row_of, matrix, vector, allowed)

    def _server_rows(self) -> tuple[list[str], np.ndarray, dict[str, int]]:
        """Each server's unit row: its text's vector plus the centroid of its tools (lazy;
        built from copies, so a parse outside the catalog's lock may build it too)."""
        cached = self._server_matrix
        if cached is None:
            sums, texts = dict(self._server_sum), dict(self._server_text)
            names = sorted(sums)
            rows = []
            for name in names:
                centroid = sums[name] / max(float(np.linalg.norm(sums[name])), 1e-9)
                combined = centroid + texts.get(name, np.zeros_like(centroid))
                rows.append(combined / max(float(np.linalg.norm(combined)), 1e-9))
            dim = self.embedder.dim
            matrix = np.vstack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
            cached = (names, matrix, {name: row for row, name in enumerate(names)})
            self._server_matrix = cached
        return cached

    def _routed(
        self, vector: Vector, server_scores: ServerScores, pool: int, flt: IndexFilter | None
    ) -> dict[str, float]:
        """MCP-Zero: pick the best servers, then tools within them, scored hierarchically."""
        if not self.settings.weight_routed:
            return {}  # the list would weigh nothing: skip its index query
        best = server_scores.best(self.settings.routed_servers)
        if not best:
            return {}
        routed_filter = dataclasses.replace(flt or IndexFilter(), servers=frozenset(name for name, _ in best))
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
        parts: Sequence[Mapping[str, float]],
        server_scores: Mapping[str, float],
        query: str = "",
    ) -> dict[str, float]:
        """Stage 2: re-score the pool jointly, as a weighted sum of features scaled to 0..1
        over the pool: the stage-1 fused score; dense and lexical strength; the best
        per-sentence lexical strength (each sentence scaled to its own best); the server's
        similarity; server coherence (the pool's other strong tools on the same server: tasks
        tend to use several tools of one server); usage evidence; votes of the nearest past
        queries for the tools they used."""
        s = self.settings
        ids = [tool_id for tool_id, _ in candidates]
        missing = [tool_id for tool_id in ids if tool_id not in dense]
        if missing:  # lexical-only candidates: compute their cosine now, the pool is small
            dense = {**dense, **self._vectors.dots(missing, vector)}
        stage1 = normalise_max(dict(candidates))
        dense_n = normalise_range({i: dense.get(i, 0.0) for i in ids})
        lexical_n = normalise_max({i: lexical.get(i, 0.0) for i in ids})
        parts_n = dict.fromkeys(ids, 0.0)
        for part in parts:
            for i, value in normalise_max({i: part.get(i, 0.0) for i in ids}).items():
                parts_n[i] = max(parts_n[i], value)
        server_of = {i: self._records[i].text.server for i in ids}
        server_n = normalise_range({i: server_scores.get(server_of[i], 0.0) for i in ids})
        dense_parts = self._dense_parts(query, ids) if s.refine_dense_parts else dict.fromkeys(ids, 0.0)
        base = {
            i: s.refine_rrf * stage1[i]
            + s.refine_dense * dense_n[i]
            + s.refine_lexical * lexical_n[i]
            + s.refine_parts * parts_n[i]
            + s.refine_dense_parts * dense_parts[i]
            for i in ids
        }
        coherence = normalise_max(server_support(base, server_of))
        votes = (
            normalise_max(self.past.votes(vector, ids, s.votes_k))
            if s.refine_votes
            else dict.fromkeys(ids, 0.0)
        )
        out = {}
        for i in ids:
            state = self.usage.get(i)
            usage = min(math.log1p(state.count) / math.log1p(50), 1.0) if state else 0.0
            out[i] = (
                base[i]
                + s.refine_server * server_n[i]
                + s.refine_coherence * coherence[i]
                + s.refine_usage * usage
                + s.refine_votes * votes[i]
            )
        return out

    def _dense_parts(self, query: str, ids: Sequence[str]) -> dict[str, float]:
        """Per candidate, the best cosine to any sentence of the request, scaled over the pool."""
        parts = query_parts(query)
        if not parts:
            return dict.fromkeys(ids, 0.0)
        part_vectors = self.embedder.encode(parts)
        known = [i for i in ids if i in self._vectors]
        best = dict.fromkeys(ids, 0.0)
        if known:
            sims = (self._vectors.rows(known) @ np.asarray(part_vectors, np.float32).T).max(axis=1)
            best.update(zip(known, sims.tolist(), strict=True))
        return normalise_range(best)


@dataclass(frozen=True, slots=True)
class _Stage1:
    """Stage 1's lists for one query (stage 2 and the intent stage read them)."""

    dense: dict[str, float]
    lexical: dict[str, float]
    parts: list[dict[str, float]]
    servers: ServerScores
    routed: dict[str, float]
    fused: dict[str, float]
    candidates: list[tuple[str, float]]  # the pool, best first
    allowed: Callable[[str], bool] | None


def _run_groups(widths: Sequence[int], fixed: int = _RUN_PIECES) -> list[list[int]]:
    """Indices of ``widths`` in groups, one model run each, minimising the sum over runs of
    ``fixed + rows * widest``: contiguous groups of the sorted widths, by dynamic programming
    (a request has a handful of spans)."""
    order = sorted(range(len(widths)), key=widths.__getitem__)
    best = [0.0] + [math.inf] * len(order)  # cost of the first j, and where its last run starts
    start = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):
            cost = best[i] + fixed + (j - i) * widths[order[j - 1]]
            if cost < best[j]:
                best[j], start[j] = cost, i
    groups: list[list[int]] = []
    j = len(order)
    while j > 0:
        groups.append(order[start[j] : j])
        j = start[j]
    return groups[::-1]


def _length_weighted_mean(vectors: np.ndarray, texts: Sequence[str]) -> Vector:
    """The unit-length mean of `vectors`, each weighted by its text's length: a request's vector
    from the vectors of the spans it consists of."""
    weights = np.array([max(len(t), 1) for t in texts], dtype=np.float32)
    mean = weights @ vectors
    norm = float(np.linalg.norm(mean))
    unit: Vector = (mean / norm if norm > 0 else mean).astype(np.float32)
    return unit


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


_MAX_SIBLINGS = 64  # other tools of one server that join the intent stage's candidates


def _top_columns(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row, the columns of its ``k`` best scores, best first (ties in column order)."""
    k = min(k, scores.shape[1])
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.intp)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def _why(stages: Mapping[str, float], routed: bool) -> str:
    parts = []
    if stages.get("dense", 0.0) > 0:
        parts.append(f"meaning {stages['dense']:.2f}")
    if stages.get("lexical", 0.0) > 0:
        parts.append(f"words {stages['lexical']:.1f}")
    if routed:
        parts.append(f"server {stages.get('server', 0.0):.2f}")
    return ", ".join(parts) or "weak match"
