"""schemathesis against the admin API's own OpenAPI document, on a real gateway process: no
generated request may get a server error. The long run is the same command with a bigger
`--max-time` (see README, Registration safety)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.running import RunningGateway
from tests.support import PYTHON, require

SCHEMATHESIS = Path(PYTHON).parent / "schemathesis"
pytestmark = pytest.mark.e2e


def test_no_generated_request_gets_a_server_error(tmp_path: Path) -> None:
    require(SCHEMATHESIS.exists(), "schemathesis is not installed (pip install -e '.[dev]')")
    gateway = RunningGateway(
        tmp_path / "data",
        {
            # Generated registrations must not run arbitrary programs: only `true` may be spawned.
            "TOOLGATE_STDIO_COMMANDS": "true",
            "TOOLGATE_CONNECT_TIMEOUT_S": "3",
        },
    )
    try:
        result = subprocess.run(
            [
                str(SCHEMATHESIS),
                "run",
                f"{gateway.base}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-time",
                "40",
                "--workers",
                "2",
                "--seed",
                "20261202",
                "--suppress-health-check",
                "all",
                "--header",
                f"Authorization: Bearer {gateway.admin_key}",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        assert gateway.process.poll() is None, "the gateway died under schemathesis"
        assert gateway.http.get("/readyz").status_code == 200
    finally:
        gateway.stop()
    summary = result.stdout[-6000:]
    assert "Server error" not in result.stdout, summary
    assert result.returncode == 0, summary
    assert "generated" in result.stdout  # it did run test cases
