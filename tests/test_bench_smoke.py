"""Smoke modes of the benchmarks that have no test of their own: tiny N, real processes, so
that they cannot rot. The measurements themselves are in bench/results/."""

from __future__ import annotations

import pytest

from bench import throughput

pytestmark = pytest.mark.e2e


def test_throughput_smoke() -> None:
    result = throughput.run([2], rounds=2, soak=(2, 1.0))
    (row,) = result["levels"]
    assert row["errors"] == 0, row["error_examples"]
    assert row["requests"] == 2 * 2 * 2  # clients x rounds x (find + call)
    assert row["requests_per_s"] > 0
    assert row["find_ms"]["p50"] > 0
    soak = result["soak"]
    assert soak["errors"] == 0, soak["error_examples"]
    assert soak["requests"] >= row["requests"]  # whole conversations until the deadline
    assert soak["rss_mb_start"] > 0
    assert soak["rss_mb_end"] > 0
