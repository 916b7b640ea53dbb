"""Usage vectors (Tool2Vec online), rank fusion and the live-learning guard: pure units."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.fusion import hierarchical, normalise_max, normalise_range, rrf, server_support, top
from retrieval.usage import MAX_USAGE_WEIGHT, MemoryUsageStore, add_use, blended_vector, learn, usage_weight


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32)


def test_usage_is_the_normalised_mean_of_its_queries() -> None:
    state = add_use(None, unit(1, 0, 0))
    state = add_use(state, unit(0, 1, 0))
    assert state.count == 2
    assert np.allclose(state.mean(), unit(1, 1, 0), atol=1e-6)


def test_blend_moves_toward_usage_as_evidence_grows() -> None:
    description = unit(1, 0)
    query = unit(0, 1)
    assert blended_vector(description, None) is None
    weights = []
    state = None
    for _ in range(30):
        state = add_use(state, query)
        vector = blended_vector(description, state)
        assert vector is not None
        assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
        weights.append(float(vector @ query))
    assert weights == sorted(weights)  # ever closer to the queries
    assert weights[0] < 0.5 < weights[-1]
    assert usage_weight(10_000) == MAX_USAGE_WEIGHT  # the description never vanishes
    assert float(blended_vector(description, state) @ description) > 0  # type: ignore[operator]


def test_learn_ignores_unknown_tools() -> None:
    store = MemoryUsageStore()
    out = learn(store, [("a", unit(0, 1)), ("ghost", unit(1, 0))], {"a": unit(1, 0)})
    assert set(out) == {"a"}
    assert store.get("ghost") is None


def test_rrf_uses_ranks_and_weights() -> None:
    fused = rrf({"x": [("a", 100.0), ("b", 1.0)], "y": [("b", 0.9), ("c", 0.8)]}, {"x": 1.0, "y": 1.0}, k=60)
    assert top(fused, 3)[0][0] == "b"  # in both lists
    assert fused["a"] == pytest.approx(1 / 61)
    muted = rrf({"x": [("a", 1.0)], "y": [("b", 1.0)]}, {"x": 0.0, "y": 1.0})
    assert set(muted) == {"b"}


def test_hierarchical_needs_both_signals() -> None:
    assert hierarchical(0.9, 0.9) > hierarchical(0.9, 0.3) > hierarchical(0.3, 0.3)
    assert hierarchical(-1.0, 0.9) == 0.0
    assert normalise_max({"a": 2.0, "b": 1.0}) == {"a": 1.0, "b": 0.5}
    assert normalise_max({"a": 0.0}) == {"a": 0.0}


def test_range_scaling_and_server_support() -> None:
    assert normalise_range({"a": 0.5, "b": 0.3, "c": 0.4}) == pytest.approx({"a": 1.0, "b": 0.0, "c": 0.5})
    assert normalise_range({"a": 0.2, "b": 0.2}) == {"a": 0.0, "b": 0.0}
    assert normalise_range({}) == {}
    servers = {"a": "s", "b": "s", "c": "s", "d": "t"}
    support = server_support({"a": 3.0, "b": 2.0, "c": 1.0, "d": 5.0}, servers, depth=2)
    assert support == {"a": 3.0, "b": 4.0, "c": 5.0, "d": 0.0}  # the others' best two, never itself
