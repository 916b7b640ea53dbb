"""The upstream pool against real MCP servers (ours, over stdio and streamable HTTP)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import anyio
import mcp_types as types
import pytest
from mcp import Client

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


# -- concurrency, request metadata and draining (tests/servers/slow_server.py) --------------------


def slow_stdio_spec(name: str = "slow") -> ServerSpec:
    return ServerSpec(name=name, command=PYTHON, args=["-m", "tests.servers.slow_server"], cwd=str(ROOT))


@pytest.fixture
def slow_http() -> Iterator[ServerProcess]:
    server = ServerProcess([PYTHON, "-m", "tests.servers.slow_server", "--transport", "http", "--port", "0"])
    try:
        yield server
    finally:
        server.stop()


def _events(result: types.CallToolResult) -> list[str]:
    assert result.structured_content is not None
    events: list[str] = result.structured_content["events"]
    return events


async def test_third_call_waits_for_a_slot_with_concurrency_two(slow_http: ServerProcess) -> None:
    spec = ServerSpec(name="slow", transport="http", url=slow_http.url)
    answers: dict[str, str] = {}

    async def hold(tag: str) -> None:
        result = await limited.call_tool(spec, "hold", {"tag": tag})
        answers[tag] = result.content[0].text  # type: ignore[union-attr]

    async with (
        UpstreamPool(connect_timeout=20, call_timeout=30, concurrency=2, idle_timeout=0) as limited,
        Client(slow_http.url) as direct,  # a second session, outside the pool's limit
    ):
        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                for tag in ("a", "b", "c"):
                    group.start_soon(hold, tag)
                running = _events(await direct.call_tool("wait_started", {"count": 2}))
                await wait_until(lambda: limited.status("slow").waiting == 1)
                assert limited.status("slow").in_flight == 3
                assert len(running) == 2  # the third is queued in the gateway, not upstream
                first, second = (event.removeprefix("start:") for event in running)
                (third,) = {"a", "b", "c"} - {first, second}

                await direct.call_tool("release", {"tag": first})
                events = _events(await direct.call_tool("wait_started", {"count": 3}))
                assert events.index(f"start:{third}") > events.index(f"end:{first}")
                for tag in (second, third):
                    await direct.call_tool("release", {"tag": tag})
    assert answers == {tag: f"released {tag}" for tag in "abc"}
    assert limited.status("slow").in_flight == 0


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_request_meta_reaches_the_upstream(
    pool: UpstreamPool, slow_http: ServerProcess, transport: str
) -> None:
    spec = (
        slow_stdio_spec()
        if transport == "stdio"
        else ServerSpec(name="slow", transport="http", url=slow_http.url)
    )
    meta = {
        "toolgate/request_id": "req-42",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    result = await pool.call_tool(spec, "meta", {}, meta=meta)
    assert result.structured_content is not None
    received = result.structured_content["meta"]
    assert {key: received.get(key) for key in meta} == meta
    plain = await pool.call_tool(spec, "meta", {})
    assert plain.structured_content is not None
    assert "toolgate/request_id" not in plain.structured_content["meta"]


async def test_leaving_the_pool_drains_calls_in_flight(slow_http: ServerProcess) -> None:
    spec = ServerSpec(name="slow", transport="http", url=slow_http.url)
    pool = UpstreamPool(connect_timeout=20, call_timeout=30, idle_timeout=0, drain_timeout=20)
    answers: list[str] = []

    async def hold() -> None:
        result = await pool.call_tool(spec, "hold", {"tag": "drain"})
        answers.append(result.content[0].text)  # type: ignore[union-attr]

    async def release_once_closing(direct: Client) -> None:
        await wait_until(lambda: pool.closing)
        with pytest.raises(UpstreamError, match="the gateway is shutting down"):
            await pool.call_tool(spec, "sleep", {"seconds": 0})
        with pytest.raises(UpstreamError, match="the gateway is shutting down"):
            await pool.list_tools(spec)
        assert not answers  # still draining
        await direct.call_tool("release", {"tag": "drain"})

    with anyio.fail_after(30):
        async with Client(slow_http.url) as direct, anyio.create_task_group() as group:
            async with pool:
                group.start_soon(hold)
                await direct.call_tool("wait_started", {"count": 1})
                group.start_soon(release_once_closing, direct)
            # The pool has closed, and only after the held call finished.
            assert answers == ["released drain"]
            assert pool.stats()["connections"] == 0


async def test_drain_gives_up_after_its_timeout_and_stops_the_process() -> None:
    pool = UpstreamPool(connect_timeout=20, call_timeout=60, idle_timeout=0, drain_timeout=0.5)
    outcome: list[BaseException] = []

    async def hold_forever() -> None:
        try:
            await pool.call_tool(slow_stdio_spec(), "hold", {"tag": "never"})
        except UpstreamError as exc:
            outcome.append(exc)

    with anyio.fail_after(20):
        async with anyio.create_task_group() as group:
            async with pool:
                group.start_soon(hold_forever)
                await wait_until(lambda: pool.status("slow").in_flight == 1)
                assert children_of(os.getpid())
                started = anyio.current_time()
            assert 0.5 <= anyio.current_time() - started < 10  # it waited, then gave up
    assert len(outcome) == 1  # the cut call gets an error, not a hang
    await wait_until(lambda: not children_of(os.getpid()), timeout=10)


# -- bounded answers and garbage (tests/servers/faulty_server.py, gateway/stdio_transport.py) ---


def faulty_stdio_spec(name: str = "faulty") -> ServerSpec:
    return ServerSpec(name=name, command=PYTHON, args=["-m", "tests.servers.faulty_server"], cwd=str(ROOT))


@pytest.fixture
def faulty_http() -> Iterator[ServerProcess]:
    server = ServerProcess(
        [PYTHON, "-m", "tests.servers.faulty_server", "--transport", "http", "--port", "0"]
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_an_answer_over_the_limit_fails_fast_and_the_session_survives(
    faulty_http: ServerProcess, transport: str
) -> None:
    spec = (
        faulty_stdio_spec()
        if transport == "stdio"
        else ServerSpec(name="faulty", transport="http", url=faulty_http.url)
    )
    async with UpstreamPool(
        connect_timeout=20, call_timeout=10, idle_timeout=0, max_result_bytes=100_000
    ) as pool:
        first = await pool.call_tool(spec, "ok", {"text": "before"})
        small = await pool.call_tool(spec, "huge", {"mb": 0.05})  # ~52 kB: under the limit
        assert len(small.content[0].text) == 52428  # type: ignore[union-attr]
        started = anyio.current_time()
        with pytest.raises(UpstreamError, match=r"more than 100000 bytes.*TOOLGATE_MAX_RESULT_BYTES"):
            await pool.call_tool(spec, "huge", {"mb": 20})
        assert anyio.current_time() - started < 5  # not the SDK's quadratic 40 s for 50 MB
        after = await pool.call_tool(spec, "ok", {"text": "after"})
        assert after.content[0].text == "after"  # type: ignore[union-attr]
        assert first.content[0].text == "before"  # type: ignore[union-attr]
        assert pool.status("faulty").circuit.consecutive_failures == 0  # it answered: no failure
        assert pool.status("faulty").connect_attempts == 1  # the same session throughout


async def test_garbage_on_stdout_is_named_in_the_timeout_error(pool: UpstreamPool) -> None:
    spec = faulty_stdio_spec("noisy")
    await pool.call_tool(spec, "ok", {"text": "x"})
    with (
        anyio.fail_after(15),
        pytest.raises(
            UpstreamError, match=r"within 0\.5s \(meanwhile it sent \d+ messages that are not JSON-RPC\)"
        ),
    ):
        await pool.call_tool(spec, "garbage", {}, time_limit=0.5)
    assert (await pool.call_tool(spec, "ok", {"text": "y"})).content[0].text == "y"  # type: ignore[union-attr]


async def test_output_that_breaks_its_schema_says_so(pool: UpstreamPool) -> None:
    with pytest.raises(UpstreamError, match="breaks its own output schema"):
        await pool.call_tool(faulty_stdio_spec(), "bad_output", {})


def test_the_line_reader_is_bounded_and_keeps_in_step() -> None:
    from gateway.stdio_transport import _LineReader, _too_large

    reader = _LineReader(limit=100)
    assert reader.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert reader.feed(b":2}\n") == [b'{"b":2}']
    head = b'{"jsonrpc":"2.0","id":7,"result":'
    assert reader.feed(head) == []
    skipped = reader.feed(b"x" * 1000)[0]  # reported as soon as it passes the limit
    assert isinstance(skipped, tuple)
    assert reader.feed(b"x" * 1000) == []  # the rest is dropped as it streams: nothing buffered
    assert len(reader._buffer) == 0
    assert reader.feed(b'"}\n{"c":3}\n') == [b'{"c":3}']
    error = _too_large(skipped[0], 100)
    assert not isinstance(error, Exception)
    assert error.message.id == 7  # type: ignore[union-attr]


async def test_the_pool_closes_its_least_recently_used_idle_sessions_past_the_cap() -> None:
    """A sync of more servers than `max_sessions` keeps at most that many open (~150 KB each);
    a session in use is never closed under its call."""
    async with UpstreamPool(connect_timeout=20, idle_timeout=0, max_sessions=2) as pool:
        specs = [stdio_spec(f"cap{i}") for i in range(4)]
        for spec in specs[:2]:
            await pool.list_tools(spec)
        assert len(children_of(os.getpid())) == 2
        async with anyio.create_task_group() as group:
            # cap0 is the least recently used, but busy: cap1 goes instead.
            group.start_soon(pool.call_tool, specs[0], "sleep", {"seconds": 2})
            await wait_until(lambda: pool.status("cap0").in_flight == 1, timeout=10)
            await pool.list_tools(specs[2])
            assert {n for n in ("cap0", "cap1", "cap2") if pool.status(n).connected} == {"cap0", "cap2"}
        # cap0's call ended after cap2 was listed: cap2 is now the least recently used.
        await pool.list_tools(specs[3])
        assert {n for n in ("cap0", "cap2", "cap3") if pool.status(n).connected} == {"cap0", "cap3"}
        assert pool.stats()["connections"] == 2
        await wait_until(lambda: len(children_of(os.getpid())) == 2, timeout=10)
        # A closed session reopens on its next use and answers as before.
        assert await _pid(pool, specs[1])


async def test_a_reopened_session_adopts_the_servers_discover_answer(http_echo: ServerProcess) -> None:
    """Reconnecting to a 2026-07-28 server costs no handshake: the first session's
    `server/discover` answer is kept and adopted by the next one, until a session fails."""
    async with UpstreamPool(connect_timeout=20, idle_timeout=0) as pool:
        spec = ServerSpec(name="web", transport="http", url=http_echo.url)
        await pool.list_tools(spec)
        first = pool._connections["web"].client
        assert first is not None
        answer, version = first.session.discover_result, first.protocol_version
        assert answer is not None
        assert pool.stats()["discovered"] == 1
        await pool.close("web")
        assert (await pool.call_tool(spec, "add", {"a": 1, "b": 2})).structured_content == {"sum": 3}
        second = pool._connections["web"].client
        assert second is not None
        assert second is not first
        assert second.session.discover_result is answer  # adopted, not probed again
        assert second.protocol_version == version
        with anyio.fail_after(20), pytest.raises(UpstreamError):
            await pool.call_tool(spec, "crash", {})
        assert pool.stats()["discovered"] == 0  # a failed session: negotiate afresh next time


async def test_a_session_opened_at_the_cap_listens_for_changes_once_a_call_uses_it() -> None:
    changed: list[str] = []

    async def on_changed(name: str) -> None:
        changed.append(name)

    async with UpstreamPool(
        connect_timeout=20, idle_timeout=0, max_sessions=1, on_tools_changed=on_changed
    ) as pool:
        await pool.list_tools(stdio_spec("first"))
        await wait_until(lambda: pool.stats()["listening"] == 1, timeout=10)  # the pool had room
        toggler = stdio_spec("toggler")
        before = {t.name for t in await pool.list_tools(toggler)}  # opened while full: no stream
        assert not pool.status("first").connected
        await anyio.sleep(0.5)
        assert pool.stats()["listening"] == 0
        await pool.call_tool(toggler, "echo", {"text": "x"})
        await wait_until(lambda: pool.stats()["listening"] == 1, timeout=10)
        await pool.call_tool(toggler, "toggle_tool", {})
        await wait_until(lambda: changed == ["toggler"], timeout=10)
        assert {t.name for t in await pool.list_tools(toggler)} ^ before == {"surprise"}
