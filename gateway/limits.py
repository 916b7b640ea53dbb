"""Request size limit for every route: a clear 413 before the body is parsed or stored.

A pure ASGI middleware (the MCP endpoint streams its responses): a declared Content-Length
over the limit is refused at once; a chunked body is counted as it arrives and refused the
moment it passes the limit, so a hostile client cannot make the gateway buffer gigabytes.
/mcp gets a JSON-RPC error body (clients parse those), other routes the REST error shape.
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    pass


class RequestSizeLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send)
            return
        received = 0
        too_large = False  # the body passed the limit: whatever the app answers, we answer 413
        answered = False

        async def counted_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered
            if not too_large:
                answered = answered or message["type"] == "http.response.start"
                await send(message)
            elif not answered:  # an error page the app made from our exception: replace it
                answered = True
                await self._refuse(scope, send)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            if not answered:
                await self._refuse(scope, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"request body too large: the limit is {self.max_bytes} bytes (TOOLGATE_MAX_REQUEST_BYTES)"
        path: str = scope.get("path", "")
        if path == "/mcp" or path.startswith("/mcp/"):
            payload: dict[str, object] = {
                "jsonrpc": "2.0",
                "id": None,
                "error": {"code": -32600, "message": message},
            }
        else:
            payload = {"detail": message}
        body = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
