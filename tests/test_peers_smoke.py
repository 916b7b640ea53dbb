"""Smoke mode of bench/peers.py: direct vs toolgate, 5 rounds, real processes, no third-party
installs, so the side-by-side benchmark cannot rot. Its numbers are in bench/results/peers.json."""

from __future__ import annotations

import pytest

from bench import peers

pytestmark = pytest.mark.e2e


def test_peers_direct_vs_toolgate() -> None:
    result = peers.run(["direct", "toolgate"], calls=5, warmup=1)
    contenders = result["contenders"]
    assert set(contenders) == {"direct", "toolgate"}
    for name in ("direct", "toolgate"):
        assert "failed" not in contenders[name], contenders[name]["failed"]
        assert contenders[name]["negotiated_protocol"] == "2025-11-25"
        assert contenders[name]["ms"]["p50"] > 0
    assert contenders["toolgate"]["baseline"] == "direct"
    assert "p50" in contenders["toolgate"]["added_ms"]
    # No peer ran, so there is no ratio and the target is undecided rather than faked.
    assert result["ratios"] == {}
    assert result["target"]["met"] is None
    assert result["load"]["measure_start"]["loadavg"]
    assert result["upstream_log"]["error_lines"] == 0, result["upstream_log"]["examples"]
