"""Two gateway processes share conversation memory through one Redis: 200 conversations,
each served alternately by both, lose no update and never exceed the capacity."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.memory_fixtures import PrivateRedis
from tests.running import RunningGateway
from tests.support import PYTHON, ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ECHO = {
    "name": "echo",
    "command": PYTHON,
    "args": ["-m", "tests.servers.echo_server", "--extra-tools", "30"],
    "cwd": str(ROOT),
}
TURNS = 4
CONVERSATIONS = 200
CAPACITY = 6


async def test_two_gateways_share_working_sets(tmp_path: Path, redis_url: str) -> None:
    env = {
        "REDIS_URL": redis_url,
        "TOOLGATE_MEMORY_CAPACITY": str(CAPACITY),
        "TOOLGATE_MEMORY_IDLE_TURNS": "10",
    }
    gateways = [RunningGateway(tmp_path / "a", env), RunningGateway(tmp_path / "b", env)]
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    try:
        for gateway in gateways:
            gateway.register(ECHO)
        sizes: list[int] = []
        async with gateways[0].client() as first, gateways[1].client() as second:
            clients = [first, second]
            limit = anyio.Semaphore(32)

            async def converse(index: int) -> None:
                async with limit:
                    for turn in range(TURNS):
                        client = clients[(index + turn) % 2]  # alternate gateways turn by turn
                        query = f"generated tool number {index % 30 + turn}"
                        arguments: dict[str, Any] = {
                            "query": query,
                            "limit": 3,
                            "conversation": f"{prefix}-{index}",
                        }
                        result = await client.call_tool("find_tools", arguments)
                        assert not result.is_error, result.content
                        assert result.structured_content is not None
                        sizes.append(result.structured_content["memory"]["count"])

            async with anyio.create_task_group() as group:
                for index in range(CONVERSATIONS):
                    group.start_soon(converse, index)

        assert len(sizes) == CONVERSATIONS * TURNS
        assert max(sizes) <= CAPACITY
        for index in range(CONVERSATIONS):
            view = gateways[index % 2].http.get(f"/admin/conversations/{prefix}-{index}").json()
            assert view["turn"] == TURNS, view  # every turn counted, whichever gateway served it
            assert view["count"] <= CAPACITY
    finally:
        for gateway in gateways:
            for index in range(CONVERSATIONS):
                gateway.http.delete(f"/admin/conversations/{prefix}-{index}")
            gateway.stop()


async def test_redis_restart_mid_conversation(tmp_path: Path, private_redis: PrivateRedis) -> None:
    """find_tools keeps answering while Redis is down (with `memory_error`), and the working
    set works again once Redis is back; the gateway never crashes."""
    gateway = RunningGateway(tmp_path / "d", {"REDIS_URL": private_redis.url})
    try:
        gateway.register(ECHO)
        arguments: dict[str, Any] = {"query": "add two numbers", "limit": 2, "conversation": "chat"}
        async with gateway.client() as client:
            before = await client.call_tool("find_tools", arguments)
            assert before.structured_content is not None
            assert before.structured_content["memory"]["count"] == 2

            private_redis.stop()
            down = await client.call_tool("find_tools", arguments)
            assert not down.is_error
            assert down.structured_content is not None
            assert down.structured_content["tools"]
            assert "memory" not in down.structured_content
            assert "unavailable" in down.structured_content["memory_error"]
            assert PrivateRedis.PASSWORD not in down.structured_content["memory_error"]
            called = await client.call_tool(
                "call_tool", {"name": "echo__add", "arguments": {"a": 1, "b": 2}, "conversation": "chat"}
            )
            assert not called.is_error  # the call itself does not depend on memory
            assert gateway.http.get("/admin/conversations/chat").status_code == 503

            private_redis.start()  # same port, empty: the conversation starts again
            again = await client.call_tool("find_tools", arguments)
            assert again.structured_content is not None
            assert again.structured_content["memory"]["count"] == 2
        assert gateway.process.poll() is None
    finally:
        gateway.stop()
