"""Ranking quality, latency and token cost of a retrieval run, as the benchmark data defines them.

The definitions follow ``/work/shared/data/README.md`` exactly. For a query with relevant set
G and ranked list R:

- Recall@K = |top-K(R) ∩ G| / |G|
- nDCG@K = Σ_{i<K, R_i∈G} 1/log2(i+2) / Σ_{i<min(K,|G|)} 1/log2(i+2)
- Completeness@K = 1 if G ⊆ top-K(R) else 0

and each is averaged over queries. Edge cases the README leaves open, decided here:

- **K larger than the list**: top-K is the whole list. A short list is not padded or
  rescaled, so returning fewer than K results can only lower the score.
- **Duplicates in the ranking**: a repeated id counts once, at its first position; the
  repeat still takes its slot in top-K. Recall is a set intersection either way; for nDCG
  this keeps the score within [0, 1] and charges a retriever for wasting a slot, instead of
  rewarding it twice or letting later results move up.
- **Duplicates in the relevant set**: G is a set; repeated labels count once.
- **Empty relevant set**: every metric raises ``ValueError``. Recall and nDCG are 0/0 there,
  and scoring such a query as 0 or 1 would bias the mean either way; loaders drop unlabelled
  queries instead (see :mod:`retrieval.corpus`).
- **K < 1**: ``ValueError``.

Latency percentiles use the nearest-rank method (see :func:`percentile`): the reported value
is always one that was measured, never an interpolation.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

KS: tuple[int, ...] = (1, 3, 5, 10, 20)
"""The cut-offs every report covers."""

METRICS: tuple[str, ...] = ("recall", "ndcg", "completeness")
"""Metric names, as they appear in report keys such as ``recall@5``."""


def _relevant_set(relevant: Collection[str], k: int) -> frozenset[str]:
    if k < 1:
        raise ValueError(f"K must be at least 1, got {k}")
    gold = frozenset(relevant)
    if not gold:
        raise ValueError("the relevant set is empty: the metric is undefined for this query")
    return gold


def recall_at(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Recall@K: the share of the relevant tools found in the first ``k`` results."""
    gold = _relevant_set(relevant, k)
    return len(gold.intersection(ranked[:k])) / len(gold)


def ndcg_at(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """nDCG@K with binary gains; a repeated id gains only at its first position."""
    gold = _relevant_set(relevant, k)
    seen: set[str] = set()
    dcg = 0.0
    for i, tool_id in enumerate(ranked[:k]):
        if tool_id in gold and tool_id not in seen:
            seen.add(tool_id)
            dcg += 1.0 / math.log2(i + 2)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(gold))))
    return dcg / ideal


def completeness_at(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Completeness@K: 1.0 if every relevant tool is in the first ``k`` results, else 0.0."""
    gold = _relevant_set(relevant, k)
    return 1.0 if gold.issubset(ranked[:k]) else 0.0


def query_metrics(
    ranked: Sequence[str], relevant: Collection[str], ks: Sequence[int] = KS
) -> dict[str, float]:
    """Every metric at every K for one query, keyed ``recall@K``, ``ndcg@K``, ``completeness@K``."""
    row: dict[str, float] = {}
    for name, metric in (("recall", recall_at), ("ndcg", ndcg_at), ("completeness", completeness_at)):
        for k in ks:
            row[f"{name}@{k}"] = metric(ranked, relevant, k)
    return row


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least ``q`` percent of values <= it.

    That is the value at 1-based rank ``ceil(q / 100 * n)`` of the sorted values (rank 1 for
    ``q == 0``). ``q`` is read through its decimal text so that, e.g., p99 of 100 values is
    exactly rank 99 with no float round-off. Raises ``ValueError`` on an empty list or ``q``
    outside 0..100.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = math.ceil(Fraction(str(q)) * len(ordered) / 100)
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True)
class QueryRecord:
    """One evaluated query as :class:`MetricSet` keeps it."""

    query_id: str
    group: str | None
    metrics: dict[str, float]
    latency_s: float
    returned_tokens: int | None


class MetricSet:
    """Accumulates per-query results and reports means overall and per ``group``.

    ``tools`` is the size of the searched corpus and ``listing_tokens`` the token cost of
    listing every tool in it (see :mod:`retrieval.tokens`); both are reported as given.
    ``limit`` is the number of results the caller hands a client, recorded beside the token
    cost of those results. Either every query reports ``returned_tokens`` or none does.
    """

    def __init__(
        self,
        *,
        tools: int,
        listing_tokens: int | None = None,
        limit: int | None = None,
        ks: Sequence[int] = KS,
        ndigits: int = 4,
    ) -> None:
        """Start an empty set; ``ndigits`` rounds the reported metric means."""
        if not ks or any(k < 1 for k in ks):
            raise ValueError(f"every K must be at least 1, got {list(ks)}")
        self.tools = tools
        self.listing_tokens = listing_tokens
        self.limit = limit
        self.ks = tuple(ks)
        self.ndigits = ndigits
        self._records: list[QueryRecord] = []
        self._ids: set[str] = set()

    def __len__(self) -> int:
        return len(self._records)

    @property
    def records(self) -> list[QueryRecord]:
        """The queries added so far, in order."""
        return list(self._records)

    def add(
        self,
        query_id: str,
        group: str | None,
        ranked: Sequence[str],
        relevant: Collection[str],
        latency_s: float,
        returned_tokens: int | None = None,
    ) -> dict[str, float]:
        """Score one query and keep it; return its metrics row.

        Raises ``ValueError`` for a query id already added (it would count twice), an empty
        relevant set, a negative latency, or ``returned_tokens`` given for some queries only.
        """
        if query_id in self._ids:
            raise ValueError(f"query {query_id!r} was already added")
        if latency_s < 0:
            raise ValueError(f"negative latency for query {query_id!r}")
        if self._records and (returned_tokens is None) != (self._records[0].returned_tokens is None):
            raise ValueError("returned_tokens must be given for every query or for none")
        row = query_metrics(ranked, relevant, self.ks)
        self._records.append(QueryRecord(query_id, group, row, latency_s, returned_tokens))
        self._ids.add(query_id)
        return row

    def _means(self, records: Sequence[QueryRecord]) -> dict[str, Any]:
        keys = [f"{name}@{k}" for name in METRICS for k in self.ks]
        means: dict[str, Any] = {"queries": len(records)}
        for key in keys:
            means[key] = round(statistics.fmean(r.metrics[key] for r in records), self.ndigits)
        return means

    def report(self) -> dict[str, Any]:
        """The run's report as plain JSON-ready data.

        Keys: ``tools``, ``queries``, every ``<metric>@<K>`` mean (so ``recall@5``,
        ``ndcg@10``, ``completeness@10`` among them), ``latency_ms`` (``mean``, ``p50``,
        ``p99`` of one retrieval call), ``tokens`` (``limit``, ``returned_mean``,
        ``listing``, ``returned_share``; ``None`` values where not measured) and ``groups``:
        per group, sorted by name, ``queries`` and the same metric keys. Queries without a
        group count only overall. Raises ``ValueError`` when no query was added.
        """
        if not self._records:
            raise ValueError("no queries were added")
        records = self._records
        latencies_ms = [r.latency_s * 1000.0 for r in records]
        tokens = [r.returned_tokens for r in records if r.returned_tokens is not None]
        returned_mean = round(statistics.fmean(tokens), 1) if tokens else None
        share = (
            round(returned_mean / self.listing_tokens, 6)
            if returned_mean is not None and self.listing_tokens
            else None
        )
        groups: dict[str, list[QueryRecord]] = {}
        for record in records:
            if record.group is not None:
                groups.setdefault(record.group, []).append(record)
        return {
            "tools": self.tools,
            **self._means(records),
            "latency_ms": {
                "mean": round(statistics.fmean(latencies_ms), 3),
                "p50": round(percentile(latencies_ms, 50), 3),
                "p99": round(percentile(latencies_ms, 99), 3),
            },
            "tokens": {
                "limit": self.limit,
                "returned_mean": returned_mean,
                "listing": self.listing_tokens,
                "returned_share": share,
            },
            "groups": {name: self._means(groups[name]) for name in sorted(groups)},
        }
