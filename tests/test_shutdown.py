"""Graceful shutdown end to end: a real `toolgate serve`, a real slow stdio upstream and a real
SDK client. SIGTERM while a call runs: the client still gets the real result, the gateway
exits cleanly, and no upstream process outlives it."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.running import RunningGateway
from tests.support import PYTHON, ROOT, children_of, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def _in_flight(gateway: RunningGateway, server: str) -> int:
    listed = gateway.http.get("/admin/upstreams").json()
    return int(next(entry["in_flight"] for entry in listed if entry["name"] == server))


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        alive.add(pid)
    return alive


@pytest.mark.parametrize(
    "mode",
    ["auto", "legacy"],  # 2026-07-28 (no sessions), 2025-11-25 (the result streams back as SSE)
)
async def test_sigterm_drains_the_call_in_flight(tmp_path: Path, mode: str) -> None:
    gateway = RunningGateway(tmp_path / "gateway")
    stopped = False
    try:
        gateway.register(
            {"name": "slow", "command": PYTHON, "args": ["-m", "tests.servers.slow_server"], "cwd": str(ROOT)}
        )
        upstreams = children_of(gateway.process.pid)
        assert upstreams
        results: list[Any] = []
        survivors: list[set[int]] = []

        async def call() -> None:
            async with gateway.client(mode=mode) as client:
                await client.list_tools()  # as clients do; the SDK checks results against it
                arguments = {"name": "slow__sleep", "arguments": {"seconds": 2}}
                results.append(await client.call_tool("call_tool", arguments))

        async def terminate_mid_call() -> None:
            await wait_until(lambda: _in_flight(gateway, "slow") == 1)
            survivors.append(await anyio.to_thread.run_sync(gateway.stop))  # SIGTERM, then wait

        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(call)
                group.start_soon(terminate_mid_call)
        stopped = True

        (result,) = results
        assert not result.is_error, result
        assert [getattr(block, "text", None) for block in result.content] == ["slept 2"]
        # uvicorn re-raises the signal once it has shut down cleanly
        assert gateway.process.returncode in (0, -signal.SIGTERM)
        assert survivors == [set()]
        assert not _alive(upstreams)
    finally:
        if not stopped:
            gateway.stop()
