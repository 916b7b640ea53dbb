"""Stateless replicas: two real gateway processes on one PostgreSQL and one Redis serve one
client that switches between them on every request, as behind a load balancer with no
affinity. Nothing the conversation needs may live in only one of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from cryptography.fernet import Fernet

from tests.running import RunningGateway
from tests.support import PYTHON, ROOT, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture
def replicas(
    database_url: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[RunningGateway, RunningGateway]]:
    # What a deployment gives every replica alike: the backends, the keys, the settings.
    shared = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TOOLGATE_CREDENTIALS_KEY": Fernet.generate_key().decode(),
        "TOOLGATE_ADMIN_KEY": "tg_replicas_" + Fernet.generate_key().decode()[:32].replace("-", "x"),
        "TOOLGATE_REGISTRY_WATCH_S": "0.2",
        "TOOLGATE_INTENT_PARSER": "off",
    }
    first = RunningGateway(tmp_path / "a", shared)
    try:
        second = RunningGateway(tmp_path / "b", shared)
    except BaseException:
        first.stop()
        raise
    try:
        yield first, second
    finally:
        for gateway in (first, second):
            assert gateway.stop() == set()  # no upstream process outlives its gateway


def _payload(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return dict(result.structured_content)


def _usage(gateway: RunningGateway, tool_id: int) -> int:
    count: int = gateway.http.get(f"/admin/tools/{tool_id}/usage").json()["usage_count"]
    return count


def _servable(gateway: RunningGateway) -> int:
    index = gateway.http.get("/admin/index").json()
    return int(index["servable"]) if index["pending"] == 0 else -1


def _tool_names(gateway: RunningGateway) -> set[str]:
    listed = gateway.http.get("/admin/tools", params={"limit": 1000}).json()["tools"]
    return {tool["exposed_name"] for tool in listed if tool["enabled"]}


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_client_switching_replicas_on_every_request_loses_nothing(
    replicas: tuple[RunningGateway, RunningGateway],
) -> None:
    a, b = replicas
    a.register(
        {"name": "echo", "command": PYTHON, "args": ["-m", "tests.servers.echo_server"], "cwd": str(ROOT)}
    )
    assert "echo__echo" in _tool_names(b)  # the registry is shared at once...
    # ...and B's catalog follows it from the database, without a restart or a sync call.
    expected = len(_tool_names(a))
    await wait_until(lambda: _servable(b) == expected, timeout=60)

    async with a.client() as on_a, b.client() as on_b:
        found = _payload(await on_a.call_tool("find_tools", {"query": "echo some text back", "limit": 3}))
        conversation = found["conversation"]
        assert "echo__echo" in [card["name"] for card in found["tools"]]
        assert found["memory"]["count"] >= 1

        # The call lands on B: the conversation, its working set and the learning all follow.
        called = await on_b.call_tool(
            "call_tool", {"name": "echo__echo", "arguments": {"text": "hi"}, "conversation": conversation}
        )
        assert not called.is_error
        assert "hi" in "".join(getattr(block, "text", "") for block in called.content)

        again = _payload(
            await on_b.call_tool(
                "find_tools", {"query": "add two integers", "limit": 3, "conversation": conversation}
            )
        )
        assert again["conversation"] == conversation
        working = b.http.get(f"/admin/conversations/{conversation}").json()
        assert working["turn"] == 2  # B continued A's conversation, it did not start a new one
        assert working["tools"]["echo__echo"]["last_called_turn"] == 1

        forgotten = _payload(
            await on_a.call_tool("forget_tools", {"names": ["echo__echo"], "conversation": conversation})
        )
        assert forgotten["forgotten"] == ["echo__echo"]
        assert "echo__echo" not in b.http.get(f"/admin/conversations/{conversation}").json()["tools"]

    # The use recorded on B reaches A's usage vectors too.
    echo = next(t for t in a.http.get("/admin/tools", params={"q": "echo__echo"}).json()["tools"])
    await wait_until(lambda: _usage(b, echo["id"]) == 1, timeout=30)
    await wait_until(lambda: _usage(a, echo["id"]) == 1, timeout=30)

    # A key made on one replica works on the other at once; a revoked one stops on both.
    made = a.http.post("/admin/keys", json={"name": "agent", "role": "client"})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    async with b.client(key) as agent:
        assert "echo__add" in [
            c["name"]
            for c in _payload(await agent.call_tool("find_tools", {"query": "add numbers"}))["tools"]
        ]

    # Disabling a tool on B takes it out of A's results.
    b.http.patch(f"/admin/tools/{echo['id']}", json={"enabled": False}).raise_for_status()

    async def gone_from_a() -> bool:
        async with a.client() as on_a:
            found = _payload(
                await on_a.call_tool("find_tools", {"query": "echo some text back", "limit": 10})
            )
        return "echo__echo" not in [card["name"] for card in found["tools"]]

    with anyio.fail_after(30):
        while not await gone_from_a():  # noqa: ASYNC110 - another process; nothing to subscribe to
            await anyio.sleep(0.2)

    revoked = b.http.delete(f"/admin/keys/{made.json()['id']}")
    assert revoked.status_code in (200, 204), revoked.text
    with httpx.Client(base_url=a.base, headers=a.auth_headers(key)) as client:
        await wait_until(lambda: client.post("/mcp/", json={}).status_code == 401, timeout=30)
