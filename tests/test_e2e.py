"""End to end: a real `toolgate` process, real third-party MCP servers (PyPI and npm), and real
MCP clients (the SDK's `Client` over streamable HTTP and stdio, and the MCP Inspector CLI)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from tests.running import TOOLGATE, RunningGateway
from tests.support import PYTHON, ROOT, console_script, node_command

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    running = RunningGateway(tmp_path_factory.mktemp("gateway"))
    running.register(
        {"name": "time", "command": console_script("mcp-server-time"), "args": ["--local-timezone", "UTC"]}
    )
    running.register(
        {"name": "everything", "command": node_command("mcp-server-everything"), "args": ["stdio"]}
    )
    running.register(
        {"name": "echo", "command": PYTHON, "args": ["-m", "tests.servers.echo_server"], "cwd": str(ROOT)}
    )
    yield running
    leftovers = running.stop()
    assert not leftovers, f"upstream processes outlived the gateway: {leftovers}"


def _text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def _find(client: Client, query: str, limit: int = 5) -> list[str]:
    result = await client.call_tool("find_tools", {"query": query, "limit": limit})
    assert not result.is_error, _text(result)
    assert result.structured_content is not None
    return [card["name"] for card in result.structured_content["tools"]]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])  # 2026-07-28 (no sessions) and 2025-11-25 (sessions)
async def test_find_and_call_over_streamable_http(gateway: RunningGateway, mode: str) -> None:
    async with gateway.client(mode=mode) as client:
        listed = await client.list_tools()
        assert [t.name for t in listed.tools] == ["find_tools", "call_tool", "forget_tools"]

        assert "time__get_current_time" in await _find(client, "what is the current time in a timezone")
        result = await client.call_tool(
            "call_tool", {"name": "time__get_current_time", "arguments": {"timezone": "Asia/Tokyo"}}
        )
        assert not result.is_error
        assert result.structured_content is not None
        assert result.structured_content["timezone"] == "Asia/Tokyo"
        if mode == "auto":  # 2026-07-28 results name the server that answered: the gateway, not time
            assert result.meta is not None
            assert result.meta["io.modelcontextprotocol/serverInfo"]["name"] == "toolgate"

        assert "everything__echo" in await _find(client, "echo back the input string")
        echoed = await client.call_tool(
            "call_tool", {"name": "everything__echo", "arguments": {"message": "hi"}}
        )
        assert _text(echoed) == "Echo: hi"
        summed = await client.call_tool(
            "call_tool", {"name": "everything__get-sum", "arguments": {"a": 2, "b": 3}}
        )
        assert "5" in _text(summed)


@pytest.mark.anyio
async def test_faults_through_the_gateway_leave_it_serving(gateway: RunningGateway) -> None:
    async with gateway.client() as client:
        crashed = await client.call_tool("call_tool", {"name": "echo__crash", "arguments": {}})
        assert crashed.is_error
        wrong = await client.call_tool("call_tool", {"name": "echo__add", "arguments": {"a": "x", "b": 1}})
        assert wrong.is_error
        assert "invalid arguments" in _text(wrong)
        unknown = await client.call_tool("call_tool", {"name": "time__get_time", "arguments": {}})
        assert unknown.is_error
        assert "time__get_current_time" in _text(unknown)
        missing = await client.call_tool("call_tool", {"arguments": {}})
        assert missing.is_error
        bad_limit = await client.call_tool("find_tools", {"query": "time", "limit": 0})
        assert bad_limit.is_error
        restarted = await client.call_tool("call_tool", {"name": "echo__echo", "arguments": {"text": "back"}})
        assert _text(restarted) == "back"
        other = await client.call_tool(
            "call_tool", {"name": "everything__echo", "arguments": {"message": "ok"}}
        )
        assert _text(other) == "Echo: ok"


@pytest.mark.anyio
async def test_stdio_front_door_serves_servers_registered_over_rest(gateway: RunningGateway) -> None:
    """`toolgate stdio` on the registry the HTTP gateway built through the admin API."""
    params = StdioServerParameters(command=TOOLGATE, args=["stdio"], env=gateway.env, cwd=str(ROOT))
    with anyio.fail_after(120):
        async with Client(params) as client:
            assert [t.name for t in (await client.list_tools()).tools] == [
                "find_tools",
                "call_tool",
                "forget_tools",
            ]
            assert "time__get_current_time" in await _find(client, "current time in a timezone")
            now = await client.call_tool(
                "call_tool", {"name": "time__get_current_time", "arguments": {"timezone": "Europe/Oslo"}}
            )
            assert now.structured_content is not None
            assert now.structured_content["timezone"] == "Europe/Oslo"
            echoed = await client.call_tool(
                "call_tool", {"name": "everything__echo", "arguments": {"message": "stdio"}}
            )
            assert _text(echoed) == "Echo: stdio"


@pytest.fixture
def open_gateway(tmp_path: Path) -> Iterator[RunningGateway]:
    """A gateway with auth off (loopback): this Inspector CLI cannot send an Authorization header."""
    running = RunningGateway(tmp_path / "open", {"TOOLGATE_AUTH": "off"})
    running.register(
        {"name": "everything", "command": node_command("mcp-server-everything"), "args": ["stdio"]}
    )
    yield running
    running.stop()


def test_mcp_inspector_cli_lists_and_calls(open_gateway: RunningGateway) -> None:
    gateway = open_gateway
    node_command("mcp-inspector")
    base = [
        "npx",
        "--no-install",
        "@modelcontextprotocol/inspector",
        "--cli",
        gateway.mcp_url,
        "--transport",
        "http",
    ]

    listed = subprocess.run(
        [*base, "--method", "tools/list"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert listed.returncode == 0, listed.stderr
    assert [t["name"] for t in json.loads(listed.stdout)["tools"]] == [
        "find_tools",
        "call_tool",
        "forget_tools",
    ]

    called = subprocess.run(
        [*base, "--method", "tools/call", "--tool-name", "call_tool", "--tool-arg", "name=everything__echo",
         "--tool-arg", 'arguments={"message": "from the inspector"}'],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert called.returncode == 0, called.stderr
    assert "Echo: from the inspector" in called.stdout


@pytest.fixture
def imported_env(tmp_path: Path) -> dict[str, str]:
    """A data dir populated by `toolgate import` (run twice: the second changes nothing)."""
    config = tmp_path / "claude_desktop_config.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "time": {
                        "command": console_script("mcp-server-time"),
                        "args": ["--local-timezone", "UTC"],
                    },
                    "everything": {"command": node_command("mcp-server-everything"), "args": ["stdio"]},
                }
            }
        )
    )
    env = {**os.environ, "TOOLGATE_DATA_DIR": str(tmp_path / "stdio-data"), "TOOLGATE_SYNC_INTERVAL_S": "0"}
    env.pop("DATABASE_URL", None)
    first = subprocess.run(
        [TOOLGATE, "import", str(config)], env=env, capture_output=True, text=True, timeout=120
    )
    assert first.returncode == 0, first.stderr
    assert sorted(json.loads(first.stdout)["created"]) == ["everything", "time"]
    second = subprocess.run(
        [TOOLGATE, "import", str(config)], env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(second.stdout)["created"] == []
    assert sorted(json.loads(second.stdout)["unchanged"]) == ["everything", "time"]
    return env


@pytest.mark.anyio
async def test_stdio_front_door_after_cli_import(imported_env: dict[str, str]) -> None:
    params = StdioServerParameters(command=TOOLGATE, args=["stdio"], env=imported_env, cwd=str(ROOT))
    with anyio.fail_after(120):
        async with Client(params) as client:
            assert "time__convert_time" in await _find(client, "convert a time between two timezones")
            result = await client.call_tool(
                "call_tool", {"name": "everything__echo", "arguments": {"message": "over stdio"}}
            )
            assert _text(result) == "Echo: over stdio"


def test_cli_rejects_bad_files_and_settings(tmp_path: Path) -> None:
    env = {**os.environ, "TOOLGATE_DATA_DIR": str(tmp_path / "d")}
    bad = tmp_path / "bad.json"
    bad.write_text('{"mcpServers": {"x": {"args": 1}}}')
    result = subprocess.run(
        [TOOLGATE, "import", str(bad)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "nothing was imported" in result.stderr
    assert "Traceback" not in result.stderr
    missing = subprocess.run(
        [TOOLGATE, "import", str(tmp_path / "nope.json")], env=env, capture_output=True, text=True, timeout=60
    )
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
    settings = subprocess.run(
        [TOOLGATE, "serve"],
        env={**env, "TOOLGATE_PORT": "eighty"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert settings.returncode == 2
    assert "TOOLGATE_PORT" in settings.stderr
    assert "Traceback" not in settings.stderr
    for command in (["serve"], ["stdio"], ["search", "x"]):
        no_model = subprocess.run(
            [TOOLGATE, *command],
            env={**env, "TOOLGATE_EMBEDDING_MODEL": str(tmp_path / "no-such-model")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert no_model.returncode == 2, command
        assert "TOOLGATE_EMBEDDING_MODEL" in no_model.stderr
        assert "Traceback" not in no_model.stderr


def test_db_upgrade_command(tmp_path: Path) -> None:
    env = {**os.environ, "TOOLGATE_DATA_DIR": str(tmp_path / "d")}
    env.pop("DATABASE_URL", None)
    result = subprocess.run([TOOLGATE, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d" / "toolgate.db").exists()
