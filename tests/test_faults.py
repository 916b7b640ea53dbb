"""Upstream faults end to end: one round of bench/faults.py against a real gateway process.

Every fault of tests/servers/faulty_server.py, over stdio and streamable HTTP, must give the
client a clear tool error (or, for a changed tool list and a server that exits while idle, a
normal answer), within the call timeout; a second conversation keeps working meanwhile; the
server answers again afterwards; and the gateway's children, descriptors and TCP sockets come
back to where they were.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from bench.faults import run_suite

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def suite() -> dict[str, Any]:
    return await run_suite(rounds=1, huge_mb=8, call_timeout=1.5)


def _rows(suite: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = suite["faults"]
    assert len(rows) == 14, [r["tool"] for r in rows]
    return rows


async def test_each_fault_gives_the_expected_answer_in_bounded_time(suite: dict[str, Any]) -> None:
    bound = suite["summary"]["bound_s"]
    for row in _rows(suite):
        where = f"{row['server']}/{row['tool']}: {row['message']!r}"
        assert row["correct"], where
        assert row["seconds"] <= bound, where
        assert row["gateway_up"], where
        if row["is_error"]:
            assert "Traceback" not in row["message"], where


async def test_the_limits_are_named_in_the_errors(suite: dict[str, Any]) -> None:
    by_fault = {(r["server"], r["tool"]): r["message"] for r in _rows(suite)}
    for server in ("faulty", "faultyweb"):
        assert "TOOLGATE_MAX_RESULT_BYTES" in by_fault[server, "huge"]
        assert re.search(r"within 1\.5s", by_fault[server, "hang"])
        assert "at count: 'many' is not of type 'integer'" in by_fault[server, "bad_output"]


async def test_another_conversation_keeps_working_during_every_fault(suite: dict[str, Any]) -> None:
    for row in _rows(suite):
        healthy = row["healthy_during"]
        assert healthy["ok"] >= 1, (row["server"], row["tool"], healthy)
        assert not healthy["failed"], (row["server"], row["tool"], healthy)
        assert healthy["max_ms"] < 3000, (row["server"], row["tool"], healthy)


async def test_the_server_answers_again_and_list_changes_are_followed(suite: dict[str, Any]) -> None:
    for row in _rows(suite):
        assert row["recovered"], (row["server"], row["tool"], row.get("recovery_error"))
        if row["tool"] == "change_list":
            assert row["list_followed"], row
        if "while_gone" in row:  # the HTTP server was down: a clear error, not a hang
            assert re.search(r"cannot connect|unavailable|closed the connection", row["while_gone"]), row


async def test_no_process_descriptor_or_connection_leaks(suite: dict[str, Any]) -> None:
    for row in _rows(suite):
        assert row["returned_to_baseline"], (row["server"], row["tool"], row["before"], row["after"])
    baseline, final = suite["baseline_resources"], suite["final_resources"]
    assert all(final[key] <= baseline[key] for key in baseline), (baseline, final)
    assert baseline["children"] == 2  # the stdio faulty and healthy servers, one process each
