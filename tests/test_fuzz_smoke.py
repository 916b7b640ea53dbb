"""Smoke mode of bench/fuzz_mcp.py: malformed frames against a real gateway process. The full
run (10,000 frames) is `python -m bench.fuzz_mcp`; this keeps it from rotting."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from bench.fuzz_mcp import fuzz
from tests.running import RunningGateway
from tests.support import PYTHON, ROOT

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    running = RunningGateway(
        tmp_path_factory.mktemp("fuzz") / "data", {"TOOLGATE_MAX_REQUEST_BYTES": "1048576"}
    )
    running.register(
        {"name": "echo", "command": PYTHON, "args": ["-m", "tests.servers.echo_server"], "cwd": str(ROOT)}
    )
    yield running
    assert running.stop() == set()


async def test_malformed_frames_never_crash_or_5xx_without_a_jsonrpc_error(gateway: RunningGateway) -> None:
    report = await fuzz(gateway.base, frames=400, seed=7, headers=gateway.auth_headers(), concurrency=4)
    assert report.frames == 400
    assert report.failures == [], report.failures[:3]
    assert report.transport_errors == [], report.transport_errors[:3]
    assert gateway.process.poll() is None
    assert gateway.http.get("/readyz").status_code == 200
    # The frames reached the handlers, not only the transport's checks.
    assert report.statuses[200] > 40
    assert report.kinds["tool-arguments"] > 0


async def test_oversized_bodies_get_a_clear_413(gateway: RunningGateway) -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":"' + b"a" * 2_000_000 + b'"}}'
    async with httpx.AsyncClient(base_url=gateway.base, headers=gateway.auth_headers(), timeout=30) as http:
        mcp = await http.post("/mcp/", content=big, headers={"Content-Type": "application/json"})
        admin = await http.post("/admin/import", content=big, headers={"Content-Type": "application/json"})
    assert mcp.status_code == 413
    assert mcp.json()["error"]["code"] == -32600
    assert admin.status_code == 413
    assert "TOOLGATE_MAX_REQUEST_BYTES" in admin.json()["detail"]
    assert gateway.http.get("/admin/servers").status_code == 200  # nothing broke behind it


async def test_unauthenticated_frames_are_refused_without_reaching_the_handlers(
    gateway: RunningGateway,
) -> None:
    report = await fuzz(gateway.base, frames=100, seed=8, concurrency=4)
    assert report.failures == []
    assert set(report.statuses) <= {401, 413}, report.statuses
