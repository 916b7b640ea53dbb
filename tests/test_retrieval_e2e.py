"""Retrieval through the gateway, end to end: a real `toolgate serve`, real MCP servers (ours,
PyPI's time server, npm's memory server), the SDK client over /mcp. find_tools ranks with the
retrieval pipeline, a successful call moves the tool's usage vector, and index and usage
survive a restart."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.running import TOOLGATE, RunningGateway
from tests.support import PYTHON, ROOT, console_script, node_command, wait_until
from tests.test_servers_selfcheck import ListChangedWatcher

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def _servers() -> list[dict[str, Any]]:
    return [
        {
            "name": "echo",
            "command": PYTHON,
            "args": ["-m", "tests.servers.echo_server"],
            "cwd": str(ROOT),
            "description": "Test utilities: echo text, add numbers",
        },
        {
            "name": "time",
            "command": console_script("mcp-server-time"),
            "args": ["--local-timezone", "UTC"],
            "description": "Current time and timezone conversion",
        },
        {
            "name": "memory",
            "command": node_command("mcp-server-memory"),
            "description": "A knowledge graph memory: entities, relations, observations",
        },
    ]


def _cards(result: Any) -> list[dict[str, Any]]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    cards: list[dict[str, Any]] = result.structured_content["tools"]
    return cards


def _tool_id(gateway: RunningGateway, exposed: str) -> int:
    tools = gateway.http.get("/admin/tools", params={"q": exposed}).json()["tools"]
    return int(next(t["id"] for t in tools if t["exposed_name"] == exposed))


def _usage(gateway: RunningGateway, tool_id: int) -> int:
    return int(gateway.http.get(f"/admin/tools/{tool_id}/usage").json()["usage_count"])


# Every sync builds the embedded index's search graph, so all that follows (finds, usage
# updates, a restart) runs on an optimised and reopened shard too.
OPTIMIZE_ALWAYS = {"TOOLGATE_INDEX_OPTIMIZE_AFTER": "1"}


async def test_find_call_learn_filter_and_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    gateway = RunningGateway(data, OPTIMIZE_ALWAYS)
    try:
        for body in _servers():
            gateway.register(body)
        add_id = _tool_id(gateway, "echo__add")
        assert _usage(gateway, add_id) == 0

        async with gateway.client(mode="legacy") as client:
            found = _cards(await client.call_tool("find_tools", {"query": "sum of two integers", "limit": 3}))
            assert found[0]["name"] == "echo__add"
            assert found[0]["why"], found[0]
            assert found[0]["score"] >= found[-1]["score"]

            # A failed call teaches nothing; a successful one counts once per find.
            bad = await client.call_tool("call_tool", {"name": "echo__add", "arguments": {"a": "x", "b": 1}})
            assert bad.is_error
            assert _usage(gateway, add_id) == 0
            ok = await client.call_tool("call_tool", {"name": "echo__add", "arguments": {"a": 2, "b": 3}})
            assert not ok.is_error
            await wait_until(lambda: _usage(gateway, add_id) == 1)  # recorded off the call's path
            await client.call_tool("call_tool", {"name": "echo__add", "arguments": {"a": 1, "b": 1}})
            assert _usage(gateway, add_id) == 1

            # A tool this conversation never found is not learned from.
            echo_id = _tool_id(gateway, "echo__echo")
            await client.call_tool("call_tool", {"name": "echo__echo", "arguments": {"text": "hi"}})
            assert _usage(gateway, echo_id) == 0

            # Filters run inside the index query.
            timed = _cards(
                await client.call_tool("find_tools", {"query": "add numbers", "server": "time", "limit": 5})
            )
            assert timed
            assert {c["server"] for c in timed} == {"time"}
            read_only = _cards(
                await client.call_tool(
                    "find_tools", {"query": "store a fact in memory", "read_only": True, "limit": 10}
                )
            )
            assert read_only
            for card in read_only:  # every tool returned declares readOnlyHint: true
                tool = gateway.http.get(f"/admin/tools/{_tool_id(gateway, card['name'])}").json()
                assert (tool["annotations"] or {}).get("readOnlyHint") is True, tool

        # Sessionless clients get a conversation id from find_tools and pass it back; the
        # working set follows it (workflow mode by default) and can be trimmed by the model.
        async with gateway.client() as client:
            first = await client.call_tool("find_tools", {"query": "current time in a timezone", "limit": 2})
            payload = first.structured_content
            assert payload is not None
            handle = payload["conversation"]
            assert handle.startswith("conv-")
            assert payload["memory"]["mode"] == "workflow"
            assert payload["memory"]["count"] == 2
            assert payload["memory"]["added"] == [c["name"] for c in payload["tools"]]
            forgot = await client.call_tool(
                "forget_tools", {"names": [payload["tools"][0]["name"]], "conversation": handle}
            )
            assert forgot.structured_content is not None
            assert forgot.structured_content["forgotten"] == [payload["tools"][0]["name"]]
            assert forgot.structured_content["memory"]["count"] == 1
            no_handle = await client.call_tool("forget_tools", {"names": ["x"]})
            assert no_handle.is_error
        view = gateway.http.get(f"/admin/conversations/{handle}")
        assert view.status_code == 200, view.text
        assert view.json()["count"] == 1
        assert view.json()["turn"] == 1
        listed = gateway.http.get("/admin/conversations").json()["conversations"]
        assert handle in {c["conversation"] for c in listed}
        assert gateway.http.delete(f"/admin/conversations/{handle}").status_code == 204
        assert gateway.http.get(f"/admin/conversations/{handle}").status_code == 404

        # An explicit conversation id links find and call on the sessionless protocol too.
        async with gateway.client() as client:
            cards = _cards(
                await client.call_tool(
                    "find_tools", {"query": "add two numbers", "limit": 3, "conversation": "chat-1"}
                )
            )
            assert "echo__add" in {c["name"] for c in cards}
            await client.call_tool(
                "call_tool", {"name": "echo__add", "arguments": {"a": 4, "b": 4}, "conversation": "chat-1"}
            )
            await wait_until(lambda: _usage(gateway, add_id) == 2)
            bad_id = await client.call_tool("find_tools", {"query": "x", "conversation": ""})
            assert bad_id.is_error

        # Searching again in a conversation brings new tools; the held matches are named.
        async with gateway.client() as client:
            request = {"query": "current time in a timezone", "limit": 2, "conversation": "chat-2"}
            first = (await client.call_tool("find_tools", request)).structured_content
            again = (await client.call_tool("find_tools", request)).structured_content
            assert first is not None
            assert again is not None
            first_names = [c["name"] for c in first["tools"]]
            again_names = [c["name"] for c in again["tools"]]
            assert len(first_names) == len(again_names) == 2
            assert not set(first_names) & set(again_names), (first_names, again_names)
            assert again["memory"]["held"] == first_names
            assert again["memory"]["count"] == 4
            assert sorted(again["memory"]["added"]) == sorted(again_names)
            # Every held match ranked above the new cards counts as returned again, not only
            # those in the plain top `limit` (the first two).
            third = (await client.call_tool("find_tools", request)).structured_content
            assert third is not None
            assert third["memory"]["held"] == first_names + again_names
            entries = gateway.http.get("/admin/conversations/chat-2").json()["tools"]
            assert {entries[name]["last_returned_turn"] for name in first_names + again_names} == {3}
            both = (
                await client.call_tool("find_tools", {**request, "limit": 4, "include_held": True})
            ).structured_content
            assert both is not None
            assert [c["name"] for c in both["tools"]] == first_names + again_names  # the plain ranking
            assert both["memory"]["held"] == []

        # Categories are set on servers and filter find_tools.
        servers = {s["name"]: s["id"] for s in gateway.http.get("/admin/servers").json()}
        patched = gateway.http.patch(f"/admin/servers/{servers['time']}", json={"category": "clock"})
        assert patched.status_code == 200
        assert patched.json()["category"] == "clock"
        async with gateway.client() as client:
            clock = _cards(
                await client.call_tool(
                    "find_tools", {"query": "add numbers", "category": "clock", "limit": 5}
                )
            )
            assert clock
            assert {c["server"] for c in clock} == {"time"}

        # Examples through the admin API are usage evidence too.
        examples = gateway.http.post(
            f"/admin/tools/{echo_id}/examples", json={"queries": ["repeat my words back", "parrot this"]}
        )
        assert examples.status_code == 200, examples.text
        assert examples.json() == {"tool": "echo__echo", "recorded": 2, "usage_count": 2}
        unknown = gateway.http.post(
            "/admin/examples",
            json={
                "examples": [{"tool": "echo__echo", "queries": ["x"]}, {"tool": "nope__x", "queries": ["y"]}]
            },
        )
        assert unknown.status_code == 404
        assert _usage(gateway, echo_id) == 2  # nothing recorded from a rejected body
        empty = gateway.http.post(f"/admin/tools/{echo_id}/examples", json={"queries": ["  "]})
        assert empty.status_code == 422

        before = gateway.http.get("/admin/index").json()
        assert before["tools"] >= 15
        assert before["pending"] == 0
        assert before["graph_builds_since_start"] >= 1
        assert gateway.stop() == set()

        # Restart: the index is adopted (nothing re-embedded) and usage evidence is back.
        gateway = RunningGateway(data, OPTIMIZE_ALWAYS)
        after = gateway.http.get("/admin/index").json()
        assert after["tools"] == before["tools"]
        assert after["embedded_since_start"] == 0
        assert after["graph_builds_since_start"] >= 1
        assert _usage(gateway, add_id) == 2
        assert _usage(gateway, echo_id) == 2
        async with gateway.client() as client:
            found = _cards(await client.call_tool("find_tools", {"query": "sum of two integers", "limit": 3}))
            assert found[0]["name"] == "echo__add"
        # `toolgate search` beside the running gateway: its index is in use, so the command
        # builds a private one from the registry and says so.
        beside = _search_cli(gateway.env, "sum of two integers")
        assert beside.returncode == 0, beside.stderr
        assert json.loads(beside.stdout)[0]["name"] == "echo__add"
        assert "open in another toolgate process" in beside.stderr
        assert gateway.stop() == set()
        alone = _search_cli(gateway.env, "get the current time right now", "--server", "time")
        assert alone.returncode == 0, alone.stderr
        ranked = json.loads(alone.stdout)
        assert ranked[0]["name"] == "time__get_current_time"
        assert set(ranked[0]["stages"]) >= {"dense", "lexical"}
    finally:
        gateway.stop()


def _search_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOOLGATE, "search", *args, "--json", "--limit", "3"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_dynamic_listing_follows_the_working_set(tmp_path: Path) -> None:
    """TOOLGATE_TOOLS_LISTING=dynamic: a session client sees its working set in tools/list,
    gets list_changed when it changes, and can call a listed tool by its own name."""
    gateway = RunningGateway(
        tmp_path / "data", {"TOOLGATE_TOOLS_LISTING": "dynamic", "TOOLGATE_MEMORY_IDLE_TURNS": "0"}
    )
    try:
        gateway.register(_servers()[0])  # echo
        watcher = ListChangedWatcher()
        async with gateway.client(mode="legacy", message_handler=watcher) as client:
            listed = [t.name for t in (await client.list_tools()).tools]
            assert listed == ["find_tools", "call_tool", "forget_tools"]

            found = _cards(await client.call_tool("find_tools", {"query": "add two numbers", "limit": 2}))
            with anyio.fail_after(10):
                await watcher.event.wait()
            names = [t.name for t in (await client.list_tools()).tools]
            assert names[:3] == ["find_tools", "call_tool", "forget_tools"]
            assert set(names[3:]) == {c["name"] for c in found}
            assert "echo__add" in names

            direct = await client.call_tool("echo__add", {"a": 20, "b": 22})
            assert not direct.is_error
            assert direct.structured_content == {"sum": 42}

            watcher.reset()
            await client.call_tool("find_tools", {"query": "repeat my text back", "limit": 1})
            with anyio.fail_after(10):
                await watcher.event.wait()  # idle_turns 0: the earlier tools left, the new one joined
            after = [t.name for t in (await client.list_tools()).tools][3:]
            assert after == ["echo__echo"]
        assert not watcher.errors
    finally:
        gateway.stop()
