"""Smoke mode of bench/profile_gateway.py: a few forwarded calls through a real gateway with
py-spy attached, so the profiling harness cannot rot. Its findings are in
bench/results/profile_pass.json."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import profile_gateway


def test_stack_summary_shares(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(
        "process 1;main (gateway/cli.py:10);send (httpx2/_client.py:5) 3\n"
        "process 1;main (gateway/cli.py:10);forward (gateway/forwarder.py:20) 1\n"
    )
    summary = profile_gateway.summarise_stacks(raw)
    assert summary["samples"] == 4
    assert summary["layers_own"] == {"httpx2": 0.75, "toolgate gateway": 0.25}
    assert summary["top_inclusive"][0] == {"frame": "main (gateway/cli.py)", "share": 1.0}


@pytest.mark.e2e
def test_profile_call_smoke(tmp_path: Path) -> None:
    # 20 calls at 200 Hz leave ~40 busy samples; 5 at 50 Hz left 1-4, and once none in CI.
    result = profile_gateway.run(
        "call", calls=20, warmup=2, profile="current", spy_rate=200, spy_out=tmp_path
    )
    assert result["ms"]["direct"]["p50"] > 0
    assert result["added_ms"]["current"]["p50"] is not None
    assert result["gateway_cpu_ms_per_request"]["current"] > 0
    assert result["profile"]["samples"] > 0, "py-spy recorded nothing"
