"""The upstream pool against real MCP servers (ours, over stdio and streamable HTTP)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from gateway.upstream import UpstreamError, UpstreamPool
from registry.specs import ServerSpec
from tests.support import PYTHON, ROOT, ServerProcess, children_of, wait_until

pytestmark = pytest.mark.anyio


def stdio_spec(name: str = "echo", *extra: str) -> ServerSpec:
    return ServerSpec(
        name=name,
        command=PYTHON,
        args=["-m", "tests.servers.echo_server", "--name", name, *extra],
        cwd=str(ROOT),
    )


@pytest.fixture
def http_echo() -> Iterator[ServerProcess]:
    server = ServerProcess([PYTHON, "-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sse_echo() -> Iterator[ServerProcess]:
    server = ServerProcess([PYTHON, "-m", "tests.servers.echo_server", "--transport", "sse", "--port", "0"])
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    async with UpstreamPool(connect_timeout=20, call_timeout=10, concurrency=4, idle_timeout=0) as p:
        yield p


async def _pid(pool: UpstreamPool, spec: ServerSpec) -> str:
    result = await pool.call_tool(spec, "whoami", {})
    text = result.content[0].text  # type: ignore[union-attr]
    assert isinstance(text, str)
    return text


async def test_lists_every_page(pool: UpstreamPool) -> None:
    spec = stdio_spec("paged", "--page-size", "2", "--extra-tools", "5")
    tools = await pool.list_tools(spec)
    names = [t.name for t in tools]
    assert {"echo", "add", "extra_0", "extra_4"} <= set(names)
    assert len(names) == len(set(names))
    add = next(t for t in tools if t.name == "add")
    assert add.output_schema is not None
    assert add.input_schema["required"] == ["a", "b"]


@pytest.mark.parametrize("transport", ["stdio", "http", "sse"])
async def test_calls_reuse_one_session(
    pool: UpstreamPool, http_echo: ServerProcess, sse_echo: ServerProcess, transport: str
) -> None:
    specs = {
        "stdio": stdio_spec(),
        "http": ServerSpec(name="web", transport="http", url=http_echo.url),
        "sse": ServerSpec(name="legacy", transport="sse", url=f"http://127.0.0.1:{sse_echo.port}/sse"),
    }
    spec = specs[transport]
    assert {t.name for t in await pool.list_tools(spec)} >= {"echo", "add", "whoami"}
    result = await pool.call_tool(spec, "add", {"a": 2, "b": 40})
    assert result.structured_content == {"sum": 42}
    assert not result.is_error
    first = await _pid(pool, spec)
    async with anyio.create_task_group() as group:
        for i in range(8):
            group.start_soon(pool.call_tool, spec, "echo", {"text": f"hi {i}"})
    assert await _pid(pool, spec) == first
    assert pool.stats()["connections"] == 1


async def test_upstream_error_result_passes_through(pool: UpstreamPool) -> None:
    result = await pool.call_tool(stdio_spec(), "fail", {"message": "disk on fire"})
    assert result.is_error
    assert "disk on fire" in result.content[0].text  # type: ignore[union-attr]


async def test_crash_mid_call_is_an_error_and_next_call_restarts(pool: UpstreamPool) -> None:
    spec = stdio_spec("crashy")
    before = await _pid(pool, spec)
    with pytest.raises(UpstreamError, match="closed the connection"):
        with anyio.fail_after(15):
            await pool.call_tool(spec, "crash", {})
    after = await _pid(pool, spec)
    assert after != before


async def test_hang_times_out_and_session_survives(pool: UpstreamPool) -> None:
    spec = stdio_spec("slow")
    with anyio.fail_after(15), pytest.raises(UpstreamError, match=r"within 0\.5s"):
        await pool.call_tool(spec, "sleep", {"seconds": 30}, time_limit=0.5)
    result = await pool.call_tool(spec, "echo", {"text": "still here"})
    assert result.content[0].text == "still here"  # type: ignore[union-attr]


async def test_output_violating_its_schema_is_rejected(pool: UpstreamPool) -> None:
    before = await _pid(pool, stdio_spec())
    with pytest.raises(UpstreamError):
        await pool.call_tool(stdio_spec(), "bad_output", {})
    assert await _pid(pool, stdio_spec()) == before  # a bad result is not a broken session


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        (ServerSpec(name="nope", command="/nonexistent/toolgate-test-binary"), "cannot connect to nope"),
        (
            ServerSpec(name="refused", transport="http", url="http://127.0.0.1:9/mcp"),
            "cannot connect to refused",
        ),
        (
            ServerSpec(
                name="garbage", command=PYTHON, args=["-m", "tests.servers.garbage_server"], cwd=str(ROOT)
            ),
            "cannot connect",
        ),
    ],
)
async def test_unreachable_upstreams_fail_cleanly(spec: ServerSpec, needle: str) -> None:
    async with UpstreamPool(connect_timeout=3, call_timeout=3, idle_timeout=0) as pool:
        with anyio.fail_after(20), pytest.raises(UpstreamError, match=needle):
            await pool.list_tools(spec)
        assert pool.stats()["connections"] == 0


async def test_list_changed_notification_reaches_the_callback() -> None:
    changed: list[str] = []
    seen = anyio.Event()

    async def on_changed(name: str) -> None:
        changed.append(name)
        seen.set()

    async with UpstreamPool(connect_timeout=20, idle_timeout=0, on_tools_changed=on_changed) as pool:
        spec = stdio_spec("toggler")
        before = {t.name for t in await pool.list_tools(spec)}
        await pool.call_tool(spec, "toggle_tool", {})
        with anyio.fail_after(10):
            await seen.wait()
        after = {t.name for t in await pool.list_tools(spec)}
    assert changed
    assert set(changed) == {"toggler"}
    assert after ^ before == {"surprise"}


async def test_closing_the_pool_leaves_no_process_behind() -> None:
    async with UpstreamPool(connect_timeout=20, idle_timeout=0) as pool:
        for i in range(3):
            await pool.call_tool(stdio_spec(f"p{i}"), "echo", {"text": "x"})
        assert len(children_of(os.getpid())) >= 3
    await wait_until(lambda: not children_of(os.getpid()), timeout=10)


async def test_changed_connection_details_reconnect(pool: UpstreamPool) -> None:
    first = await _pid(pool, stdio_spec("cfg"))
    second = await _pid(pool, stdio_spec("cfg", "--extra-tools", "1"))
    assert first != second
    assert pool.stats()["connections"] == 1


@pytest.mark.parametrize("mode", ["stdio", "http"])
async def test_crash_over_http_too(pool: UpstreamPool, mode: str) -> None:
    server = ServerProcess([PYTHON, "-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"])
    try:
        spec = (
            stdio_spec("c2") if mode == "stdio" else ServerSpec(name="c2", transport="http", url=server.url)
        )
        await _pid(pool, spec)
        with anyio.fail_after(20), pytest.raises(UpstreamError):
            await pool.call_tool(spec, "crash", {})
        # The pool survives: another server still answers, and the dead one is not reused.
        other = await pool.call_tool(stdio_spec("other"), "echo", {"text": "alive"})
        assert other.content[0].text == "alive"  # type: ignore[union-attr]
        if mode == "http":
            with anyio.fail_after(20), pytest.raises(UpstreamError, match="cannot connect"):
                await pool.call_tool(spec, "echo", {"text": "x"})
    finally:
        server.stop()


async def test_hanging_handshake_is_bounded_by_the_connect_timeout() -> None:
    spec = ServerSpec(
        name="garbage", command=PYTHON, args=["-m", "tests.servers.garbage_server"], cwd=str(ROOT)
    )
    async with UpstreamPool(connect_timeout=1.5, idle_timeout=0) as pool:
        started = anyio.current_time()
        with pytest.raises(UpstreamError, match="cannot connect"):
            await pool.list_tools(spec)
        assert anyio.current_time() - started < 8  # not the SDK's fixed 10 s discovery probe
