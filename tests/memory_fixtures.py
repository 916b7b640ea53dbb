"""Working-set store fixtures shared by the memory tests: each store kind, on a private key
namespace of the machine's Redis (skipped locally without Redis, a failure under CI=true)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis

from gateway.memory import LocalWorkingSetStore, RedisWorkingSetStore, WorkingSetStore
from tests.support import free_port, require

REDIS_URL = os.environ.get("TOOLGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")
StoreFactory = Callable[..., WorkingSetStore]


@pytest.fixture(scope="module")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        require(False, f"Redis is not reachable at {REDIS_URL}: {exc}")
    return REDIS_URL


def drop_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=5)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> Iterator[str]:
    """A key prefix of the test's own on the shared Redis, removed afterwards."""
    name = f"toolgate-test-{uuid.uuid4().hex[:12]}"
    yield name
    if "redis_url" in request.fixturenames:
        drop_namespace(REDIS_URL, name)


@pytest.fixture(params=["local", "redis"])
async def make_store(request: pytest.FixtureRequest, namespace: str) -> AsyncIterator[StoreFactory]:
    made: list[WorkingSetStore] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def make(**options: object) -> WorkingSetStore:
        store: WorkingSetStore
        if url is None:
            store = LocalWorkingSetStore(**options)  # type: ignore[arg-type]
        else:
            store = RedisWorkingSetStore.from_url(url, namespace=namespace, **options)  # type: ignore[arg-type]
        made.append(store)
        return store

    try:
        yield make
    finally:
        for store in made:
            await store.aclose()
        if url is not None:
            drop_namespace(url, namespace)


class PrivateRedis:
    PASSWORD = "s3cret-pw"

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://:{self.PASSWORD}@127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--requirepass", self.PASSWORD),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    require(shutil.which("redis-server") is not None, "redis-server is not installed")
    server = PrivateRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()
