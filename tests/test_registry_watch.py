"""The registry watcher, on real SQLite and PostgreSQL: another replica's changes are noticed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.registry_watch import Fingerprint, RegistryWatcher, fingerprint
from registry.db import create_engine, create_sessionmaker
from registry.repository import Registry
from registry.specs import ServerSpec, UpstreamTool

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.refreshes = 0
        self.reloads = 0
        self.loaded_fingerprint: Fingerprint | None = None

    async def refresh(self) -> None:
        self.refreshes += 1

    async def reload_usage(self) -> None:
        self.reloads += 1


@pytest.fixture
async def registry(database_url: str) -> AsyncIterator[Registry]:
    engine = create_engine(database_url)
    try:
        yield Registry(create_sessionmaker(engine))
    finally:
        await engine.dispose()


async def test_changes_by_another_writer_are_followed(registry: Registry) -> None:
    follower = Recorder()
    watcher = RegistryWatcher(registry, follower, interval_s=1)
    await watcher.check()  # the starting point
    await watcher.check()
    assert (follower.refreshes, follower.reloads) == (0, 0)  # nothing changed

    server = await registry.create_server(ServerSpec(name="weather", command="weather-mcp"))
    await watcher.check()
    assert follower.refreshes == 1

    tool = UpstreamTool(name="forecast", description="tomorrow's weather", input_schema={"type": "object"})
    await registry.apply_tool_list(server.id, [tool])
    await watcher.check()
    assert follower.refreshes == 2

    await registry.save_usage("weather__forecast", 1, b"\x00" * 16)
    await watcher.check()
    assert (follower.refreshes, follower.reloads) == (2, 1)  # usage alone: no catalog refresh

    await registry.save_usage("weather__forecast", 2, b"\x01" * 16)
    await watcher.check()
    assert follower.reloads == 2  # same row count, newer update

    tools = await registry.all_tools()
    await registry.set_tool_enabled(tools[0].id, False)
    await watcher.check()
    assert follower.refreshes == 3

    await registry.delete_server(server.id)
    await watcher.check()
    assert follower.refreshes == 4
    await watcher.check()
    assert follower.refreshes == 4


async def test_sync_bookkeeping_alone_is_not_a_change(registry: Registry) -> None:
    """Re-syncing an unchanged server (and recording a failed sync) updates its status row but
    not `updated_at`, so no replica reloads its catalog for it; a changed listing still does."""
    server = await registry.create_server(ServerSpec(name="weather", command="weather-mcp"))
    tool = UpstreamTool(name="forecast", description="tomorrow's weather", input_schema={"type": "object"})
    await registry.apply_tool_lists([(server.id, [tool])])
    follower = Recorder()
    watcher = RegistryWatcher(registry, follower, interval_s=1)
    await watcher.check()
    before = await registry.get_server(server.id)

    await registry.apply_tool_lists([(server.id, [tool])])
    await registry.apply_tool_list(server.id, [tool])
    await registry.record_sync(server.id, error="ConnectError: refused")
    await watcher.check()
    assert follower.refreshes == 0
    after = await registry.get_server(server.id)
    assert after.updated_at == before.updated_at
    assert after.status == "error"
    assert after.last_error == "ConnectError: refused"
    assert after.last_sync_at is not None
    assert after.last_sync_at > before.last_sync_at

    await registry.record_sync(server.id, error=None)
    assert (await registry.get_server(server.id)).status == "ok"
    changed = UpstreamTool(
        name="forecast", description="the weather for the next 3 days", input_schema={"type": "object"}
    )
    await registry.apply_tool_lists([(server.id, [changed])])
    await watcher.check()
    assert follower.refreshes == 1


async def test_a_change_the_follower_already_loaded_is_not_reloaded(registry: Registry) -> None:
    """This replica's own change: its catalog reloaded it (recording the fingerprint it read
    first), so its watcher does not reload again; a later change by another writer still is."""
    follower = Recorder()
    watcher = RegistryWatcher(registry, follower, interval_s=1)
    await watcher.check()
    await registry.create_server(ServerSpec(name="weather", command="weather-mcp"))
    follower.loaded_fingerprint = await fingerprint(registry)  # as Catalog._reload records it
    await watcher.check()
    assert follower.refreshes == 0

    await registry.create_server(ServerSpec(name="clock", command="clock-mcp"))  # not loaded
    await watcher.check()
    assert follower.refreshes == 1
