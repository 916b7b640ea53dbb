"""The upstream HTTP transport: JSON response bodies capped at a byte limit, requests sent in
one write.

The SDK reads a streamable HTTP server's `application/json` answer whole into memory (its SSE
events are capped, JSON bodies are not): a 50 MB answer costs the gateway ~330 MB of RSS
before anything can judge it. This transport counts the body as it arrives and stops reading
at the limit; the SDK turns the stream error into a JSON-RPC error for that request only.

httpcore writes a request's headers and its body with one socket send each. On loopback and
in VMs a send is the costliest step of a small request (it runs the receiver's TCP stack and
wakes it), so the connections' writes are held until the first read and sent together.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpcore2
import httpx2

logger = logging.getLogger(__name__)
_FLUSH_AT = 64 * 1024  # a large body is sent as it comes, not held whole

TOO_LARGE_MARKER = "response body over the limit"


class ResponseTooLarge(httpx2.StreamError):
    """Raised while reading a JSON body past the limit (a StreamError, which the SDK handles)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{TOO_LARGE_MARKER} of {limit} bytes")


class _CountedStream(httpx2.AsyncByteStream):
    def __init__(self, inner: httpx2.AsyncByteStream, limit: int, *, refuse: bool = False) -> None:
        self._inner = inner
        self._limit = limit
        self._refuse = refuse  # the declared length is already over: read nothing

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._refuse:
            raise ResponseTooLarge(self._limit)
        seen = 0
        async for chunk in self._inner:
            seen += len(chunk)
            if seen > self._limit:
                raise ResponseTooLarge(self._limit)
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class CappedTransport(httpx2.AsyncBaseTransport):
    """Delegates to a normal transport; caps JSON bodies (SSE streams are long-lived and the
    SDK caps their events itself)."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, max_body_bytes: int) -> None:
        self._inner = inner
        self._limit = max_body_bytes

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        response = await self._inner.handle_async_request(request)
        if not response.headers.get("content-type", "").lower().startswith("application/json"):
            return response
        declared = response.headers.get("content-length", "")
        stream = response.stream
        assert isinstance(stream, httpx2.AsyncByteStream)
        refuse = declared.isdigit() and int(declared) > self._limit
        return httpx2.Response(
            response.status_code,
            headers=response.headers,
            stream=_CountedStream(stream, self._limit, refuse=refuse),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CoalescingStream(httpcore2.AsyncNetworkStream):
    """Holds writes until the next read (or until `_FLUSH_AT` bytes are held)."""

    def __init__(self, inner: httpcore2.AsyncNetworkStream) -> None:
        self._inner = inner
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._timeout: float | None = None

    # The `timeout` parameters are httpcore's interface (ASYNC109 does not apply).
    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        self._held.append(buffer)
        self._held_bytes += len(buffer)
        self._timeout = timeout
        if self._held_bytes >= _FLUSH_AT:
            await self._flush()

    async def _flush(self) -> None:
        data = b"".join(self._held)
        self._held.clear()
        self._held_bytes = 0
        await self._inner.write(data, timeout=self._timeout)

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        if self._held:
            # As httpcore does for its own writes: a server that closed early may still have
            # sent a response (an error status); the read below says what happened.
            with contextlib.suppress(httpcore2.WriteError):
                await self._flush()
        return await self._inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._held.clear()
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore2.AsyncNetworkStream:
        if self._held:
            await self._flush()
        return _CoalescingStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _CoalescingBackend(httpcore2.AsyncNetworkBackend):
    def __init__(self, inner: httpcore2.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _CoalescingStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return _CoalescingStream(await self._inner.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def coalescing_transport(verify: ssl.SSLContext) -> httpx2.AsyncHTTPTransport:
    """An httpx2 transport whose connections send each request in one write. httpx2 takes no
    network backend, so it is set on the pool it built; should a future httpx2 lay its pool
    out differently, the plain transport is used (slower, never wrong)."""
    transport = httpx2.AsyncHTTPTransport(verify=verify)
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(pool, httpcore2.AsyncConnectionPool) and isinstance(backend, httpcore2.AsyncNetworkBackend):
        pool._network_backend = _CoalescingBackend(backend)
    else:
        logger.debug("httpx2 internals changed: upstream requests are sent unbuffered")
    return transport
