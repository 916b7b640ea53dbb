"""Smoke modes of the benchmarks that have no test of their own: tiny N, real processes, so
that they cannot rot. The measurements themselves are in bench/results/."""

from __future__ import annotations

import pytest

from bench import lexical_prune, sync_scale, throughput

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


def test_sync_scale_smoke() -> None:
    """Import, unchanged re-sync, changed re-sync at 3 servers: the gateway's own counters
    must show every tool embedded once, nothing re-embedded, then only the changed ones."""
    result = sync_scale.run(3, change_fraction=0.05, sample=32)
    first = result["first_sync"]
    assert first["servers_ok"] == 3, first["errors"]
    assert result["tools_stored"] == result["tools_indexed"] == first["tools_created"]
    assert result["indexing"]["tools_embedded"] == first["tools_created"]
    assert result["indexing"]["reloads"] == 1  # one catalog reload for the whole import
    assert result["unchanged_resync"]["updated"] == 0
    assert result["unchanged_resync"]["embedded"] == 0
    changed = result["changed_resync"]
    assert changed["tools_changed_upstream"] >= 1
    assert changed["embedded"] == changed["tools_changed_upstream"]
    assert result["same_embedder"]
    assert 0 < result["sync_s"] < result["import_and_sync_s"]
    assert result["embedder"]["texts_per_s_mean"] > 0
    assert result["gateway_peak_rss_mb"] > 0


def test_lexical_prune_smoke() -> None:
    result = lexical_prune.run(2, tools=300, queries=4)
    assert result["tools"] == 600
    assert result["queries"] == 4
    for mode in ("off", "on"):
        row = result["search_p50_ms"][mode]
        assert row["full_scan"] > 0
        assert row["maxscore"] > 0
        # The ratio comes from the unrounded medians; at this size they are hundredths of a ms,
        # where rounding to 3 places alone moves the quotient by a few percent.
        assert row["ratio"] == pytest.approx(row["maxscore"] / row["full_scan"], rel=0.1)
