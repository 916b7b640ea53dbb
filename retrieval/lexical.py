"""BM25 search over tool documents, with an inverted index that updates in place.

Scoring is Okapi BM25 with BM25F-style field weights folded into term frequencies (see
:mod:`retrieval.documents`). IDF is the non-negative form ``ln(1 + (N - df + 0.5) / (df + 0.5))``
so terms present in most documents still count a little instead of subtracting.

A query walks only the postings of its own terms. ``add`` and ``remove`` update postings,
document frequencies and the total length directly, so after any sequence of changes the
scores equal those of a fresh build over the same documents.

A top-k search skips most postings of common words (MaxScore): once the rarer terms alone
give k documents a score that no document holding only the remaining, weaker terms can reach,
those terms are looked up for the surviving candidates only. The results, scores included,
are the same as scoring every posting.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from retrieval.documents import ToolText, weighted_terms
from retrieval.text import PHRASE_PREFIX, STOPWORDS, normalize, split_words

DEFAULT_K1 = 1.2
DEFAULT_B = 0.75
# Below this many postings in a query, scoring every posting is as fast as pruning.
_PRUNE_MIN_POSTINGS = 8192
# Bounds and partial sums are added in another order than the exact scores: a margin far
# above float64 rounding keeps every document that could tie at the cut.
_BOUND_SLACK = 1e-9


class _Term(NamedTuple):
    """One query term's postings as score contributions, slots ascending."""

    slots: NDArray[np.int32]
    values: NDArray[np.float32]
    top: float  # the largest contribution: a bound on what the term adds to any document


class LexicalIndex:
    """An in-memory BM25 index keyed by ``tool_id``.

    Documents live in integer slots (reused after removal): postings keyed by small ints and
    per-slot lists make scoring about twice as fast as string-keyed dicts at 100k tools.
    Each term's postings are two packed arrays (slots, weighted tfs) in no particular order:
    8 bytes a posting instead of ~60 in a dict, which is most of this index at 100k tools.
    Weighted tfs are sums of the field weights (multiples of 0.5), exact in float32.
    """

    def __init__(self, k1: float = DEFAULT_K1, b: float = DEFAULT_B) -> None:
        """Create an empty index; ``k1`` sets tf saturation, ``b`` length normalisation."""
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"need k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        self._k1 = k1
        self._b = b
        self._postings: dict[str, tuple[array[int], array[float]]] = {}  # term -> (slots, tfs)
        self._slot: dict[str, int] = {}  # tool_id -> slot
        self._ids: list[str] = []  # slot -> tool_id ("" when free)
        self._terms: list[tuple[str, ...]] = []  # slot -> its terms, to undo its postings
        self._lengths: list[float] = []  # slot -> weighted length (0.0 when free)
        self._free: list[int] = []
        self._total_length = 0.0
        # Length normalisation per slot; depends on the average length, so any change
        # invalidates it and the next search recomputes it once.
        self._norms: NDArray[np.float64] | None = None
        # Per query term (and whether it is an exact-name key): its slots and score
        # contributions, int32 and float32 (8 bytes a posting; this cache can come to hold
        # the postings of most query words).
        self._contributions: dict[tuple[str, bool], _Term] = {}

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
        postings = self._postings.get(term)
        return len(postings[0]) if postings is not None else 0

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
        kept = {sys.intern(t): float(tf) for t, tf in terms.items() if 0 < tf < math.inf}
        slot = self._free.pop() if self._free else len(self._ids)
        if slot == len(self._ids):
            self._ids.append("")
            self._terms.append(())
            self._lengths.append(0.0)
        for term, tf in kept.items():
            postings = self._postings.get(term)
            if postings is None:
                postings = self._postings[term] = (array("i"), array("f"))
            postings[0].append(slot)
            postings[1].append(tf)
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
            slots, tfs = self._postings[term]
            # Order does not matter: move the last posting into the freed place.
            at, last = slots.index(slot), len(slots) - 1
            slots[at], tfs[at] = slots[last], tfs[last]
            del slots[last], tfs[last]
            if not slots:
                del self._postings[term]  # keeps the vocabulary from growing without bound
        self._total_length -= self._lengths[slot]
        if not self._slot:
            self._total_length = 0.0  # drop accumulated rounding once empty
        self._ids[slot], self._terms[slot], self._lengths[slot] = "", (), 0.0
        self._free.append(slot)
        self._norms = None
        return True

    def _length_norms(self) -> NDArray[np.float64]:
        if self._norms is None:
            k1, b, avgdl = self._k1, self._b, self.average_length or 1.0
            lengths = np.asarray(self._lengths, dtype=np.float64)
            self._norms = k1 * (1.0 - b + b * lengths / avgdl)
            self._contributions = {}
        return self._norms

    def _contribution(self, term: str, exact: bool) -> _Term | None:
        """A term's postings as score contributions, slots ascending (so a document's
        contribution can be looked up). Cached until the index changes (any change moves the
        IDF or the average length)."""
        key = (term, exact)
        cached = self._contributions.get(key)
        if cached is not None:
            return cached
        postings = self._postings.get(term)
        if postings is None:
            return None
        length_norms = self._length_norms()
        weight = self.idf(term) * (self._k1 + 1.0)
        # Copies, not views: a packed array cannot grow while numpy holds its buffer.
        slots = np.array(postings[0], dtype=np.int32)
        tfs = np.array(postings[1], dtype=np.float64)
        order = np.argsort(slots, kind="stable")
        slots, tfs = slots[order], tfs[order]
        # An exact-name match skips length normalisation (see _score).
        norms = self._k1 if exact else length_norms[slots]
        values = (weight * tfs / (tfs + norms)).astype(np.float32)
        found = _Term(slots, values, float(values.max()))
        self._contributions[key] = found
        return found

    def _terms_of(self, query: str) -> list[_Term]:
        """The query's terms that occur in the index, in query order."""
        return [term for _, term in self._keyed_terms(query)]

    def _keyed_terms(self, query: str) -> list[tuple[tuple[str, bool], _Term]]:
        """:meth:`_terms_of` with each term's key (term, is_exact)."""
        self._length_norms()
        found = ((key, self._contribution(*key)) for key in query_terms(query))
        return [(key, term) for key, term in found if term is not None]

    def _score(self, query: str) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
        """Per-slot scores and the slots that matched at least one query term."""
        return self._score_terms(self._terms_of(query))

    def _score_terms(self, terms: Sequence[_Term]) -> tuple[NDArray[np.float64], NDArray[np.intp]]:
        # One bincount pass instead of a scatter-add per term (~40% less time at 10k tools);
        # it adds each slot's contributions in term order too, so the sums are bit-identical.
        scores = self._sum(terms, range(len(terms))) if terms else np.zeros(len(self._ids))
        # Every contribution is positive (IDF > 0, tf > 0), so a matched slot scores > 0.
        return scores, np.flatnonzero(scores)

    def _ranked_prefix(self, scores: NDArray[np.float64], candidates: NDArray[np.intp], n: int) -> list[int]:
        """The first ``n`` candidates by score desc then tool_id (all of them if fewer)."""
        best: list[int] = candidates[self._best(scores[candidates], candidates, n)].tolist()
        return best

    def _top_pruned(self, terms: Sequence[_Term], n: int) -> list[tuple[int, float]] | None:
        """The ``n`` best ``(slot, score)`` by score desc then tool_id, by MaxScore; None when
        pruning would not save work (the caller then scores every posting).

        The terms with short postings are summed first, until ``n`` documents have a partial
        score; the n-th best of those, ``floor``, is a lower bound on the final n-th best. The
        weakest of the other terms, while their largest contributions together stay below
        it, are never scanned: a document holding only them cannot reach the top ``n``. The
        rest are summed too; the candidates whose partial score plus that bound could still
        reach the floor are then scored exactly, every term looked up in query order (the
        same float sums as scoring every posting, so the same scores and order)."""
        total = sum(len(term.slots) for term in terms)
        by_length = sorted(range(len(terms)), key=lambda i: len(terms[i].slots))
        summed: list[int] = []
        scanned = 0
        for i in by_length:
            size = len(terms[i].slots)
            if scanned >= n and scanned + size > total // 4:
                break
            summed.append(i)
            scanned += size
        partial = self._sum(terms, summed)
        rest = sorted((i for i in by_length if i not in summed), key=lambda i: terms[i].top)
        if not rest:
            return None  # nothing left to skip
        candidates = _union([terms[i].slots for i in summed])
        if len(candidates) < n:
            return None
        floor = float(np.partition(partial[candidates], len(candidates) - n)[len(candidates) - n])
        skipped: list[int] = []
        bound = 0.0  # the most the skipped terms add to any document
        for i in rest:  # weakest first
            if bound + terms[i].top >= floor - _BOUND_SLACK:
                break
            bound += terms[i].top
            skipped.append(i)
        needed = rest[len(skipped) :]
        if not skipped or scanned + sum(len(terms[i].slots) for i in needed) > total // 2:
            return None  # most postings are needed anyway: the plain scan is cheaper
        if needed:
            partial += self._sum(terms, needed)
            summed += needed
        if needed:
            candidates = _union([terms[i].slots for i in summed])
            # More terms summed: a higher floor.
            floor = float(np.partition(partial[candidates], len(candidates) - n)[len(candidates) - n])
        # Add the skipped terms to the candidates that could still reach the floor, strongest
        # first, dropping those that no longer can.
        survivors = candidates[partial[candidates] + bound >= floor - _BOUND_SLACK]
        approx = partial[survivors]
        for i in reversed(skipped):
            bound -= terms[i].top
            approx += _lookup(terms[i], survivors)
            keep = approx + bound >= floor - _BOUND_SLACK
            survivors, approx = survivors[keep], approx[keep]
        if len(survivors) > n:  # `approx` is the score summed in another order
            nth = np.partition(approx, len(approx) - n)[len(approx) - n]
            survivors = survivors[approx >= nth - 2 * _BOUND_SLACK]
        exact = np.zeros(len(survivors), dtype=np.float64)
        for term in terms:
            exact += _lookup(term, survivors)
        chosen = self._best(exact, survivors, n)
        return list(zip(survivors[chosen].tolist(), exact[chosen].tolist(), strict=True))

    def _sum(self, terms: Sequence[_Term], chosen: Sequence[int]) -> NDArray[np.float64]:
        """Per-slot sums of the chosen terms' contributions, in one pass."""
        slots = np.concatenate([terms[i].slots for i in chosen])
        values = np.concatenate([terms[i].values for i in chosen])
        sums = np.bincount(slots, weights=values, minlength=len(self._ids)).astype(np.float64, copy=False)
        return sums

    def _best(self, values: NDArray[np.float64], slots: NDArray[np.integer], n: int) -> list[int]:
        """Indices into ``slots`` of the ``n`` best by value desc then tool_id."""
        chosen = np.arange(len(slots))
        if len(chosen) > n:
            # Everything scoring at least the n-th best competes (ties straddling the cut
            # are then broken on tool_id below).
            cutoff = np.partition(values, len(values) - n)[len(values) - n]
            chosen = chosen[values >= cutoff]
        ids = self._ids
        # Plain tuples compare in C; a key reading numpy scalars per element was ~4x slower.
        names = [ids[slot] for slot in slots[chosen].tolist()]
        keyed = sorted(zip((-values[chosen]).tolist(), names, chosen.tolist(), strict=True))
        return [k for _, _, k in keyed[:n]]

    def scores(self, query: str) -> dict[str, float]:
        """BM25 score of every document that shares at least one term with ``query``."""
        scores, candidates = self._score(query)
        return {self._ids[slot]: float(scores[slot]) for slot in candidates.tolist()}

    def search(
        self, query: str, k: int, allowed: Callable[[str], bool] | None = None
    ) -> list[tuple[str, float]]:
        """The top ``k`` ``(tool_id, score)`` for ``query``, by score desc then ``tool_id``.

        Only documents sharing a term with the query are returned. ``allowed`` filters tool
        ids; it is called on candidates in rank order until ``k`` pass, not on every match.
        """
        if k <= 0 or not self._slot:
            return []
        return self._search_terms(self._terms_of(query), k, allowed)

    def searcher(
        self, allowed: Callable[[str], bool] | None = None
    ) -> Callable[[str, int], list[tuple[str, float]]]:
        """:meth:`search` for the several texts of one request (its sub-intent spans, the whole
        request, its sentences), with ``allowed`` fixed: a text with the same terms in the
        same order as an earlier one is not scored again when that search went deep enough
        (a shallower list is a prefix of a deeper one), so the results are exactly
        :meth:`search`'s. On ToolBench about half of the spans repeat a sentence. For one
        request only: it keeps results, which the next change of the index makes stale."""
        done: dict[tuple[tuple[str, bool], ...], tuple[int, list[tuple[str, float]]]] = {}

        def search(query: str, k: int) -> list[tuple[str, float]]:
            if k <= 0 or not self._slot:
                return []
            keyed = self._keyed_terms(query)
            key = tuple(term_key for term_key, _ in keyed)
            earlier = done.get(key)
            # Deep enough, or it already ran out of matches.
            if earlier is not None and (earlier[0] >= k or len(earlier[1]) < earlier[0]):
                return earlier[1][:k]
            results = self._search_terms([term for _, term in keyed], k, allowed)
            done[key] = (k, results)
            return list(results)  # a copy: the caller may change its list, not the kept one

        return search

    def _search_terms(
        self, terms: Sequence[_Term], k: int, allowed: Callable[[str], bool] | None
    ) -> list[tuple[str, float]]:
        prune = sum(len(term.slots) for term in terms) >= _PRUNE_MIN_POSTINGS
        dense: tuple[NDArray[np.float64], NDArray[np.intp]] | None = None
        results: list[tuple[str, float]] = []
        checked, n = 0, k
        while True:
            ranked = self._top_pruned(terms, n) if prune and dense is None else None
            if ranked is None:
                if dense is None:
                    dense = self._score_terms(terms)  # kept: a deeper look reuses it
                scores, candidates = dense
                slots = self._ranked_prefix(scores, candidates, n)
                ranked = list(zip(slots, scores[slots].tolist(), strict=True))
            for slot, score in ranked[checked:]:
                tool_id = self._ids[slot]
                if allowed is None or allowed(tool_id):
                    results.append((tool_id, score))
                    if len(results) == k:
                        return results
            if len(ranked) < n:
                return results  # every candidate has been seen
            checked, n = n, n * 4


def _lookup(term: _Term, slots: NDArray[np.int32]) -> NDArray[np.float32]:
    """The term's contribution to each of ``slots`` (0 where it does not occur)."""
    at = np.minimum(np.searchsorted(term.slots, slots), len(term.slots) - 1)
    return np.where(term.slots[at] == slots, term.values[at], np.float32(0.0))


def _union(sorted_slots: Sequence[NDArray[np.int32]]) -> NDArray[np.int32]:
    """The distinct slots of several postings (numpy's hash-based ``unique`` took ~1 ms for
    the ~20k slots of a query's rarer terms at 100k tools; a stable sort of int32 is a radix
    sort)."""
    joined = np.sort(np.concatenate(sorted_slots), kind="stable")
    if len(joined) < 2:
        return joined
    keep = np.empty(len(joined), dtype=bool)
    keep[0] = True
    np.not_equal(joined[1:], joined[:-1], out=keep[1:])
    return joined[keep]


def query_terms(query: str) -> list[tuple[str, bool]]:
    """The terms a query is scored by: ``(term, is_exact_name_key)``.

    Each query term counts once. Long requests that need several tools repeat the words of
    one need ("playlist ... playlist ... tracks"), which would otherwise crowd out the
    others; on ToolBench this lifts multi-tool queries (G2/G3) most. The query as a whole may
    also be a tool's exact name: that match is as strong for a tool with a long description
    as for a terse one, so it skips length normalisation. The same terms as
    ``text.tokenize`` and ``text.phrase_key``, from one split of the text (a query is
    scored several times: whole and per sentence, and splitting dominated the scoring).
    """
    words = split_words(query)
    terms = [(term, False) for term in dict.fromkeys(normalize(w) for w in words if w not in STOPWORDS)]
    if words:
        terms.append((PHRASE_PREFIX + " ".join(words), True))
    return terms
