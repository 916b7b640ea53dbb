"""Pooled MCP client sessions to upstream servers.

One long-lived session per server, reused across calls (never one process per call). Each
session lives in its own task, because the SDK's client must be entered and exited in the
same task; callers borrow it. A session whose transport died is replaced on the next use,
so a crashed stdio server is restarted then.

Each server has a circuit breaker (gateway/circuit.py): after repeated transport failures its
calls fail fast, without connecting, until a trial call after the cool-down succeeds. Each
session caps its in-flight calls (`concurrency`); more wait their turn.

The pool holds at most `max_sessions` sessions: past that, the least recently used idle ones
are closed (a sync of thousands of servers would otherwise keep one open to each, ~150 KB of
memory a session). Reopening one to a 2026-07-28 server costs no handshake: the server's
`server/discover` answer is kept and adopted (the SDK's `prior_discover`), and forgotten when a
session to that server fails.

A session opened while the pool is full opens its list_changed stream only once a call uses
it.

Leaving the pool drains it: new calls are refused, calls in flight get up to `drain_timeout`
to finish, then every session, and with it every upstream process, is closed.
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self, TextIO, cast

import anyio
import httpx2
import mcp_types as types
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client, StdioServerParameters
from mcp.client.session import IncomingMessage, MessageHandlerFnT
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from registry.errors import InvalidSpecError
from registry.specs import ServerSpec, UpstreamTool

from .circuit import Attempt, CircuitBreaker, CircuitOpenError, CircuitSnapshot, unavailable_message
from .http_limits import CappedTransport, coalescing_transport
from .stdio_transport import bounded_stdio_client
from .tracing import detached
from .upstream_errors import (
    DEFAULT_MAX_RESULT_BYTES,
    UpstreamError,
    call_error,
    connect_error,
    is_too_large,
    other_call_error,
    too_large_error,
)

logger = logging.getLogger(__name__)

ToolsChanged = Callable[[str], Coroutine[Any, Any, None]]
ConnectCheck = Callable[[ServerSpec], Awaitable[None]]  # raises InvalidSpecError to refuse
_MAX_PAGES = 1000  # a server that keeps returning cursors is broken, not large


# The SDK's stand-in for an HTTP error status without a JSON-RPC body (a 502 from a proxy, a
# crashed app server): the server did not answer the request, so it counts against the circuit.
_HTTP_STATUS_ERROR = "Server returned an error response"
SHUTTING_DOWN = "the gateway is shutting down"
__all__ = ["DEFAULT_MAX_RESULT_BYTES", "SHUTTING_DOWN", "UpstreamError", "UpstreamPool", "too_large_error"]


@dataclass(frozen=True, slots=True)
class UpstreamStatus:
    """One server as the pool sees it, for the admin API. `in_flight` counts calls accepted and
    not finished, `waiting` those of them queued for a concurrency slot; `connect_attempts`
    counts sessions this process tried to open."""

    name: str
    connected: bool
    alive: bool
    in_flight: int
    waiting: int
    connect_attempts: int
    circuit: CircuitSnapshot


@dataclass
class _Connection:
    spec: ServerSpec
    key: tuple[Any, ...]
    limiter: anyio.CapacityLimiter
    stop: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    client: Client | None = None
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0  # calls and listings using the session now
    # Set when a call uses the session: it then opens its list_changed stream, if it has none.
    listen_wanted: anyio.Event = field(default_factory=anyio.Event)

    @property
    def alive(self) -> bool:
        return self.client is not None and not self.done.is_set() and not _transport_closed(self.client)


@dataclass(frozen=True, slots=True)
class _Discovered:
    """A modern server's `server/discover` answer, adopted when a session to it is reopened."""

    key: tuple[Any, ...]  # the connection details it was learned with
    version: str
    result: types.DiscoverResult


def _transport_closed(client: Client) -> bool:
    """True when the session's transport has closed (e.g. the stdio process exited).

    The SDK exposes no public flag for this; its dispatcher keeps one. Reading it lets the pool
    replace a dead session before sending, instead of failing the next call or retrying a call
    that may already have run upstream.
    """
    dispatcher = getattr(client.session, "_dispatcher", None)
    return bool(getattr(dispatcher, "_closed", False))


def _errlog() -> TextIO:
    # Upstream stderr goes to ours; subprocesses need a real file descriptor.
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.__stderr__ or open("/dev/null", "w")
    return sys.stderr


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One SSL context for every upstream HTTP client: building one costs ~40 ms of CPU, which
    adds up when thousands of servers are synced."""
    return ssl.create_default_context()


def _transport(spec: ServerSpec, timeout: float, max_bytes: int) -> AbstractAsyncContextManager[Any]:
    if spec.transport == "stdio":
        assert spec.command is not None
        params = StdioServerParameters(
            command=spec.command, args=spec.args, env=spec.env or None, cwd=spec.cwd
        )
        return bounded_stdio_client(params, _errlog(), max_message_bytes=max_bytes)
    assert spec.url is not None
    if spec.transport == "sse":
        return sse_client(spec.url, headers=spec.headers or None, timeout=timeout)
    transport = CappedTransport(coalescing_transport(_ssl_context()), max_bytes)
    http = httpx2.AsyncClient(
        headers=spec.headers, timeout=httpx2.Timeout(timeout, read=None), transport=transport
    )
    return _owned_http_transport(spec.url, http, max_bytes)


class _owned_http_transport:
    """Streamable HTTP transport that also closes the HTTP client it was given."""

    def __init__(self, url: str, http: httpx2.AsyncClient, max_bytes: int) -> None:
        self._http = http
        # An SSE event over the limit fails the request it answered, not the session.
        self._inner = streamable_http_client(url, http_client=http, max_sse_event_size=max_bytes)

    async def __aenter__(self) -> Any:
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool | None:
        try:
            return await self._inner.__aexit__(*exc)
        finally:
            await self._http.aclose()


def _upstream_tool(tool: types.Tool) -> UpstreamTool:
    annotations = tool.annotations.model_dump(by_alias=True, exclude_none=True) if tool.annotations else None
    return UpstreamTool(
        name=tool.name,
        title=tool.title,
        description=tool.description or "",
        input_schema=dict(tool.input_schema),
        output_schema=dict(tool.output_schema) if tool.output_schema is not None else None,
        annotations=annotations or None,
    )


class UpstreamPool:
    """Sessions to upstream servers, keyed by server name, used as an async context manager.

    Breakers live in this process: every gateway replica learns on its own that a server is down.
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 30.0,
        call_timeout: float = 60.0,
        concurrency: int = 16,
        idle_timeout: float = 600.0,
        max_sessions: int = 256,
        on_tools_changed: ToolsChanged | None = None,
        circuit_failures: int = 5,
        circuit_cooldown_s: float = 30.0,
        drain_timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        connect_check: ConnectCheck | None = None,
        max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    ) -> None:
        self.max_result_bytes = max_result_bytes
        self._connect_timeout = connect_timeout
        self._call_timeout = call_timeout
        self._concurrency = concurrency
        self._idle_timeout = idle_timeout
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions}")
        self._max_sessions = max_sessions
        self._shrinking = False
        self._discovered: dict[str, _Discovered] = {}
        self._listening = 0  # sessions with an open list_changed stream
        self._on_tools_changed = on_tools_changed
        self._circuit_failures = circuit_failures
        self._circuit_cooldown = circuit_cooldown_s
        self._drain_timeout = drain_timeout
        self._clock = clock
        self._connect_check = connect_check
        self._connections: dict[str, _Connection] = {}
        self._opening: dict[str, anyio.Lock] = {}
        self._breakers: dict[str, tuple[tuple[Any, ...], CircuitBreaker]] = {}
        self._connect_attempts: dict[str, int] = {}
        self._group: TaskGroup | None = None
        self._changes_pending: set[str] = set()
        self._closing = False
        self._active = 0  # calls and listings in progress, for the drain
        self._idle: anyio.Event | None = None
        self._unreadable: dict[str, int] = {}  # non-JSON-RPC messages per server, for error messages

    async def __aenter__(self) -> Self:
        self._closing = False
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        if self._idle_timeout > 0:
            self._group.start_soon(self._reap_idle)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._closing = True
        try:
            if exc_type is None:  # on an error or a cancellation, close at once
                await self._drain()
        finally:
            with anyio.CancelScope(shield=True):  # never leave an upstream process behind
                await self.close_all()
            assert self._group is not None
            self._group.cancel_scope.cancel()
            await self._group.__aexit__(None, None, None)
            self._group = None

    # -- public API ----------------------------------------------------------------------------

    async def list_tools(self, spec: ServerSpec) -> list[UpstreamTool]:
        """Every tool the server lists, following `nextCursor` until it is absent."""
        async with self._attempt(spec) as attempt:
            connection = await self._acquire(spec, attempt)
            connection.in_flight += 1
            try:
                tools = await self._list_pages(connection, attempt)
            except (UpstreamError, CircuitOpenError):
                raise
            except MCPError as exc:
                self._forget_if_dead(connection, exc)
                self._judge(attempt, exc)
                raise UpstreamError(f"{spec.name}: tools/list failed: {exc.message}") from exc
            except Exception as exc:  # a malformed page or a broken transport
                self._judge_other(attempt, connection, exc)
                raise UpstreamError(f"{spec.name}: tools/list failed: {type(exc).__name__}: {exc}") from exc
            finally:
                connection.in_flight -= 1
                connection.last_used = time.monotonic()
            attempt.answered()
            return tools

    async def _list_pages(self, connection: _Connection, attempt: Attempt) -> list[UpstreamTool]:
        tools: list[UpstreamTool] = []
        cursor: str | None = None
        async with connection.limiter:
            attempt.check()
            for _ in range(_MAX_PAGES):
                assert connection.client is not None
                page = await connection.client.list_tools(cursor=cursor, cache_mode="refresh")
                tools.extend(_upstream_tool(t) for t in page.tools)
                cursor = page.next_cursor
                if cursor is None:  # an empty string is still a cursor
                    return tools
        attempt.answered()  # it answered every page; it is just broken
        raise UpstreamError(f"{connection.spec.name}: tools/list returned more than {_MAX_PAGES} pages")

    async def call_tool(
        self,
        spec: ServerSpec,
        name: str,
        arguments: dict[str, Any],
        *,
        time_limit: float | None = None,
        meta: dict[str, Any] | None = None,
    ) -> types.CallToolResult:
        """Forward one call; `meta` becomes the request's `_meta` (a request id, trace context).
        Upstream failures raise `UpstreamError` with a message for the model."""
        limit = time_limit or self._call_timeout
        async with self._attempt(spec) as attempt:
            connection = await self._acquire(spec, attempt)
            unreadable = self._unreadable.get(spec.name, 0)
            connection.in_flight += 1
            connection.listen_wanted.set()
            try:
                async with connection.limiter:
                    attempt.check()
                    assert connection.client is not None
                    # The SDK's own read timeout cancels the request upstream; the outer bound is
                    # a safety net should a transport ignore it.
                    with anyio.fail_after(limit + 5):
                        result = await connection.client.call_tool(
                            name,
                            arguments,
                            read_timeout_seconds=limit,
                            meta=cast(types.RequestParamsMeta, meta) if meta is not None else None,
                        )
            except (UpstreamError, CircuitOpenError):
                raise
            except MCPError as exc:
                self._forget_if_dead(connection, exc)
                self._judge(attempt, exc)
                noise = self._unreadable.get(spec.name, 0) - unreadable
                raise call_error(spec.name, name, limit, exc, noise, self.max_result_bytes) from exc
            except TimeoutError as exc:  # the transport ignored the read timeout: don't trust it again
                self._drop(connection)
                attempt.failed(f"no answer within {limit:g}s")
                raise UpstreamError(f"{spec.name} did not answer {name!r} within {limit:g}s") from exc
            except Exception as exc:  # a malformed result or a broken transport; keep serving
                self._judge_other(attempt, connection, exc)
                raise other_call_error(spec.name, name, exc) from exc
            finally:
                connection.in_flight -= 1
                connection.last_used = time.monotonic()
            attempt.answered()
            return result

    async def close(self, name: str) -> None:
        """Close the session to one server (and stop its process) and wait until it is gone."""
        connection = self._connections.pop(name, None)
        if connection is not None:
            connection.stop.set()
            with anyio.move_on_after(10):
                await connection.done.wait()

    async def close_all(self) -> None:
        """Close every session and stop every upstream process."""
        async with anyio.create_task_group() as group:
            for name in list(self._connections):
                group.start_soon(self.close, name)

    @property
    def closing(self) -> bool:
        """True once the pool started shutting down: new calls are refused."""
        return self._closing

    def stats(self) -> dict[str, int]:
        alive = sum(1 for c in self._connections.values() if c.alive)
        return {
            "connections": len(self._connections),
            "alive": alive,
            "max_sessions": self._max_sessions,
            "discovered": len(self._discovered),
            "listening": self._listening,
        }

    def status(self, name: str) -> UpstreamStatus:
        """One server's connection, load and circuit (a server never used: idle and closed)."""
        connection = self._connections.get(name)
        return UpstreamStatus(
            name=name,
            connected=connection is not None,
            alive=connection is not None and connection.alive,
            in_flight=connection.in_flight if connection is not None else 0,
            waiting=connection.limiter.statistics().tasks_waiting if connection is not None else 0,
            connect_attempts=self._connect_attempts.get(name, 0),
            circuit=self._snapshot(name),
        )

    def circuits(self) -> dict[str, CircuitSnapshot]:
        """The circuit of every server this process has talked to, by server name."""
        return {name: breaker.snapshot() for name, (_key, breaker) in self._breakers.items()}

    def reset_circuit(self, name: str) -> CircuitSnapshot:
        """Close a server's circuit now (after an operator fixed it); the next call connects."""
        entry = self._breakers.get(name)
        if entry is not None:
            entry[1].reset()
            logger.info("circuit of %s reset by an operator", name)
        return self._snapshot(name)

    # -- internals -----------------------------------------------------------------------------

    def _snapshot(self, name: str) -> CircuitSnapshot:
        entry = self._breakers.get(name)
        if entry is None:
            return CircuitSnapshot("closed", 0, None, None, None)
        return entry[1].snapshot()

    def _breaker(self, spec: ServerSpec) -> CircuitBreaker:
        """The server's breaker; new connection details (the operator fixed the URL) start afresh."""
        key = spec.connection_key()
        entry = self._breakers.get(spec.name)
        if entry is None or entry[0] != key:
            breaker = CircuitBreaker(
                failures_to_open=self._circuit_failures, cooldown_s=self._circuit_cooldown, clock=self._clock
            )
            entry = (key, breaker)
            self._breakers[spec.name] = entry
        return entry[1]

    @asynccontextmanager
    async def _attempt(self, spec: ServerSpec) -> AsyncIterator[Attempt]:
        """Admit one call or listing (or refuse it at once: shutting down, circuit open) and
        count it in flight until it ends."""
        if self._closing:
            raise UpstreamError(SHUTTING_DOWN)
        try:
            attempt = self._breaker(spec).attempt()
        except CircuitOpenError as exc:
            raise UpstreamError(unavailable_message(spec.name, exc)) from None
        self._active += 1
        try:
            yield attempt
        except CircuitOpenError as exc:  # it opened while this call waited to connect or for a slot
            raise UpstreamError(unavailable_message(spec.name, exc)) from None
        finally:
            attempt.finish()
            self._active -= 1
            if self._active == 0 and self._idle is not None:
                self._idle.set()

    async def _drain(self) -> None:
        if self._active == 0:
            return
        logger.info(
            "shutting down: waiting up to %gs for %d upstream calls", self._drain_timeout, self._active
        )
        self._idle = anyio.Event()
        with anyio.move_on_after(self._drain_timeout) as scope:
            await self._idle.wait()
        if scope.cancelled_caught:
            logger.warning("shutting down: %d upstream calls still running; closing them", self._active)

    def _judge(self, attempt: Attempt, exc: MCPError) -> None:
        """A timeout or a lost connection counts against the circuit; an error the server chose
        to send (invalid params, unknown tool) means it is up, and so does an oversized answer."""
        if is_too_large(exc):
            attempt.answered()
        elif (
            exc.code in (types.CONNECTION_CLOSED, types.REQUEST_TIMEOUT) or exc.message == _HTTP_STATUS_ERROR
        ):
            attempt.failed(exc.message)
        else:
            attempt.answered()

    def _judge_other(self, attempt: Attempt, connection: _Connection, exc: Exception) -> None:
        if connection.alive:  # e.g. a result that fails validation: the server did answer
            attempt.answered()
        else:
            self._drop(connection)
            attempt.failed(f"{type(exc).__name__}: {exc}")

    def _forget_if_dead(self, connection: _Connection, exc: MCPError) -> None:
        if exc.code == types.UNSUPPORTED_PROTOCOL_VERSION:
            self._drop(connection)  # e.g. an adopted version the server no longer speaks
        elif exc.code == types.CONNECTION_CLOSED and not is_too_large(exc):
            self._drop(connection)
        elif exc.code == types.REQUEST_TIMEOUT or exc.message == _HTTP_STATUS_ERROR:
            # Not the server's own answer: negotiate afresh on the next connection.
            self._discovered.pop(connection.spec.name, None)

    def _drop(self, connection: _Connection) -> None:
        """Stop this failed connection; the next call opens a fresh one and negotiates afresh.
        Another task may already have replaced it under the same name: leave that one alone."""
        self._discovered.pop(connection.spec.name, None)
        self._retire(connection)

    def _retire(self, connection: _Connection) -> None:
        if self._connections.get(connection.spec.name) is connection:
            del self._connections[connection.spec.name]
        connection.stop.set()

    def _shrink(self) -> None:
        """Close the least recently used idle sessions beyond `max_sessions`. Sessions in use
        stay open, so the pool may exceed the cap while more than that many are busy."""
        excess = len(self._connections) - self._max_sessions
        if excess <= 0:
            return
        idle = [c for c in self._connections.values() if c.in_flight == 0]
        idle.sort(key=lambda c: c.last_used)
        for connection in idle[:excess]:
            self._retire(connection)

    async def _acquire(self, spec: ServerSpec, attempt: Attempt) -> _Connection:
        key = spec.connection_key()
        current = self._connections.get(spec.name)
        if current is not None and current.key == key and current.alive:
            return current
        lock = self._opening.setdefault(spec.name, anyio.Lock())
        async with lock:
            current = self._connections.get(spec.name)
            if current is not None and current.key == key and current.alive:
                return current
            attempt.check()  # the calls queued behind a failed connect fail fast, not one by one
            if current is not None:
                await self.close(spec.name)
            connection = _Connection(spec=spec, key=key, limiter=anyio.CapacityLimiter(self._concurrency))
            if self._group is None:
                raise RuntimeError("UpstreamPool used outside its 'async with' block")
            if self._connect_check is not None:
                # Policy again before every connection (a name re-pointed at a private address
                # since registration); a refusal is ours, not the server's: no circuit failure.
                try:
                    await self._connect_check(spec)
                except InvalidSpecError as exc:
                    raise UpstreamError(f"refused to connect to {spec.name}: {exc}") from None
            self._connect_attempts[spec.name] = self._connect_attempts.get(spec.name, 0) + 1
            try:
                # The session task outlives this request: it must not carry its request id or span.
                with detached():
                    await self._group.start(self._serve, connection)
            except Exception as exc:
                self._discovered.pop(spec.name, None)
                reason = connect_error(exc)
                attempt.failed(f"cannot connect: {reason}")
                raise UpstreamError(f"cannot connect to {spec.name}: {reason}") from exc
            self._connections[spec.name] = connection
            if len(self._connections) > self._max_sessions:
                self._shrink()
            return connection

    async def _serve(self, connection: _Connection, *, task_status: TaskStatus[None]) -> None:
        """Own one client session from connect to close. Errors before `started` reach the
        caller of `start`; later ones are logged and end only this session."""
        spec = connection.spec
        started = False
        # The SDK's discovery probe has its own fixed timeout; bound the whole connect ourselves.
        # The scope wraps the client so both are entered and left in this task; once connected,
        # its deadline is lifted.
        deadline = anyio.CancelScope(deadline=anyio.current_time() + self._connect_timeout)
        known = self._discovered.get(spec.name)
        if known is not None and known.key != connection.key:
            known = None
        try:
            with deadline:
                client = Client(
                    _transport(spec, self._connect_timeout, self.max_result_bytes),
                    read_timeout_seconds=self._connect_timeout,
                    message_handler=self._message_handler(spec.name),
                    cache=None,  # the registry is our cache; tools/list must reach the server
                    mode=known.version if known is not None else "auto",
                    prior_discover=known.result if known is not None else None,
                )
                async with client:
                    deadline.deadline = math.inf
                    discovered = client.session.discover_result
                    if known is None and discovered is not None:
                        self._discovered[spec.name] = _Discovered(
                            connection.key, client.protocol_version, discovered
                        )
                    connection.client = client
                    # A session opened while the pool is full is likely to be closed soon (a
                    # bulk sync cycling through more servers than the cap): it opens its
                    # list_changed stream only once a call uses it, not for a listing.
                    if len(self._connections) < self._max_sessions:
                        connection.listen_wanted.set()
                    task_status.started()
                    started = True
                    async with anyio.create_task_group() as group:
                        if self._wants_listen(client):
                            group.start_soon(self._listen_when_wanted, connection, client)
                        await connection.stop.wait()
                        group.cancel_scope.cancel()
            if not started:
                raise TimeoutError(f"no answer to the MCP handshake within {self._connect_timeout:g}s")
        except Exception as exc:
            if not started:
                raise
            logger.warning("session to %s ended: %s", spec.name, connect_error(exc))
        finally:
            connection.done.set()

    def _wants_listen(self, client: Client) -> bool:
        tools = client.server_capabilities.tools
        return (
            self._on_tools_changed is not None
            and client.protocol_version in MODERN_PROTOCOL_VERSIONS
            and tools is not None
            and bool(tools.list_changed)
        )

    async def _listen_when_wanted(self, connection: _Connection, client: Client) -> None:
        await connection.listen_wanted.wait()
        await self._listen(client, connection.spec.name)

    async def _listen(self, client: Client, name: str) -> None:
        """2026-07-28 servers send `tools/list_changed` only on a `subscriptions/listen` stream."""
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                self._listening += 1
                try:
                    async for _event in subscription:
                        await self._tools_changed(name)
                finally:
                    self._listening -= 1
        except Exception as exc:  # losing the stream only costs us push updates; interval sync remains
            logger.info("list_changed stream of %s ended: %s", name, exc)

    def _message_handler(self, name: str) -> MessageHandlerFnT:
        async def handle(message: IncomingMessage) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                await self._tools_changed(name)
            elif isinstance(message, Exception):
                self._unreadable[name] = self._unreadable.get(name, 0) + 1
                logger.warning("upstream %s sent an unreadable message: %.200s", name, message)

        return handle

    async def _tools_changed(self, name: str) -> None:
        # Never sync inside the session's receive loop: the sync itself talks to this session.
        # A burst of notifications (the SDK may deliver one on two paths) becomes one sync.
        if self._on_tools_changed is None or self._group is None or name in self._changes_pending:
            return
        self._changes_pending.add(name)
        self._group.start_soon(self._run_tools_changed, self._on_tools_changed, name)

    async def _run_tools_changed(self, callback: ToolsChanged, name: str) -> None:
        await anyio.sleep(0.05)  # let the rest of the burst arrive and coalesce
        self._changes_pending.discard(name)
        try:
            await callback(name)
        except Exception:  # a failed re-sync must not take the pool down; the next sync retries
            logger.exception("re-sync of %s after list_changed failed", name)

    async def _reap_idle(self) -> None:
        interval = max(1.0, min(60.0, self._idle_timeout / 4))
        while True:
            await anyio.sleep(interval)
            now = time.monotonic()
            for name, connection in list(self._connections.items()):
                idle = now - connection.last_used
                if connection.in_flight == 0 and (idle > self._idle_timeout or not connection.alive):
                    await self.close(name)
