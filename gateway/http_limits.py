"""An upstream HTTP transport that refuses JSON response bodies over a byte limit.

The SDK reads a streamable HTTP server's `application/json` answer whole into memory (its SSE
events are capped, JSON bodies are not): a 50 MB answer costs the gateway ~330 MB of RSS
before anything can judge it. This transport counts the body as it arrives and stops reading
at the limit; the SDK turns the stream error into a JSON-RPC error for that request only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx2

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
