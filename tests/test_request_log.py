"""Past requests survive a restart and reach other replicas: the request log on SQLite and
PostgreSQL, and two catalogs (replicas) plus a restarted one over one registry database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import anyio
import numpy as np
import pytest

from gateway.catalog import Catalog
from registry.db import create_engine, create_sessionmaker
from registry.models import utcnow
from registry.repository import Registry
from registry.request_log import RequestLog
from registry.specs import ServerSpec, UpstreamTool
from retrieval.embedder import OnnxEmbedder, load_onnx
from retrieval.index import open_index
from retrieval.past import request_key
from retrieval.pipeline import VECTOR_NAMES, Retriever

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    return load_onnx(quantize=True)


@pytest.fixture
async def registry(database_url: str) -> AsyncIterator[Registry]:
    engine = create_engine(database_url)
    try:
        yield Registry(create_sessionmaker(engine))
    finally:
        await engine.dispose()


def _tool(name: str, description: str) -> UpstreamTool:
    schema = {"type": "object", "properties": {"q": {"type": "string", "description": "What to look up."}}}
    return UpstreamTool(name=name, description=description, input_schema=schema)


async def _catalog_tools(registry: Registry) -> int:
    server = await registry.create_server(ServerSpec(name="football", command="football-mcp"))
    await registry.apply_tool_list(
        server.id,
        [
            _tool("search_players", "Find a player by name"),
            _tool("transfers", "Transfer history of a player by player id"),
            _tool("fixtures", "Upcoming matches of a team"),
        ],
    )
    return server.id


def _vector(seed: int, dim: int = 8) -> bytes:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return (v / np.linalg.norm(v)).astype(np.float32).tobytes()


async def test_the_log_keeps_each_use_once_and_reads_back_the_newest_requests(registry: Registry) -> None:
    server_id = await _catalog_tools(registry)
    log = RequestLog(registry)
    before = utcnow() - timedelta(seconds=1)
    uses = [
        ("r1", "football__search_players", _vector(1)),
        ("r1", "football__transfers", _vector(1)),
        ("r2", "football__fixtures", _vector(2)),
        ("r2", "no_such__tool", _vector(2)),  # not registered: skipped
    ]
    assert await log.add(uses) == 3
    assert await log.add(uses[:2]) == 2  # offered again: stored once
    assert await log.add([("r3", "football__transfers", _vector(3))]) == 1

    recent = await log.recent(10)
    assert [(r, n) for r, n, _ in recent] == [
        ("r1", "football__search_players"),
        ("r1", "football__transfers"),
        ("r2", "football__fixtures"),
        ("r3", "football__transfers"),
    ]
    assert recent[0][2] == _vector(1)
    newest_two = await log.recent(2)
    assert [r for r, _, _ in newest_two] == ["r2", "r3"]

    since = await log.since(before)
    assert [(r, n) for _, r, n in since] == [(r, n) for r, n, _ in recent]
    assert await log.since(utcnow() + timedelta(seconds=5)) == []
    vectors = await log.vectors([since[2][0]])
    assert vectors == {since[2][0]: _vector(2)}

    # A tool's uses go with it.
    await registry.apply_tool_list(server_id, [_tool("fixtures", "Upcoming matches of a team")])
    assert [n for _, n, _ in await log.recent(10)] == ["football__fixtures"]


async def test_old_rows_are_pruned(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    await _catalog_tools(registry)
    monkeypatch.setattr("registry.request_log._PRUNE_EVERY", 4)
    log = RequestLog(registry, keep=3)
    for n in range(8):
        await log.add([(f"r{n}", "football__fixtures", _vector(n))])
    kept = [r for r, _, _ in await log.recent(100)]
    assert kept[-1] == "r7"
    assert "r0" not in kept
    assert len(kept) <= 3 + 4  # at most `keep` plus the rows since the last prune


@asynccontextmanager
async def _replica(database_url: str, index_dir: Path, embedder: OnnxEmbedder) -> AsyncIterator[Catalog]:
    """One gateway's catalog: its own engine and index over the shared registry database."""
    engine = create_engine(database_url)
    index = open_index(None, index_dir, dim=embedder.dim, vector_names=VECTOR_NAMES)
    try:
        catalog = Catalog(Registry(create_sessionmaker(engine)), Retriever(embedder, index))
        await catalog.refresh()
        yield catalog
    finally:
        index.close()
        await engine.dispose()


_IDS = ["football__search_players", "football__transfers", "football__fixtures"]
_HEAD = np.array([[1.0, 0.0, 0.0]])  # the search is the sub-intent's head


async def test_past_requests_survive_a_restart_and_reach_another_replica(
    registry: Registry, database_url: str, tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    await _catalog_tools(registry)
    async with (
        _replica(database_url, tmp_path / "a", embedder) as a,
        _replica(database_url, tmp_path / "b", embedder) as b,
    ):
        vector = a.retriever.embed_query("find Messi and show his transfers")
        # One request used the search and then the transfers (two calls after one find).
        assert await a.record_uses([("football__search_players", vector)]) == 1
        assert await a.record_uses([("football__transfers", vector), ("football__gone", vector)]) == 1
        assert a.retriever.past.co.share(_HEAD, _IDS, 1).tolist() == [0.0, 1.0, 0.0]

        assert not b.retriever.past.co  # B learns of it when its registry watcher looks
        await b.reload_usage()
        assert b.retriever.past.co.share(_HEAD, _IDS, 1).tolist() == [0.0, 1.0, 0.0]
        assert b.retriever.past.knows(request_key(vector), "football__transfers")
        assert b.retriever.usage.get("football__transfers") is not None
        await b.reload_usage()  # looking again counts nothing twice
        assert len(b.retriever.past) == 1
        assert b.retriever.past.co.share(_HEAD, _IDS, 1).tolist() == [0.0, 1.0, 0.0]

    # A restart rebuilds them from the log: co-usage and the nearest-request votes.
    async with _replica(database_url, tmp_path / "c", embedder) as c:
        assert len(c.retriever.past) == 1
        assert c.retriever.past.co.share(_HEAD, _IDS, 1).tolist() == [0.0, 1.0, 0.0]
        votes = c.retriever.past.votes(vector, _IDS, 5)
        assert votes["football__transfers"] > 0.99
        assert votes["football__fixtures"] == 0.0


async def test_examples_are_past_requests_of_their_own(
    registry: Registry, database_url: str, tmp_path: Path, embedder: OnnxEmbedder
) -> None:
    await _catalog_tools(registry)
    async with _replica(database_url, tmp_path / "a", embedder) as a:
        recorded = await a.add_examples(
            "football__fixtures", ["next games of Arsenal", "when does Milan play"]
        )
        assert recorded == 2
    async with _replica(database_url, tmp_path / "b", embedder) as b:
        assert len(b.retriever.past) == 2  # one request each: no co-usage between examples
        assert not b.retriever.past.co.share(np.array([[0.0, 0.0, 1.0]]), _IDS, 1).any()
        state = b.retriever.usage.get("football__fixtures")
        assert state is not None
        assert state.count == 2


async def test_migration_0006_down_and_up_keeps_the_tools(database_url: str) -> None:
    """Downgrading drops the log (and only the log); upgrading again brings back an empty one."""
    from alembic import command

    from migrations.runner import alembic_config, upgrade

    engine = create_engine(database_url)
    try:
        registry = Registry(create_sessionmaker(engine))
        await _catalog_tools(registry)
        assert await RequestLog(registry).add([("r1", "football__fixtures", _vector(1))]) == 1
        await engine.dispose()  # migrations take their own connections
        await anyio.to_thread.run_sync(command.downgrade, alembic_config(database_url), "0005")
        assert len((await registry.list_tools()).tools) == 3
        await anyio.to_thread.run_sync(upgrade, database_url)
        log = RequestLog(registry)
        assert await log.recent(10) == []
        assert await log.add([("r2", "football__fixtures", _vector(2))]) == 1
    finally:
        await engine.dispose()
