"""Self-checks for the test MCP servers (echo, garbage) and the benchmark multihost.

They drive the real processes with the real ``mcp.Client`` over stdio and streamable
HTTP, in both protocol eras the SDK speaks: ``mode="auto"`` settles on 2026-07-28 with
these servers, ``mode="legacy"`` forces the 2025-11-25 initialize handshake. HTTP
servers are awaited on their ``READY <port>`` line; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import httpx2
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.session import IncomingMessage
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

ROOT = Path(__file__).resolve().parents[1]
DATA = Path("/work/shared/data/toolsdk/tools.jsonl")
PYTHON = sys.executable
MODES = ["auto", "legacy"]
VERSION_FOR_MODE = {"auto": "2026-07-28", "legacy": "2025-11-25"}
# Run on AnyIO's pytest plugin (asyncio backend, see conftest): the project disables
# pytest-asyncio because the SDK's cancel scopes need fixtures set up and torn down in one task.
pytestmark = pytest.mark.anyio

FIXED_TOOLS = {"echo", "add", "sleep", "crash", "fail", "bad_output", "toggle_tool", "whoami"}


# ---------------------------------------------------------------- process helpers


def spawn_http(argv: list[str], timeout: float = 30.0) -> tuple[subprocess.Popen[bytes], int]:
    """Start a server that prints ``READY <port>``; return it once that line arrives."""
    proc = subprocess.Popen([PYTHON, *argv], cwd=ROOT, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    buffer = b""
    deadline = time.monotonic() + timeout
    while True:
        if b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line.startswith(b"READY "):
                return proc, int(line.split()[1])
            continue  # any other output before READY is ignored
        readable, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not readable:
            stop(proc)
            raise TimeoutError(f"no READY line from {argv} within {timeout}s")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"{argv} exited with {proc.wait()} before READY")
        buffer += chunk


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stdout is not None:
        proc.stdout.close()


@contextmanager
def http_server(argv: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    proc, port = spawn_http(argv)
    try:
        yield proc, port
    finally:
        stop(proc)


def echo_stdio(*extra: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=PYTHON,
        args=["-m", "tests.servers.echo_server", "--transport", "stdio", *extra],
        cwd=str(ROOT),
    )


@pytest.fixture(scope="module")
def paged_echo_url() -> Iterator[str]:
    """One HTTP echo server with 2 tools per page and 5 extra tools (13 tools in 7 pages)."""
    argv = ["-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"]
    with http_server([*argv, "--page-size", "2", "--extra-tools", "5", "--name", "paged"]) as (_, port):
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def toggle_echo_url() -> Iterator[str]:
    """A separate HTTP echo server for toggle tests, so their state never leaks elsewhere."""
    with http_server(["-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"]) as (_, port):
        yield f"http://127.0.0.1:{port}/mcp"


@pytest.fixture(scope="module")
def multihost_url() -> Iterator[str]:
    with http_server(["-m", "bench.multihost", "--servers", "3", "--port", "0"]) as (_, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(params=["stdio", "http"])
def paged_target(request: pytest.FixtureRequest) -> StdioServerParameters | str:
    if request.param == "stdio":
        return echo_stdio("--page-size", "2", "--extra-tools", "5", "--name", "paged")
    url: str = request.getfixturevalue("paged_echo_url")
    return url


# ---------------------------------------------------------------- client helpers


async def all_pages(client: Client) -> list[list[types.Tool]]:
    pages: list[list[types.Tool]] = []
    cursor: str | None = None
    for _ in range(50):
        page = await client.list_tools(cursor=cursor)
        pages.append(page.tools)
        cursor = page.next_cursor
        if cursor is None:
            return pages
    raise AssertionError("tools/list pagination did not end within 50 pages")


async def tool_names(client: Client) -> set[str]:
    return {tool.name for page in await all_pages(client) for tool in page}


def text_of(result: types.CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, types.TextContent)
    return block.text


def leaves(exc: BaseException) -> list[BaseException]:
    """The non-group exceptions inside a (possibly nested) exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


class ListChangedWatcher:
    """A ``message_handler`` that records tools/list_changed notifications."""

    def __init__(self) -> None:
        self.count = 0
        self.event = anyio.Event()
        self.errors: list[Exception] = []

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self.count += 1
            self.event.set()
        elif isinstance(message, Exception):
            self.errors.append(message)

    def reset(self) -> None:
        self.event = anyio.Event()


# ---------------------------------------------------------------- echo server


@pytest.mark.parametrize("mode", MODES)
async def test_pagination_collects_every_page(paged_target: StdioServerParameters | str, mode: str) -> None:
    with anyio.fail_after(30):
        async with Client(paged_target, mode=mode) as client:
            assert client.protocol_version == VERSION_FOR_MODE[mode]
            pages = await all_pages(client)
            with pytest.raises(MCPError) as bad_cursor:
                await client.list_tools(cursor="not-a-cursor")
    assert bad_cursor.value.code == types.INVALID_PARAMS
    names = [tool.name for page in pages for tool in page]
    assert len(pages) == 7
    assert all(len(page) <= 2 for page in pages)
    assert len(names) == len(set(names)) == 13
    assert set(names) == FIXED_TOOLS | {f"extra_{i}" for i in range(5)}
    for tool in (tool for page in pages for tool in page):
        assert tool.description
        assert tool.input_schema["type"] == "object"
        assert tool.input_schema["additionalProperties"] is False


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_tool_results(transport: str, mode: str, paged_echo_url: str) -> None:
    target = echo_stdio("--name", "plain") if transport == "stdio" else paged_echo_url
    with anyio.fail_after(30):
        async with Client(target, mode=mode) as client:
            await all_pages(client)  # lets the client learn the output schemas it validates against

            assert text_of(await client.call_tool("echo", {"text": "hello"})) == "hello"

            added = await client.call_tool("add", {"a": 2, "b": 40})
            assert added.structured_content == {"sum": 42}
            assert json.loads(text_of(added)) == {"sum": 42}
            assert not added.is_error

            failed = await client.call_tool("fail", {"message": "boom"})
            assert failed.is_error
            assert text_of(failed) == "boom"

            invalid = await client.call_tool("echo", {"text": 5})
            assert invalid.is_error
            assert "Invalid arguments" in text_of(invalid)

            assert text_of(await client.call_tool("sleep", {"seconds": 0.01})) == "slept"

            who = json.loads(text_of(await client.call_tool("whoami", {})))
            assert who["name"] == ("plain" if transport == "stdio" else "paged")
            assert isinstance(who["pid"], int)

            with pytest.raises(MCPError) as unknown:
                await client.call_tool("no_such_tool", {})
            assert unknown.value.code == types.INVALID_PARAMS

            # The server breaks its own output schema; the SDK client checks structured
            # content against the listed output_schema and raises RuntimeError.
            with pytest.raises(RuntimeError, match="Invalid structured content"):
                await client.call_tool("bad_output", {})


async def test_slow_tool_hits_the_client_read_timeout() -> None:
    with anyio.fail_after(30):
        async with Client(echo_stdio()) as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool("sleep", {"seconds": 30}, read_timeout_seconds=0.3)
            assert info.value.code == types.REQUEST_TIMEOUT
            # The connection survives a timed-out call.
            assert text_of(await client.call_tool("echo", {"text": "still here"})) == "still here"


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_toggle_notifies_listen_subscribers(transport: str, toggle_echo_url: str) -> None:
    """2026-07-28: list changes arrive only on a subscriptions/listen stream."""
    target = echo_stdio() if transport == "stdio" else toggle_echo_url
    watcher = ListChangedWatcher()
    with anyio.fail_after(30):
        async with Client(target, message_handler=watcher) as client:
            assert client.protocol_version == "2026-07-28"
            before = "surprise" in await tool_names(client)
            async with client.listen(tools_list_changed=True):
                state = text_of(await client.call_tool("toggle_tool", {}))
                await watcher.event.wait()
            after = "surprise" in await tool_names(client)
    assert after is not before
    assert state == ("surprise present" if after else "surprise absent")


async def test_toggle_without_listen_is_silent_at_2026() -> None:
    """2026-07-28 without a listen stream: the SDK drops the standalone notification."""
    watcher = ListChangedWatcher()
    with anyio.fail_after(30):
        async with Client(echo_stdio(), message_handler=watcher) as client:
            assert text_of(await client.call_tool("toggle_tool", {})) == "surprise present"
            assert "surprise" in await tool_names(client)  # a round trip after the toggle
    assert watcher.count == 0


async def test_toggle_notifies_legacy_stdio() -> None:
    """2025-11-25 over stdio: the notification rides the pipe, no subscription needed."""
    watcher = ListChangedWatcher()
    with anyio.fail_after(30):
        async with Client(echo_stdio(), mode="legacy", message_handler=watcher) as client:
            assert client.server_capabilities.tools is not None
            assert client.server_capabilities.tools.list_changed is True
            assert "surprise" not in await tool_names(client)
            assert text_of(await client.call_tool("toggle_tool", {})) == "surprise present"
            await watcher.event.wait()
            assert "surprise" in await tool_names(client)
            assert text_of(await client.call_tool("surprise", {})).startswith("surprise")
            watcher.reset()
            assert text_of(await client.call_tool("toggle_tool", {})) == "surprise absent"
            await watcher.event.wait()
            assert "surprise" not in await tool_names(client)


async def test_toggle_notifies_legacy_http(toggle_echo_url: str) -> None:
    """2025-11-25 over HTTP: the notification rides the standalone GET stream.

    The client opens that stream in the background after the handshake and the server
    drops notifications sent before it is connected, so toggle until one arrives.
    """
    watcher = ListChangedWatcher()
    with anyio.fail_after(30):
        async with Client(toggle_echo_url, mode="legacy", message_handler=watcher) as client:
            state = ""
            for _ in range(20):
                state = text_of(await client.call_tool("toggle_tool", {}))
                with anyio.move_on_after(0.5):
                    await watcher.event.wait()
                if watcher.event.is_set():
                    break
            assert watcher.count >= 1
            assert ("surprise" in await tool_names(client)) == (state == "surprise present")


async def test_crash_over_stdio_fails_fast() -> None:
    caught: Exception | None = None
    with anyio.fail_after(30):
        try:
            async with Client(echo_stdio()) as client:
                await client.call_tool("crash", {})
        except Exception as exc:
            caught = exc
    assert caught is not None, "crash() returned instead of failing"
    errors = [leaf for leaf in leaves(caught) if isinstance(leaf, MCPError)]
    assert errors
    assert errors[0].code == types.CONNECTION_CLOSED


@pytest.mark.parametrize("mode", MODES)
async def test_crash_over_http_fails_fast(mode: str) -> None:
    argv = ["-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"]
    with http_server(argv) as (proc, port):
        caught: Exception | None = None
        with anyio.fail_after(30):
            try:
                async with Client(f"http://127.0.0.1:{port}/mcp", mode=mode) as client:
                    await client.call_tool("crash", {})
            except Exception as exc:
                caught = exc
        assert caught is not None, "crash() returned instead of failing"
        # 2026-07-28: the transport's httpx2.RemoteProtocolError cancels the block and
        # surfaces from the exit; legacy: call_tool raises MCPError(CONNECTION_CLOSED).
        assert any(isinstance(leaf, MCPError | httpx2.TransportError) for leaf in leaves(caught))
        assert proc.wait(timeout=10) == 3


async def test_garbage_server_never_connects() -> None:
    watcher = ListChangedWatcher()
    params = StdioServerParameters(command=PYTHON, args=["-m", "tests.servers.garbage_server"], cwd=str(ROOT))
    caught: Exception | None = None
    with anyio.fail_after(30):
        try:
            # Legacy mode: auto mode's server/discover probe has a fixed 10 s timeout.
            async with Client(params, mode="legacy", read_timeout_seconds=0.5, message_handler=watcher):
                pass
        except Exception as exc:
            caught = exc
    assert caught is not None
    timeouts = [leaf for leaf in leaves(caught) if isinstance(leaf, MCPError)]
    assert timeouts
    assert timeouts[0].code == types.REQUEST_TIMEOUT
    assert watcher.errors
    assert all(isinstance(error, ValidationError) for error in watcher.errors)


# ---------------------------------------------------------------- multihost


def data_groups(count: int) -> list[tuple[str, list[str]]]:
    groups: dict[str, list[str]] = {}
    with DATA.open(encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["server"] not in groups and len(groups) == count:
                break
            groups.setdefault(record["server"], []).append(record["name"])
    return list(groups.items())


@pytest.mark.parametrize("mode", MODES)
async def test_multihost_serves_distinct_servers(multihost_url: str, mode: str) -> None:
    for index, (server_name, data_tools) in enumerate(data_groups(3)):
        with anyio.fail_after(30):
            async with Client(f"{multihost_url}/s/{index}/mcp", mode=mode) as client:
                assert client.server_info is not None
                assert client.server_info.name == server_name
                tools = (await client.list_tools()).tools
                assert [tool.name for tool in tools] == ["echo", *data_tools]
                for tool in tools:
                    assert tool.input_schema["type"] == "object"
                assert text_of(await client.call_tool("echo", {"text": "hi"})) == "hi"
                answer = json.loads(text_of(await client.call_tool(data_tools[0], {"query": "q"})))
        assert answer == {"server": server_name, "tool": data_tools[0], "arguments": {"query": "q"}}


async def test_multihost_rejects_unknown_server(multihost_url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{multihost_url}/s/3/mcp", json={})
    assert response.status_code == 404


async def test_multihost_mutation_changes_descriptions(multihost_url: str) -> None:
    watcher = ListChangedWatcher()
    with anyio.fail_after(30):
        async with (
            Client(f"{multihost_url}/s/1/mcp", message_handler=watcher) as client,
            httpx.AsyncClient(timeout=10) as http,
        ):
            before = {tool.name: tool.description for tool in (await client.list_tools()).tools}
            async with client.listen(tools_list_changed=True):
                info = (await http.get(f"{multihost_url}/admin/info")).json()
                mutated = (await http.post(f"{multihost_url}/admin/mutate?fraction=1&seed=5")).json()
                await watcher.event.wait()
            after = {tool.name: tool.description for tool in (await client.list_tools()).tools}
            (await http.post(f"{multihost_url}/admin/reset")).raise_for_status()
            restored = {tool.name: tool.description for tool in (await client.list_tools()).tools}
    assert mutated["count"] == info["data_tools"]
    changed_here = {entry["tool"] for entry in mutated["changed"] if entry["path"] == "/s/1/mcp"}
    assert changed_here == before.keys() - {"echo"}
    assert after["echo"] == before["echo"]
    assert all(after[name] != before[name] for name in changed_here)
    assert restored == before
