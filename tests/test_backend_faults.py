"""Backend faults under load: PostgreSQL and Redis stopped and started under a real gateway.

Private instances on their own ports (PostgreSQL by `initdb`/`pg_ctl` as the `postgres` user
when we are root; the machine's `redis-server`), so the shared services stay up for the rest
of the suite. While PostgreSQL is down: /readyz says 503 with the database error, find_tools
and call_tool keep answering (the catalog is in memory), admin writes get a clear 503. Once it
is back: /readyz 200 without a restart, writes succeed, and no row is lost or half-written.
While Redis is down find_tools answers with `memory_error`; once it is back, the conversation
has its working set again.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from tests.memory_fixtures import PrivateRedis
from tests.running import RunningGateway
from tests.support import PYTHON, ServerProcess, free_port, require, wait_until

pytestmark = pytest.mark.anyio

ECHO_TOOLS = 8  # tests/servers/echo_server.py lists eight tools


def _pg_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PrivatePostgres:
    """A throwaway PostgreSQL cluster on a free port (trust auth, loopback only)."""

    def __init__(self) -> None:
        initdb, pg_ctl = _pg_binary("initdb"), _pg_binary("pg_ctl")
        require(initdb is not None and pg_ctl is not None, "PostgreSQL's initdb/pg_ctl are not installed")
        assert initdb is not None
        assert pg_ctl is not None
        self.initdb, self.pg_ctl = initdb, pg_ctl
        # PostgreSQL refuses to run as root: as root, run it as `postgres` in a dir it owns.
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            require(
                shutil.which("runuser") is not None, "runuser is missing (needed to run postgres as root)"
            )
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.root = Path(tempfile.mkdtemp(prefix="toolgate-pg-"))
        if self.as_user:
            shutil.chown(self.root, "postgres")
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=60, check=False)

    def init(self) -> None:
        done = self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust")
        require(done.returncode == 0, f"initdb failed: {done.stderr.strip()[-300:]}")

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        log = str(self.root / "log")
        done = self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "start")
        require(done.returncode == 0, f"pg_ctl start failed: {done.stdout}{done.stderr}")

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[PrivateRedis]:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def echo_http() -> Iterator[ServerProcess]:
    server = ServerProcess([PYTHON, "-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gateway(
    postgres: PrivatePostgres, redis_server: PrivateRedis, echo_http: ServerProcess
) -> Iterator[RunningGateway]:
    data = Path(tempfile.mkdtemp(prefix="toolgate-backend-"))
    env = {"DATABASE_URL": postgres.url, "REDIS_URL": redis_server.url, "TOOLGATE_CALL_TIMEOUT_S": "5"}
    running = RunningGateway(data, env)
    try:
        running.register({"name": "base", "transport": "http", "url": echo_http.url})
        yield running
    finally:
        leftovers = running.stop()
        shutil.rmtree(data, ignore_errors=True)
        assert not leftovers


@dataclass
class Load:
    """What the concurrent clients saw, by phase ("before", "outage", "after")."""

    phase: str = "before"
    finds: dict[str, list[bool]] = field(default_factory=dict)
    calls: dict[str, list[bool]] = field(default_factory=dict)
    writes: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    acknowledged: set[str] = field(default_factory=set)

    def count(self, table: dict[str, list[Any]], phase: str, ok: bool | None = None) -> int:
        rows = table.get(phase, [])
        return len(rows) if ok is None else sum(1 for row in rows if row is ok)


async def _conversing(client: Client, load: Load, index: int) -> None:
    conversation = f"backend-load-{index}"
    while True:
        phase = load.phase
        found = await client.call_tool(
            "find_tools", {"query": "echo some text back", "conversation": conversation}
        )
        hits = (found.structured_content or {}).get("tools") or []
        load.finds.setdefault(phase, []).append(not found.is_error and bool(hits))
        called = await client.call_tool("call_tool", {"name": "base__echo", "arguments": {"text": "hi"}})
        load.calls.setdefault(phase, []).append(not called.is_error)
        await anyio.sleep(0.05)


async def _writing(http: httpx.AsyncClient, url: str, load: Load) -> None:
    number = 0
    while True:
        number += 1
        phase, name = load.phase, f"w{number}"
        try:
            response = await http.post("/admin/servers", json={"name": name, "transport": "http", "url": url})
            status, detail = response.status_code, response.text[:300]
        except httpx.TransportError as exc:
            status, detail = 0, f"{type(exc).__name__}: {exc}"
        load.writes.setdefault(phase, []).append((status, detail))
        if status == 201:
            load.acknowledged.add(name)
        await anyio.sleep(0.1)


def _ready(gateway: RunningGateway) -> tuple[int, dict[str, Any]]:
    response = gateway.http.get("/readyz")
    body: dict[str, Any] = response.json()
    return response.status_code, body


async def _until(predicate: Any, timeout: float = 30) -> None:  # noqa: ASYNC109
    await wait_until(predicate, timeout=timeout, interval=0.1)


@pytest.fixture
async def load(gateway: RunningGateway, echo_http: ServerProcess) -> AsyncIterator[Load]:
    state = Load()
    headers = gateway.auth_headers()
    async with (
        httpx.AsyncClient(base_url=gateway.base, headers=headers, timeout=30) as http,
        gateway.client() as a,
        gateway.client() as b,
        gateway.client() as c,
        anyio.create_task_group() as group,
    ):
        for index, client in enumerate((a, b, c)):
            group.start_soon(_conversing, client, state, index)
        group.start_soon(_writing, http, echo_http.url, state)
        yield state
        group.cancel_scope.cancel()


async def _rows(url: str) -> dict[str, tuple[str, int]]:
    import asyncpg

    connection = await asyncpg.connect(url, timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT s.name, s.status, (SELECT count(*) FROM tools t WHERE t.server_id = s.id) AS tools "
            "FROM servers s"
        )
        orphans = await connection.fetchval(
            "SELECT count(*) FROM tools t WHERE NOT EXISTS (SELECT 1 FROM servers s WHERE s.id = t.server_id)"
        )
    finally:
        await connection.close()
    assert orphans == 0
    return {row["name"]: (row["status"], row["tools"]) for row in rows}


async def test_postgres_restart_under_load(
    gateway: RunningGateway, postgres: PrivatePostgres, load: Load
) -> None:
    await _until(lambda: load.count(load.finds, "before", True) >= 6 and len(load.acknowledged) >= 2)

    load.phase = "outage"
    await anyio.to_thread.run_sync(postgres.stop, "immediate")  # a crash, not a polite shutdown
    await _until(lambda: _ready(gateway)[0] == 503, timeout=15)
    _status, body = _ready(gateway)
    assert body["database"].startswith("error:"), body
    await _until(lambda: load.count(load.finds, "outage") >= 6 and load.count(load.writes, "outage") >= 3)

    load.phase = "after"
    started = time.monotonic()
    await anyio.to_thread.run_sync(postgres.start)
    await _until(lambda: _ready(gateway)[0] == 200, timeout=30)
    recovered_in = time.monotonic() - started
    await _until(lambda: sum(s == 201 for s, _ in load.writes.get("after", [])) >= 2)
    await _until(lambda: load.count(load.finds, "after", True) >= 3)
    load.phase = "done"

    # During the outage: the catalog answered, the upstream answered, writes were refused clearly.
    assert load.count(load.finds, "outage", True) == load.count(load.finds, "outage"), load.finds["outage"]
    assert load.count(load.calls, "outage", True) == load.count(load.calls, "outage"), load.calls["outage"]
    outage = load.writes["outage"]
    assert all(status in (201, 503) for status, _ in outage), outage  # never a 500
    refused = [detail for status, detail in outage if status == 503]
    assert refused, outage
    assert all("database is unavailable" in detail for detail in refused), refused
    unexpected = [
        (phase, w) for phase, writes in load.writes.items() for w in writes if w[0] not in (201, 503)
    ]
    assert not unexpected, unexpected  # no 500, no dropped connection, in any phase
    assert gateway.http.get("/healthz").status_code == 200  # never restarted
    assert gateway.process.poll() is None
    assert recovered_in < 30

    # Every acknowledged server is whole; no row is half-written (a server has all its tools or,
    # if its sync did not complete, none).
    rows = await _rows(postgres.url)
    for name in load.acknowledged:
        assert name in rows, name
        assert rows[name] == ("ok", ECHO_TOOLS), (name, rows[name])
    for name, (_state, tools) in rows.items():
        assert tools in (0, ECHO_TOOLS), (name, rows[name])


async def test_redis_restart_conversations_resume(
    gateway: RunningGateway, redis_server: PrivateRedis
) -> None:
    async def find(client: Client) -> dict[str, Any]:
        result = await client.call_tool(
            "find_tools", {"query": "add two numbers", "conversation": "redis-conv"}
        )
        assert not result.is_error, result.content
        assert result.structured_content is not None
        payload: dict[str, Any] = result.structured_content
        assert payload["tools"], payload
        return payload

    async with gateway.client() as client:
        assert "memory" in await find(client)
        redis_server.stop()
        down = await find(client)
        assert "memory" not in down
        assert down["memory_error"], down
        called = await client.call_tool(
            "call_tool", {"name": "base__echo", "arguments": {"text": "x"}, "conversation": "redis-conv"}
        )
        assert not called.is_error, called.content  # the working set is best effort; the call is not
        redis_server.start()
        seen: list[dict[str, Any]] = []

        async def resumed() -> bool:
            seen.append(await find(client))
            return "memory" in seen[-1]

        with anyio.fail_after(20):
            while not await resumed():  # noqa: ASYNC110 - the gateway reconnects on its own
                await anyio.sleep(0.2)
        assert seen[-1]["memory"]["count"] >= 1
        assert seen[-1]["conversation"] == "redis-conv"
