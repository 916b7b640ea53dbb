"""Shared fixtures: real databases (SQLite file and PostgreSQL on 127.0.0.1:5432)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from tests.memory_fixtures import make_store, namespace, private_redis, redis_url  # noqa: F401 (fixtures)
from tests.support import require


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (marked `anyio`) run on asyncio. AnyIO's runner, unlike pytest-asyncio's, sets
    up and tears down a fixture in one task, which the MCP SDK's cancel scopes require."""
    return "asyncio"


PG_ADMIN_URL = os.environ.get("TOOLGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def _pg_admin(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, migrated registry database of each kind."""
    from migrations.runner import upgrade

    name: str | None = None
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'registry.db'}"
    else:
        name = f"toolgate_test_{uuid.uuid4().hex[:12]}"
        try:
            await _pg_admin(f'CREATE DATABASE "{name}"')
        except Exception as exc:  # refused, auth, timeout: all mean "no PostgreSQL here"
            require(False, f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        url = f"{base}/{name}"
    await anyio.to_thread.run_sync(upgrade, url)
    try:
        yield url
    finally:
        if name is not None:
            await _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path
