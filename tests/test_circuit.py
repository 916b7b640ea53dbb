"""Circuit breakers: the state machine on a fake clock, then the pool against a real HTTP
upstream that is stopped and started again on the same port."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest

from gateway.circuit import CircuitBreaker, CircuitOpenError, unavailable_message
from gateway.upstream import UpstreamError, UpstreamPool
from registry.specs import ServerSpec
from tests.support import PYTHON, ROOT, ServerProcess, wait_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def breaker(clock: FakeClock, failures: int = 3, cooldown: float = 10.0) -> CircuitBreaker:
    return CircuitBreaker(failures_to_open=failures, cooldown_s=cooldown, clock=clock, wall_clock=lambda: 5.0)


def fail(b: CircuitBreaker, times: int, error: str = "refused") -> None:
    for _ in range(times):
        b.failed(b.admit(), error)


def test_opens_after_consecutive_failures_only(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 2)
    b.succeeded(b.admit())  # a success resets the count
    fail(b, 2)
    assert b.snapshot().state == "closed"
    assert b.snapshot().consecutive_failures == 2
    fail(b, 1, "cannot connect: refused")
    snap = b.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.opened_at) == ("open", 3, 5.0)
    assert snap.retry_in_s == 10.0
    assert snap.last_error == "cannot connect: refused"
    with pytest.raises(CircuitOpenError) as raised:
        b.admit()
    message = unavailable_message("weather", raised.value)
    assert message.startswith("weather is unavailable: 3 consecutive failures; retrying in 10s")
    assert "cannot connect: refused" in message


def test_half_open_lets_one_trial_through_and_success_closes(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 3)
    clock.now += 9.5
    with pytest.raises(CircuitOpenError):
        b.admit()
    assert b.snapshot().retry_in_s == pytest.approx(0.5)
    clock.now += 0.5
    assert b.snapshot().state == "half_open"
    trial = b.admit()
    assert trial.trial
    with pytest.raises(CircuitOpenError) as raised:  # others fail fast while the trial runs
        b.admit()
    assert "trial call is running" in unavailable_message("s", raised.value)
    b.succeeded(trial)
    snap = b.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.opened_at, snap.retry_in_s) == (
        "closed",
        0,
        None,
        None,
    )
    assert not b.admit().trial


def test_failed_trial_reopens_with_a_fresh_cooldown(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10
    b.failed(b.admit(), "timed out")
    snap = b.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.retry_in_s) == ("open", 4, 10.0)
    assert snap.last_error == "timed out"
    clock.now += 9.9
    with pytest.raises(CircuitOpenError):
        b.admit()


def test_abandoned_trial_frees_the_slot(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 3)
    clock.now += 10
    b.abandoned(b.admit())  # the caller went away: no verdict
    assert b.snapshot().state == "half_open"
    assert b.admit().trial


def test_late_outcomes_of_older_calls_do_not_count(clock: FakeClock) -> None:
    b = breaker(clock)
    early = [b.admit() for _ in range(2)]  # admitted while closed, still running
    fail(b, 3)
    b.succeeded(early[0])  # finishing after the circuit opened: does not close it
    assert b.snapshot().state == "open"
    with pytest.raises(CircuitOpenError):
        b.check(early[1])  # a call still waiting to connect fails fast
    b.failed(early[1], "late")  # nor does it extend the cool-down
    assert b.snapshot().consecutive_failures == 3


def test_reset_closes_at_once(clock: FakeClock) -> None:
    b = breaker(clock)
    fail(b, 3)
    b.reset()
    snap = b.snapshot()
    assert (snap.state, snap.consecutive_failures, snap.last_error) == ("closed", 0, None)
    b.succeeded(b.admit())


# -- the pool against a real upstream ------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[list[ServerProcess]]:
    """A real streamable HTTP upstream; the test may stop it and start another on its port."""
    servers = [
        ServerProcess([PYTHON, "-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"])
    ]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.mark.anyio
async def test_circuit_opens_fails_fast_and_closes_after_a_trial(http_server: list[ServerProcess]) -> None:
    first = http_server[0]
    spec = ServerSpec(name="web", transport="http", url=first.url)
    async with UpstreamPool(
        connect_timeout=5, call_timeout=5, idle_timeout=0, circuit_failures=3, circuit_cooldown_s=1.5
    ) as pool:
        assert (await pool.call_tool(spec, "echo", {"text": "up"})).content[0].text == "up"  # type: ignore[union-attr]
        assert pool.circuits()["web"].state == "closed"
        first.stop()

        # The live session breaks, then every reconnect is refused: three failures in a row.
        for _ in range(3):
            with anyio.fail_after(10), pytest.raises(UpstreamError) as raised:
                await pool.call_tool(spec, "echo", {"text": "x"})
            assert "is unavailable" not in str(raised.value)
        snap = pool.circuits()["web"]
        assert (snap.state, snap.consecutive_failures) == ("open", 3)
        assert "cannot connect" in (snap.last_error or "")

        # Open: calls and listings fail fast without trying to connect.
        attempts = pool.status("web").connect_attempts
        with pytest.raises(
            UpstreamError, match=r"web is unavailable: 3 consecutive failures; retrying in [12]s"
        ):
            await pool.call_tool(spec, "echo", {"text": "x"})
        with pytest.raises(UpstreamError, match="web is unavailable"):
            await pool.list_tools(spec)
        assert pool.status("web").connect_attempts == attempts

        # Back on the same port; after the cool-down one trial call goes through and closes it.
        http_server.append(
            ServerProcess(
                [PYTHON, "-m", "tests.servers.echo_server", "--transport", "http", "--port", str(first.port)]
            )
        )
        await wait_until(lambda: pool.circuits()["web"].state == "half_open", timeout=5)
        result = await pool.call_tool(spec, "echo", {"text": "back"})
        assert result.content[0].text == "back"  # type: ignore[union-attr]
        snap = pool.circuits()["web"]
        assert (snap.state, snap.consecutive_failures) == ("closed", 0)
        assert pool.status("web").connect_attempts == attempts + 1


@pytest.mark.anyio
async def test_failed_trial_reopens_and_reset_closes(http_server: list[ServerProcess]) -> None:
    clock = FakeClock()
    server = http_server[0]
    server.stop()
    spec = ServerSpec(name="down", transport="http", url=server.url)
    async with UpstreamPool(
        connect_timeout=5, idle_timeout=0, circuit_failures=2, circuit_cooldown_s=30, clock=clock
    ) as pool:
        for _ in range(2):
            with pytest.raises(UpstreamError, match="cannot connect to down"):
                await pool.list_tools(spec)  # a sync's listing counts too
        assert pool.circuits()["down"].state == "open"
        clock.now += 30
        assert pool.circuits()["down"].state == "half_open"
        with pytest.raises(UpstreamError, match="cannot connect to down"):  # the trial, still refused
            await pool.call_tool(spec, "echo", {"text": "x"})
        snap = pool.circuits()["down"]
        assert (snap.state, snap.consecutive_failures, snap.retry_in_s) == ("open", 3, 30)

        reset = pool.reset_circuit("down")
        assert (reset.state, reset.consecutive_failures) == ("closed", 0)
        with pytest.raises(UpstreamError, match="cannot connect to down"):  # it connects again
            await pool.call_tool(spec, "echo", {"text": "x"})


@pytest.mark.anyio
async def test_answers_are_not_failures() -> None:
    """Tool errors (isError) and protocol errors the server chose to send leave the circuit shut."""
    spec = ServerSpec(name="echo", command=PYTHON, args=["-m", "tests.servers.echo_server"], cwd=str(ROOT))
    async with UpstreamPool(connect_timeout=20, idle_timeout=0, circuit_failures=1) as pool:
        assert (await pool.call_tool(spec, "fail", {"message": "no"})).is_error
        with pytest.raises(UpstreamError, match="rejected 'missing'"):
            await pool.call_tool(spec, "missing", {})
        with pytest.raises(UpstreamError):  # an answer that breaks its output schema
            await pool.call_tool(spec, "bad_output", {})
        assert pool.circuits()["echo"].state == "closed"
        with pytest.raises(UpstreamError, match="closed the connection"):  # a crash does count
            await pool.call_tool(spec, "crash", {})
        assert pool.circuits()["echo"].state == "open"


@pytest.mark.anyio
async def test_new_connection_details_start_a_fresh_circuit() -> None:
    dead = ServerSpec(name="moved", transport="http", url="http://127.0.0.1:9/mcp")
    async with UpstreamPool(connect_timeout=5, idle_timeout=0, circuit_failures=1) as pool:
        with pytest.raises(UpstreamError, match="cannot connect"):
            await pool.call_tool(dead, "echo", {"text": "x"})
        assert pool.circuits()["moved"].state == "open"
        fixed = ServerSpec(
            name="moved", command=PYTHON, args=["-m", "tests.servers.echo_server"], cwd=str(ROOT)
        )
        assert (await pool.call_tool(fixed, "echo", {"text": "ok"})).content[0].text == "ok"  # type: ignore[union-attr]
        assert pool.circuits()["moved"].state == "closed"
