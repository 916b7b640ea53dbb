"""Fusing ranked lists and scoring servers: plain functions over ids and scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

Ranked = Sequence[tuple[str, float]]


def rrf(lists: Mapping[str, Ranked], weights: Mapping[str, float], k: float = 60.0) -> dict[str, float]:
    """Weighted reciprocal-rank fusion: sum of w / (k + rank) over the lists an id appears in.
    Ranks, not raw scores, so BM25's unbounded scores and cosines combine without calibration."""
    fused: dict[str, float] = {}
    for name, ranked in lists.items():
        weight = weights.get(name, 1.0)
        if weight == 0.0:
            continue
        for rank, (item, _score) in enumerate(ranked, start=1):
            fused[item] = fused.get(item, 0.0) + weight / (k + rank)
    return fused


def hierarchical(server_score: float, tool_score: float) -> float:
    """MCP-Zero's combination of a server's and a tool's similarity: (s·t)·max(s, t). High only
    when both agree, and it favours the stronger of the two signals."""
    s = max(server_score, 0.0)
    t = max(tool_score, 0.0)
    return (s * t) * max(s, t)


def top(scores: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The n best (id, score) pairs, best first; ties by id for determinism."""
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))[:n]


def normalise_max(scores: Mapping[str, float]) -> dict[str, float]:
    """Scale so the best is 1.0 (0 stays 0); for features whose absolute size means little."""
    best = max(scores.values(), default=0.0)
    if best <= 0.0:
        return dict.fromkeys(scores, 0.0)
    return {key: value / best for key, value in scores.items()}
