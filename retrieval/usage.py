"""Usage-driven tool vectors (Tool2Vec, learned online).

A tool's usage vector is the normalised mean of the embeddings of the queries that used it.
Each tool keeps a running sum and a count, so one more use is an O(1) update. The vector the
index scores with blends the description vector toward usage as evidence grows, so a tool
with one lucky use is not yet described by that one query alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Vector = NDArray[np.float32]

# Evidence at which usage and description weigh the same; with n uses, usage weighs n/(n+H).
HALF_WEIGHT_USES = 3.0
# Usage never fully replaces the description: a tool keeps being found for what it says it does.
MAX_USAGE_WEIGHT = 0.85


@dataclass(frozen=True, slots=True)
class UsageState:
    """Running sum of query embeddings that used a tool, and how many."""

    total: Vector
    count: int

    def mean(self) -> Vector:
        return _normalised(self.total)


class MemoryUsageStore:
    """Usage sums in process memory. The gateway seeds it from the registry at start and
    persists each new state itself; evaluation runs use it as is."""

    def __init__(self) -> None:
        self._states: dict[str, UsageState] = {}

    def get(self, tool_id: str) -> UsageState | None:
        return self._states.get(tool_id)

    def put(self, tool_id: str, state: UsageState) -> None:
        self._states[tool_id] = state

    def items(self) -> Iterable[tuple[str, UsageState]]:
        return self._states.items()

    def clear(self) -> None:
        self._states.clear()


def _normalised(vector: Vector) -> Vector:
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        return vector.astype(np.float32)
    return (vector / norm).astype(np.float32)


def usage_weight(count: int) -> float:
    """How much of the blended vector comes from usage after `count` uses."""
    if count <= 0:
        return 0.0
    return min(MAX_USAGE_WEIGHT, count / (count + HALF_WEIGHT_USES))


def add_use(state: UsageState | None, query: Vector) -> UsageState:
    """One more use of a tool by a query with this (normalised) embedding."""
    if state is None:
        return UsageState(total=query.astype(np.float32).copy(), count=1)
    return UsageState(total=(state.total + query).astype(np.float32), count=state.count + 1)


def blended_vector(description: Vector, state: UsageState | None) -> Vector | None:
    """The usage view of a tool: description moved toward the mean of its queries. None while
    the tool has no uses (the index then scores it by description alone)."""
    if state is None or state.count <= 0:
        return None
    weight = usage_weight(state.count)
    return _normalised((1.0 - weight) * description + weight * state.mean())


def learn(
    store: MemoryUsageStore, uses: Iterable[tuple[str, Vector]], descriptions: Mapping[str, Vector]
) -> dict[str, Vector]:
    """Apply many uses (tool id, query vector); return the new blended vectors of the tools
    touched, for the index to store. Uses of unknown tools are ignored."""
    touched: set[str] = set()
    for tool_id, query in uses:
        if tool_id not in descriptions:
            continue
        store.put(tool_id, add_use(store.get(tool_id), query))
        touched.add(tool_id)
    out: dict[str, Vector] = {}
    for tool_id in touched:
        vector = blended_vector(descriptions[tool_id], store.get(tool_id))
        if vector is not None:
            out[tool_id] = vector
    return out
