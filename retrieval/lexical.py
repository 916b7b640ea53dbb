"""BM25 search over tool documents, with an inverted index that updates in place.

Scoring is Okapi BM25 with BM25F-style field weights folded into term frequencies (see
:mod:`retrieval.documents`). IDF is the non-negative form ``ln(1 + (N - df + 0.5) / (df + 0.5))``
so terms present in most documents still count a little instead of subtracting.

A query walks only the postings of its own terms. ``add`` and ``remove`` update postings,
document frequencies and the total length directly, so after any sequence of changes the
scores equal those of a fresh build over the same documents.
"""

from __future__ import annotations

import heapq
import math
import sys
from collections.abc import Callable, Iterable, Mapping

from retrieval.documents import ToolText, weighted_terms
from retrieval.text import PHRASE_PREFIX, phrase_key, tokenize

DEFAULT_K1 = 1.2
DEFAULT_B = 0.75


class LexicalIndex:
    """An in-memory BM25 index keyed by ``tool_id``.

    Documents live in integer slots (reused after removal): postings keyed by small ints and
    per-slot lists make scoring about twice as fast as string-keyed dicts at 100k tools.
    """

    def __init__(self, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        """Create an empty index; ``k1`` sets tf saturation, ``b`` length normalisation."""
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self._k1 = k1
        self._b = b
        self._postings: dict[str, dict[int, float]] = {}  # term -> {slot -> weighted tf}
        self._slot: dict[str, int] = {}  # tool_id -> slot
        self._ids: list[str] = []  # slot -> tool_id ("" when free)
        self._terms: list[tuple[str, ...]] = []  # slot -> its terms, to undo its postings
        self._lengths: list[float] = []  # slot -> weighted length (0.0 when free)
        self._free: list[int] = []
        self._total_length = 0.0
        # Length normalisation per slot; depends on the average length, so any change
        # invalidates it and the next search recomputes it once.
        self._norms: list[float] | None = None
        # Weighted tfs take few distinct values; sharing the float objects saves memory.
        self._tf_pool: dict[float, float] = {}

    @classmethod
    def build(cls, docs: Iterable[ToolText], k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> LexicalIndex:
        """An index over ``docs``; a later duplicate ``tool_id`` replaces the earlier one."""
        index = cls(k1=k1, b=b)
        for doc in docs:
            index.add(doc)
        return index

    @property
    def k1(self) -> float:
        """Term-frequency saturation."""
        return self._k1

    @property
    def b(self) -> float:
        """Strength of document-length normalisation (0 = none, 1 = full)."""
        return self._b

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, tool_id: object) -> bool:
        return tool_id in self._slot

    @property
    def average_length(self) -> float:
        """Mean weighted document length (0.0 when empty)."""
        return self._total_length / len(self._slot) if self._slot else 0.0

    def document_frequency(self, term: str) -> int:
        """How many documents contain ``term`` (a normalised token)."""
        return len(self._postings.get(term, ()))

    def idf(self, term: str) -> float:
        """BM25 inverse document frequency of a normalised term in the current index."""
        df = self.document_frequency(term)
        return math.log(1.0 + (len(self._slot) - df + 0.5) / (df + 0.5))

    def add(self, doc: ToolText) -> None:
        """Index ``doc``, replacing any document with the same ``tool_id``."""
        self.add_terms(doc.tool_id, weighted_terms(doc))

    def add_terms(self, tool_id: str, terms: Mapping[str, float]) -> None:
        """Index pre-computed ``term -> weighted frequency``, replacing ``tool_id`` if present."""
        self.remove(tool_id)
        pool = self._tf_pool
        kept = {
            sys.intern(t): pool.setdefault(float(tf), float(tf))
            for t, tf in terms.items()
            if 0 < tf < math.inf
        }
        slot = self._free.pop() if self._free else len(self._ids)
        if slot == len(self._ids):
            self._ids.append("")
            self._terms.append(())
            self._lengths.append(0.0)
        for term, tf in kept.items():
            self._postings.setdefault(term, {})[slot] = tf
        # Phrase keys repeat words already counted, so they add nothing to the length.
        length = math.fsum(tf for term, tf in kept.items() if not term.startswith(PHRASE_PREFIX))
        self._slot[tool_id] = slot
        self._ids[slot] = tool_id
        self._terms[slot] = tuple(kept)
        self._lengths[slot] = length
        self._total_length += length
        self._norms = None

    def remove(self, tool_id: str) -> bool:
        """Drop ``tool_id`` from the index; return whether it was there."""
        slot = self._slot.pop(tool_id, None)
        if slot is None:
            return False
        for term in self._terms[slot]:
            postings = self._postings[term]
            del postings[slot]
            if not postings:
                del self._postings[term]  # keeps the vocabulary from growing without bound
        self._total_length -= self._lengths[slot]
        if not self._slot:
            self._total_length = 0.0  # drop accumulated rounding once empty
        self._ids[slot], self._terms[slot], self._lengths[slot] = "", (), 0.0
        self._free.append(slot)
        self._norms = None
        return True

    def _length_norms(self) -> list[float]:
        if self._norms is None:
            k1, b, avgdl = self._k1, self._b, self.average_length or 1.0
            self._norms = [k1 * (1.0 - b + b * length / avgdl) for length in self._lengths]
        return self._norms

    def _score(self, query: str) -> tuple[list[float], set[int]]:
        """Per-slot scores and the slots that matched at least one query term."""
        norms = self._length_norms()
        scores = [0.0] * len(self._ids)
        matched: list[dict[int, float]] = []
        # Each query term counts once. Long requests that need several tools repeat the
        # words of one need ("playlist ... playlist ... tracks"), which would otherwise crowd
        # out the others; on ToolBench this lifts multi-tool queries (G2/G3) most.
        for term in dict.fromkeys(tokenize(query)):
            postings = self._postings.get(term)
            if postings:
                matched.append(postings)
                weight = self.idf(term) * (self._k1 + 1.0)
                for slot, tf in postings.items():
                    scores[slot] += weight * tf / (tf + norms[slot])
        # The query as a whole may be a tool's exact name. That match is as strong for a
        # tool with a long description as for a terse one, so it skips length normalisation.
        exact = phrase_key(query)
        if exact is not None and (postings := self._postings.get(exact)):
            matched.append(postings)
            weight = self.idf(exact) * (self._k1 + 1.0)
            for slot, tf in postings.items():
                scores[slot] += weight * tf / (tf + self._k1)
        return scores, set().union(*matched)

    def _ranked_prefix(self, scores: list[float], candidates: set[int], n: int) -> list[int]:
        """The first ``n`` candidates by score desc then tool_id (all of them if fewer)."""
        best = heapq.nlargest(n + 1, candidates, key=scores.__getitem__)
        if len(best) > n and scores[best[n]] == scores[best[n - 1]]:
            # A tie straddles the cut: every candidate at that score competes on tool_id.
            cutoff = scores[best[n - 1]]
            best = [slot for slot in candidates if scores[slot] >= cutoff]
        ids = self._ids
        best.sort(key=lambda slot: (-scores[slot], ids[slot]))
        return best[:n]

    def scores(self, query: str) -> dict[str, float]:
        """BM25 score of every document that shares at least one term with ``query``."""
        scores, candidates = self._score(query)
        return {self._ids[slot]: scores[slot] for slot in candidates}

    def search(
        self, query: str, k: int, allowed: Callable[[str], bool] | None = None
    ) -> list[tuple[str, float]]:
        """The top ``k`` ``(tool_id, score)`` for ``query``, by score desc then ``tool_id``.

        Only documents sharing a term with the query are returned. ``allowed`` filters tool
        ids; it is called on candidates in rank order until ``k`` pass, not on every match.
        """
        if k <= 0 or not self._slot:
            return []
        scores, candidates = self._score(query)
        results: list[tuple[str, float]] = []
        checked, n = 0, k
        while True:
            ranked = self._ranked_prefix(scores, candidates, n)
            for slot in ranked[checked:]:
                tool_id = self._ids[slot]
                if allowed is None or allowed(tool_id):
                    results.append((tool_id, scores[slot]))
                    if len(results) == k:
                        return results
            if len(ranked) < n:
                return results  # every candidate has been seen
            checked, n = n, n * 4
