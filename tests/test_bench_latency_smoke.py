"""Smoke mode of bench/latency_scale.py and bench/plots.py: tiny N, real processes, so that
they cannot rot. The measurements themselves are in bench/results/."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench import latency_scale, plots
from bench.common import RESULTS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_row(row: dict[str, Any]) -> None:
    assert row["errors"] == 0, row["error_examples"]
    for key in ("mcp_ms", "retrieval_ms", "floor_ms"):
        assert 0 < row[key]["p50"] <= row[key]["p99"], (key, row[key])
    assert all(math.isfinite(r) and r > 0 for r in row["ratio_to_floor"].values())
    # Every client round trip encloses the gateway's own find_tools, so its mean can only be
    # larger: this catches a unit slip or a broken scrape of /metrics.
    assert row["mcp_ms"]["mean"] >= row["gateway_mean_ms"]["find_tools"]
    assert row["cpu_ms_per_query"]["retrieval_p50"] > 0
    assert row["cpu_ms_per_query"]["floor_p50"] > 0
    assert row["rss_mb"]["serving_peak"] >= row["rss_mb"]["ready_peak"] > 0


@pytest.mark.e2e
@pytest.mark.timeout(600)  # three gateway starts; each takes 20 s and more on a loaded machine
def test_latency_scale_smoke(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = latency_scale.run(30, queries=4, warmup=1, intents=("on",), data_dir=data_dir)
    build = result["build"]
    assert not build["reused_data_dir"]
    assert build["servers_failed"] == 0
    assert build["indexed_tools"] == result["tools"] >= 30
    assert build["rss_peak_mb"] > 0
    (on,) = result["rows"]
    _check_row(on)

    # A second run on the same dir adopts the stored build instead of importing again.
    again = latency_scale.run(30, queries=4, warmup=1, intents=("off",), data_dir=data_dir)
    assert again["build"]["reused_data_dir"]
    assert again["build"]["date"] == build["date"]
    (off,) = again["rows"]
    _check_row(off)

    # The mode reached both processes: the intent stage prepares, without it the query is embedded.
    assert "prepare" in on["retrieval_stages_p50_ms"]
    assert "stage_prepare" in on["gateway_mean_ms"]
    assert "embed" in off["retrieval_stages_p50_ms"]
    assert "stage_embed" in off["gateway_mean_ms"]


def test_plots_render_current_results(tmp_path: Path) -> None:
    written = plots.render(RESULTS, tmp_path)
    assert written, "no plot was written from bench/results"
    for path in written:
        assert path.parent == tmp_path
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 1000


def test_plots_skip_missing_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert plots.render(tmp_path / "no-results", tmp_path / "img") == []
    assert "skipped" in capsys.readouterr().out
