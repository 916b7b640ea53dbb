"""GET /admin/upstreams and POST /admin/upstreams/{name}/reset, in process, with a real HTTP
upstream that goes down and comes back on the same port."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.app import create_app
from gateway.services import GatewayService
from gateway.settings import Settings
from gateway.upstream import UpstreamError
from registry.specs import ServerSpec
from tests.support import PYTHON, ServerProcess

pytestmark = pytest.mark.anyio


def echo_http(port: int = 0) -> ServerProcess:
    return ServerProcess(
        [PYTHON, "-m", "tests.servers.echo_server", "--transport", "http", "--port", str(port)]
    )


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    running = [echo_http()]
    try:
        yield running
    finally:
        for server in running:
            server.stop()


@pytest.fixture
async def app_client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, GatewayService]]:
    # The runtime builds the pool with the default breaker: 5 failures, 30 s cool-down.
    settings = Settings(
        data_dir=tmp_path / "data",
        sync_interval_s=0,
        auth="off",
        connect_timeout_s=5,
        upstream_allow_private="127.0.0.1",  # the test upstream is on loopback
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            yield client, app.state.service


def by_name(listed: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in listed}


async def test_circuit_state_is_visible_and_resettable(
    app_client: tuple[httpx.AsyncClient, GatewayService], servers: list[ServerProcess]
) -> None:
    http, service = app_client
    body = {"name": "web", "transport": "http", "url": servers[0].url}
    created = await http.post("/admin/servers", json=body)
    assert created.status_code == 201, created.text
    spec = ServerSpec.model_validate(body)

    web = by_name((await http.get("/admin/upstreams")).json())["web"]
    assert web["enabled"] is True
    assert (web["connected"], web["alive"], web["in_flight"], web["waiting"]) == (True, True, 0, 0)
    assert web["circuit"] == {
        "state": "closed",
        "consecutive_failures": 0,
        "opened_at": None,
        "retry_in_s": None,
        "last_error": None,
    }

    servers[0].stop()
    for _ in range(5):
        with pytest.raises(UpstreamError):
            await service.pool.call_tool(spec, "echo", {"text": "x"})
    with pytest.raises(UpstreamError, match=r"web is unavailable: 5 consecutive failures; retrying in 30s"):
        await service.pool.call_tool(spec, "echo", {"text": "x"})

    web = (await http.get("/admin/upstreams/web")).json()
    assert web["circuit"]["state"] == "open"
    assert web["circuit"]["consecutive_failures"] == 5
    assert 25 < web["circuit"]["retry_in_s"] <= 30
    assert web["circuit"]["opened_at"] is not None
    assert "cannot connect" in web["circuit"]["last_error"]
    listed = by_name((await http.get("/admin/upstreams")).json())["web"]
    assert {**listed["circuit"], "retry_in_s": None} == {**web["circuit"], "retry_in_s": None}

    servers.append(echo_http(servers[0].port))  # fixed; the operator does not wait 30 s
    reset = await http.post("/admin/upstreams/web/reset")
    assert reset.status_code == 200
    assert reset.json()["circuit"]["state"] == "closed"
    assert reset.json()["circuit"]["consecutive_failures"] == 0
    result = await service.pool.call_tool(spec, "echo", {"text": "back"})
    assert result.content[0].text == "back"  # type: ignore[union-attr]
    assert (await http.get("/admin/upstreams/web")).json()["alive"] is True


async def test_unknown_upstreams_are_404(app_client: tuple[httpx.AsyncClient, GatewayService]) -> None:
    http, _service = app_client
    assert (await http.get("/admin/upstreams")).json() == []
    for response in (await http.get("/admin/upstreams/nope"), await http.post("/admin/upstreams/nope/reset")):
        assert response.status_code == 404
        assert response.json()["detail"] == "no server named 'nope'"
