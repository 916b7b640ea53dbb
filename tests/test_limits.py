"""The request size limit: declared and chunked bodies, MCP and REST error shapes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.limits import RequestSizeLimit

pytestmark = pytest.mark.anyio
LIMIT = 1000
seen: list[int] = []


async def echo_size(request: Request) -> JSONResponse:
    body = await request.body()
    seen.append(len(body))
    return JSONResponse({"bytes": len(body)})


app = RequestSizeLimit(
    Starlette(
        routes=[
            Route("/admin/import", echo_size, methods=["POST"]),
            Route("/mcp/", echo_size, methods=["POST"]),
        ]
    ),
    max_bytes=LIMIT,
)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    seen.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        yield http


async def test_bodies_within_the_limit_pass(client: httpx.AsyncClient) -> None:
    response = await client.post("/admin/import", content=b"x" * LIMIT)
    assert response.json() == {"bytes": LIMIT}


async def test_a_declared_oversized_body_is_refused_before_the_app_reads_it(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/admin/import", content=b"x" * (LIMIT + 1))
    assert response.status_code == 413
    assert "TOOLGATE_MAX_REQUEST_BYTES" in response.json()["detail"]
    assert seen == []


async def test_a_chunked_body_is_cut_off_when_it_passes_the_limit(client: httpx.AsyncClient) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(100):
            sent += 300
            yield b"y" * 300

    response = await client.post("/admin/import", content=chunks())
    assert response.status_code == 413
    assert seen == []  # the route never got a body


async def test_mcp_gets_a_json_rpc_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/mcp/", content=b"{" * (LIMIT * 2))
    assert response.status_code == 413
    error = response.json()
    assert error["jsonrpc"] == "2.0"
    assert error["id"] is None
    assert error["error"]["code"] == -32600
