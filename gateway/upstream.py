"""Pooled MCP client sessions to upstream servers.

One long-lived session per server, reused across calls (never one process per call). Each
session lives in its own task, because the SDK's client must be entered and exited in the
same task; callers borrow it. A session whose transport died is replaced on the next use,
so a crashed stdio server is restarted then. Closing the pool closes every session, and with
it every upstream process.
"""

from __future__ import annotations

import functools
import logging
import math
import ssl
import sys
import time
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Self, TextIO

import anyio
import httpx2
import mcp_types as types
from anyio.abc import TaskGroup, TaskStatus
from mcp import Client, StdioServerParameters, stdio_client
from mcp.client.session import IncomingMessage, MessageHandlerFnT
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from registry.specs import ServerSpec, UpstreamTool

logger = logging.getLogger(__name__)

ToolsChanged = Callable[[str], Coroutine[Any, Any, None]]
_MAX_PAGES = 1000  # a server that keeps returning cursors is broken, not large


class UpstreamError(Exception):
    """An upstream could not be reached or misbehaved; the message is safe to show a client."""


@dataclass
class _Connection:
    spec: ServerSpec
    key: tuple[Any, ...]
    limiter: anyio.CapacityLimiter
    stop: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    client: Client | None = None
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0

    @property
    def alive(self) -> bool:
        return self.client is not None and not self.done.is_set() and not _transport_closed(self.client)


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


def _transport(spec: ServerSpec, timeout: float) -> AbstractAsyncContextManager[Any]:
    if spec.transport == "stdio":
        assert spec.command is not None
        params = StdioServerParameters(
            command=spec.command, args=spec.args, env=spec.env or None, cwd=spec.cwd
        )
        return stdio_client(params, errlog=_errlog())
    assert spec.url is not None
    if spec.transport == "sse":
        return sse_client(spec.url, headers=spec.headers or None, timeout=timeout)
    http = httpx2.AsyncClient(
        headers=spec.headers, timeout=httpx2.Timeout(timeout, read=None), verify=_ssl_context()
    )
    return _owned_http_transport(spec.url, http)


class _owned_http_transport:
    """Streamable HTTP transport that also closes the HTTP client it was given."""

    def __init__(self, url: str, http: httpx2.AsyncClient) -> None:
        self._http = http
        self._inner = streamable_http_client(url, http_client=http)

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
    """Sessions to upstream servers, keyed by server name, used as an async context manager."""

    def __init__(
        self,
        *,
        connect_timeout: float = 30.0,
        call_timeout: float = 60.0,
        concurrency: int = 16,
        idle_timeout: float = 600.0,
        on_tools_changed: ToolsChanged | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._call_timeout = call_timeout
        self._concurrency = concurrency
        self._idle_timeout = idle_timeout
        self._on_tools_changed = on_tools_changed
        self._connections: dict[str, _Connection] = {}
        self._opening: dict[str, anyio.Lock] = {}
        self._group: TaskGroup | None = None
        self._changes_pending: set[str] = set()

    async def __aenter__(self) -> Self:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        if self._idle_timeout > 0:
            self._group.start_soon(self._reap_idle)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close_all()
        assert self._group is not None
        self._group.cancel_scope.cancel()
        await self._group.__aexit__(None, None, None)
        self._group = None

    # -- public API ----------------------------------------------------------------------------

    async def list_tools(self, spec: ServerSpec) -> list[UpstreamTool]:
        """Every tool the server lists, following `nextCursor` until it is absent."""
        connection = await self._acquire(spec)
        tools: list[UpstreamTool] = []
        cursor: str | None = None
        try:
            async with connection.limiter:
                for _ in range(_MAX_PAGES):
                    assert connection.client is not None
                    page = await connection.client.list_tools(cursor=cursor, cache_mode="refresh")
                    tools.extend(_upstream_tool(t) for t in page.tools)
                    cursor = page.next_cursor
                    if cursor is None:  # an empty string is still a cursor
                        return tools
        except MCPError as exc:
            self._forget_if_dead(connection, exc)
            raise UpstreamError(f"{spec.name}: tools/list failed: {exc.message}") from exc
        finally:
            connection.last_used = time.monotonic()
        raise UpstreamError(f"{spec.name}: tools/list returned more than {_MAX_PAGES} pages")

    async def call_tool(
        self, spec: ServerSpec, name: str, arguments: dict[str, Any], *, time_limit: float | None = None
    ) -> types.CallToolResult:
        """Forward one call. Upstream failures raise `UpstreamError` with a message for the model."""
        limit = time_limit or self._call_timeout
        connection = await self._acquire(spec)
        connection.in_flight += 1
        try:
            async with connection.limiter:
                assert connection.client is not None
                # The SDK's own read timeout cancels the request upstream; the outer bound is a
                # safety net should a transport ignore it.
                with anyio.fail_after(limit + 5):
                    return await connection.client.call_tool(name, arguments, read_timeout_seconds=limit)
        except MCPError as exc:
            self._forget_if_dead(connection, exc)
            if exc.code == types.REQUEST_TIMEOUT:
                raise UpstreamError(f"{spec.name} did not answer {name!r} within {limit:g}s") from exc
            if exc.code == types.CONNECTION_CLOSED:
                raise UpstreamError(
                    f"{spec.name} closed the connection during {name!r} (the server may have crashed; "
                    "it is restarted on the next call)"
                ) from exc
            raise UpstreamError(f"{spec.name} rejected {name!r}: {exc.message}") from exc
        except TimeoutError as exc:  # the transport ignored the read timeout: don't trust it again
            self._drop(connection)
            raise UpstreamError(f"{spec.name} did not answer {name!r} within {limit:g}s") from exc
        except Exception as exc:  # a malformed result or a broken transport; keep serving
            if not connection.alive:
                self._drop(connection)
            raise UpstreamError(f"{spec.name} failed during {name!r}: {type(exc).__name__}: {exc}") from exc
        finally:
            connection.in_flight -= 1
            connection.last_used = time.monotonic()

    async def close(self, name: str) -> None:
        """Close the session to one server (and stop its process) and wait until it is gone."""
        connection = self._connections.pop(name, None)
        if connection is not None:
            connection.stop.set()
            with anyio.move_on_after(10):
                await connection.done.wait()

    async def close_all(self) -> None:
        async with anyio.create_task_group() as group:
            for name in list(self._connections):
                group.start_soon(self.close, name)

    def stats(self) -> dict[str, int]:
        alive = sum(1 for c in self._connections.values() if c.alive)
        return {"connections": len(self._connections), "alive": alive}

    # -- internals -----------------------------------------------------------------------------

    def _forget_if_dead(self, connection: _Connection, exc: MCPError) -> None:
        if exc.code == types.CONNECTION_CLOSED:
            self._drop(connection)

    def _drop(self, connection: _Connection) -> None:
        """Stop this connection; the next call opens a fresh one. Another task may already have
        replaced it under the same name: leave the replacement alone."""
        if self._connections.get(connection.spec.name) is connection:
            del self._connections[connection.spec.name]
        connection.stop.set()

    async def _acquire(self, spec: ServerSpec) -> _Connection:
        key = spec.connection_key()
        current = self._connections.get(spec.name)
        if current is not None and current.key == key and current.alive:
            return current
        lock = self._opening.setdefault(spec.name, anyio.Lock())
        async with lock:
            current = self._connections.get(spec.name)
            if current is not None and current.key == key and current.alive:
                return current
            if current is not None:
                await self.close(spec.name)
            connection = _Connection(spec=spec, key=key, limiter=anyio.CapacityLimiter(self._concurrency))
            if self._group is None:
                raise RuntimeError("UpstreamPool used outside its 'async with' block")
            try:
                await self._group.start(self._serve, connection)
            except Exception as exc:
                raise UpstreamError(f"cannot connect to {spec.name}: {_connect_error(exc)}") from exc
            self._connections[spec.name] = connection
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
        try:
            with deadline:
                client = Client(
                    _transport(spec, self._connect_timeout),
                    read_timeout_seconds=self._connect_timeout,
                    message_handler=self._message_handler(spec.name),
                    cache=None,  # the registry is our cache; tools/list must reach the server
                )
                async with client:
                    deadline.deadline = math.inf
                    connection.client = client
                    task_status.started()
                    started = True
                    async with anyio.create_task_group() as group:
                        if self._wants_listen(client):
                            group.start_soon(self._listen, client, spec.name)
                        await connection.stop.wait()
                        group.cancel_scope.cancel()
            if not started:
                raise TimeoutError(f"no answer to the MCP handshake within {self._connect_timeout:g}s")
        except Exception as exc:
            if not started:
                raise
            logger.warning("session to %s ended: %s", spec.name, _connect_error(exc))
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

    async def _listen(self, client: Client, name: str) -> None:
        """2026-07-28 servers send `tools/list_changed` only on a `subscriptions/listen` stream."""
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _event in subscription:
                    await self._tools_changed(name)
        except Exception as exc:  # losing the stream only costs us push updates; interval sync remains
            logger.info("list_changed stream of %s ended: %s", name, exc)

    def _message_handler(self, name: str) -> MessageHandlerFnT:
        async def handle(message: IncomingMessage) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                await self._tools_changed(name)
            elif isinstance(message, Exception):
                logger.debug("upstream %s sent an unreadable message: %s", name, message)

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


def _connect_error(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.message
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename or exc}"
    return str(exc) or type(exc).__name__
