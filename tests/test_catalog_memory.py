"""What the catalog keeps between reloads: one copy of each unchanged tool (shared with the
retriever's record), no registry rows while the index syncs, and a heap trim after a reload
that leaves the catalog serving; and the embedded index's reopens around a graph build, which
a count from outside the catalog's lock waits out."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

import gateway.catalog as catalog_module
from gateway.catalog import Catalog
from gateway.registry_watch import RegistryWatcher
from migrations.runner import upgrade
from registry.db import create_engine, create_sessionmaker
from registry.repository import Registry
from registry.specs import ServerSpec, UpstreamTool
from retrieval.embedder import OnnxEmbedder, load_onnx
from retrieval.index import IndexedTool, open_index
from retrieval.index_edge import EdgeVectorIndex
from retrieval.pipeline import VECTOR_NAMES, Retriever

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    """The bundled model in its default runtime (exported once into the user cache)."""
    return load_onnx(quantize=True)


def _tool(name: str, description: str) -> UpstreamTool:
    schema = {"type": "object", "properties": {"city": {"type": "string", "description": "Where."}}}
    return UpstreamTool(name=name, description=description, input_schema=schema)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    await anyio.to_thread.run_sync(upgrade, url)
    engine = create_engine(url)
    try:
        yield Registry(create_sessionmaker(engine))
    finally:
        await engine.dispose()


@pytest.fixture
async def catalog(registry: Registry, tmp_path: Path, embedder: OnnxEmbedder) -> AsyncIterator[Catalog]:
    index = open_index(None, tmp_path / "index", dim=embedder.dim, vector_names=VECTOR_NAMES)
    try:
        yield Catalog(registry, Retriever(embedder, index))
    finally:
        index.close()


async def _weather(registry: Registry) -> int:
    server = await registry.create_server(ServerSpec(name="weather", command="weather-mcp"))
    tools = [_tool("forecast", "Tomorrow's weather for a city"), _tool("alerts", "Storm warnings in force")]
    await registry.apply_tool_list(server.id, tools)
    return server.id


async def test_an_unchanged_reload_keeps_one_copy_of_each_tool(registry: Registry, catalog: Catalog) -> None:
    server_id = await _weather(registry)
    await catalog.refresh()
    first = catalog.get("weather__forecast")
    assert first is not None
    record = catalog.retriever.record("weather__forecast")
    assert record is not None
    # The retriever's record reads the catalog's own schema and texts, not copies of them.
    assert record.text.input_schema is first.input_schema
    assert record.text.description is first.description

    await catalog.refresh()
    assert catalog.get("weather__forecast") is first
    again = catalog.retriever.record("weather__forecast")
    assert again is not None
    assert again.text.input_schema is first.input_schema

    # A changed definition replaces the tool, in the catalog and in the index.
    await registry.apply_tool_list(
        server_id,
        [_tool("forecast", "Rain or shine, hour by hour"), _tool("alerts", "Storm warnings in force")],
    )
    await catalog.refresh()
    changed = catalog.get("weather__forecast")
    assert changed is not None
    assert changed is not first
    assert changed.description == "Rain or shine, hour by hour"
    record = catalog.retriever.record("weather__forecast")
    assert record is not None
    assert record.text.description == changed.description
    assert record.text.input_schema is changed.input_schema
    found = await catalog.search("rain or shine hour by hour", 2)
    assert found.hits[0].tool.exposed_name == "weather__forecast"


async def test_disabling_a_tool_keeps_its_definition_shared(registry: Registry, catalog: Catalog) -> None:
    await _weather(registry)
    await catalog.refresh()
    alerts = catalog.get("weather__alerts")
    assert alerts is not None
    await registry.set_tool_enabled(alerts.id, False)
    await catalog.refresh()
    assert catalog.get("weather__alerts") is None
    assert catalog.knows("weather__alerts")
    disabled = catalog._tools["weather__alerts"]
    assert not disabled.enabled
    assert disabled.input_schema is alerts.input_schema
    found = await catalog.search("storm warnings", 2)
    assert "weather__alerts" not in [hit.tool.exposed_name for hit in found.hits]

    await registry.set_tool_enabled(alerts.id, True)
    await catalog.refresh()
    assert catalog.get("weather__alerts") is not None
    found = await catalog.search("storm warnings", 2)
    assert found.hits[0].tool.exposed_name == "weather__alerts"


async def test_registry_rows_are_released_before_the_index_syncs(
    registry: Registry, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _weather(registry)
    rows: list[weakref.ref[Any]] = []
    each_tool_page = registry.each_tool_page

    async def recording(handle: Any, *, page_size: int = 1000) -> None:
        def seen(page: list[Any]) -> None:
            rows.extend(weakref.ref(row) for row in page)
            handle(page)

        await each_tool_page(seen, page_size=1)  # a page per row: a page is freed once handled

    alive_while_syncing: list[int] = []
    retriever = catalog.retriever
    pending = retriever.pending

    def checking(records: Any) -> Any:
        gc.collect()
        alive_while_syncing.append(sum(ref() is not None for ref in rows))
        return pending(records)

    monkeypatch.setattr(registry, "each_tool_page", recording)
    monkeypatch.setattr(retriever, "pending", checking)
    await catalog.refresh()
    assert len(rows) == 2
    assert alive_while_syncing == [0]
    assert catalog.get("weather__forecast") is not None


async def test_each_reload_trims_the_heap_and_the_catalog_still_serves(
    registry: Registry, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    trimmed: list[int] = []
    real = catalog_module.trim_heap

    def counting() -> None:
        real()  # the real call, on this platform's C library
        trimmed.append(1)

    monkeypatch.setattr(catalog_module, "trim_heap", counting)
    await _weather(registry)
    await catalog.refresh()
    await catalog.refresh()
    assert len(trimmed) == 2
    found = await catalog.search("tomorrow's weather for a city", 2)
    assert found.hits[0].tool.exposed_name == "weather__forecast"


def test_a_count_while_the_index_reopens_waits_for_the_new_shard(tmp_path: Path) -> None:
    index = EdgeVectorIndex(tmp_path / "index", dim=8, vector_names=VECTOR_NAMES)
    try:
        vector = np.full(8, 8**-0.5, np.float32)
        index.upsert(
            [
                IndexedTool(
                    "weather__forecast", {"description": vector}, {"server": "weather", "enabled": True}
                )
            ]
        )
        done = threading.Event()

        def rebuild() -> None:
            try:
                for _ in range(10):
                    index.optimize()  # reopens the shard before (and after) each build
            finally:
                done.set()

        builder = threading.Thread(target=rebuild)
        builder.start()
        counts = []
        while not done.is_set():
            counts.append(index.count())
        builder.join()
        assert counts
        assert set(counts) == {1}
    finally:
        index.close()


async def test_the_watcher_skips_a_change_the_catalog_already_loaded(
    registry: Registry, catalog: Catalog
) -> None:
    """A sync's own reload records the registry's fingerprint, so this replica's watcher does
    not reload the whole catalog a second time; another writer's later change still reloads."""
    watcher = RegistryWatcher(registry, catalog, interval_s=1)
    await watcher.check()  # the starting point
    await _weather(registry)
    await catalog.refresh()  # what the sync's change notification does
    reloads = catalog.activity.refreshes
    await watcher.check()
    assert watcher.refreshes == 0
    assert catalog.activity.refreshes == reloads

    await registry.create_server(ServerSpec(name="clock", command="clock-mcp"))  # not reloaded yet
    await watcher.check()
    assert watcher.refreshes == 1
    assert catalog.activity.refreshes == reloads + 1
