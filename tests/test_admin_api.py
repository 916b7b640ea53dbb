"""The admin REST API and the gateway service, in process, against real upstream servers."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from gateway.app import create_app
from gateway.catalog import SearchFilters, SearchHit
from gateway.services import GatewayService
from gateway.settings import Settings
from registry.specs import ServerSpec
from tests.support import PYTHON, ROOT, children_of, wait_until

pytestmark = pytest.mark.anyio


def echo_body(name: str = "echo", *extra: str) -> dict[str, Any]:
    return {
        "name": name,
        "transport": "stdio",
        "command": PYTHON,
        "args": ["-m", "tests.servers.echo_server", "--name", name, *extra],
        "cwd": str(ROOT),
        "env": {"API_TOKEN": "very-secret-value"},
        "description": "Echoes text and adds numbers",
    }


class Gateway:
    def __init__(self, client: httpx.AsyncClient, service: GatewayService) -> None:
        self.http = client
        self.service = service

    async def find(self, query: str, limit: int, filters: SearchFilters | None = None) -> list[SearchHit]:
        return (await self.service.find_tools(query, limit, filters)).hits


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    # Auth is not the point here (tests/test_auth.py): loopback with auth off. Loopback URL
    # upstreams are allowed: the SSRF guard has its own tests (tests/test_upstream_policy.py).
    settings = Settings(
        data_dir=tmp_path / "data",
        sync_interval_s=0,
        connect_timeout_s=20,
        call_timeout_s=10,
        auth="off",
        upstream_allow_private="127.0.0.0/8",
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(client, app.state.service)


async def test_health_and_openapi(gateway: Gateway) -> None:
    assert (await gateway.http.get("/healthz")).json() == {"status": "ok"}
    ready = await gateway.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] == "ok"
    schema = (await gateway.http.get("/openapi.json")).json()
    assert "/admin/servers" in schema["paths"]
    assert "/admin/import" in schema["paths"]
    assert "/admin/tools/{tool_id}/approve" in schema["paths"]
    assert "/admin/tools/{tool_id}/reject" in schema["paths"]


async def test_register_sync_and_hide_secrets(gateway: Gateway) -> None:
    response = await gateway.http.post("/admin/servers", json=echo_body())
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["sync"]["created"] == body["tool_count"] >= 7
    assert body["env_keys"] == ["API_TOKEN"]
    assert (body["flagged_count"], body["pending_count"], body["sync"]["flagged"]) == (0, 0, 0)
    assert "very-secret-value" not in response.text
    listed = (await gateway.http.get("/admin/servers")).text
    assert "very-secret-value" not in listed

    tools = (await gateway.http.get("/admin/tools", params={"server": "echo"})).json()
    assert tools["total"] == body["tool_count"]
    assert {t["exposed_name"] for t in tools["tools"]} >= {"echo__echo", "echo__add"}
    # Every definition is scanned at sync: the echo server's are clean, so approved as listed.
    assert all(t["findings"] == [] and t["approved"] and t["pending"] is None for t in tools["tools"])
    hits = await gateway.find("add two numbers together", 3)
    assert hits[0].tool.exposed_name == "echo__add"


async def test_bad_input_statuses(gateway: Gateway) -> None:
    assert (await gateway.http.post("/admin/servers", json=echo_body())).status_code == 201
    duplicate = await gateway.http.post("/admin/servers", json=echo_body())
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["detail"]

    missing = await gateway.http.post("/admin/servers", json={"name": "x", "transport": "http"})
    assert missing.status_code == 422
    assert "url" in missing.text
    bad_type = await gateway.http.post("/admin/servers", json={**echo_body("y"), "args": "nope"})
    assert bad_type.status_code == 422
    assert bad_type.json()["detail"][0]["loc"] == ["body", "args"]
    bad_name = await gateway.http.post("/admin/servers", json=echo_body("has space"))
    assert bad_name.status_code == 422

    assert (await gateway.http.get("/admin/servers/999")).status_code == 404
    assert (await gateway.http.patch("/admin/servers/999", json={"enabled": False})).status_code == 404
    assert (await gateway.http.delete("/admin/servers/999")).status_code == 404
    assert (await gateway.http.post("/admin/servers/999/sync")).status_code == 404
    assert (await gateway.http.get("/admin/tools/999")).status_code == 404
    assert (await gateway.http.get("/admin/tools", params={"server": "ghost"})).status_code == 404
    bad_patch = await gateway.http.patch("/admin/servers/1", json={"transport": "http"})
    assert bad_patch.status_code == 422
    assert [s["name"] for s in (await gateway.http.get("/admin/servers")).json()] == ["echo"]


async def test_failing_server_is_registered_with_its_error(gateway: Gateway) -> None:
    await gateway.http.post("/admin/servers", json=echo_body())
    broken = await gateway.http.post(
        "/admin/servers", json={"name": "broken", "command": "/nonexistent/toolgate-binary"}
    )
    assert broken.status_code == 201
    assert broken.json()["status"] == "error"
    assert "command not found" in broken.json()["last_error"]
    refused = await gateway.http.post(
        "/admin/servers", json={"name": "refused", "transport": "http", "url": "http://127.0.0.1:9/mcp"}
    )
    assert refused.json()["status"] == "error"

    reports = (await gateway.http.post("/admin/sync")).json()
    assert {r["server"]: r["ok"] for r in reports} == {"echo": True, "broken": False, "refused": False}
    result = await gateway.service.call_tool("echo__echo", {"text": "others keep working"})
    assert result.content[0].text == "others keep working"  # type: ignore[union-attr]


async def test_forwarding_errors_are_tool_results(gateway: Gateway) -> None:
    await gateway.http.post("/admin/servers", json=echo_body())
    call = gateway.service.call_tool

    unknown = await call("echo__ecoh", {"text": "x"})
    assert unknown.is_error
    assert "echo__echo" in unknown.content[0].text  # type: ignore[union-attr]
    invalid = await call("echo__add", {"a": 1, "b": "two"})
    assert invalid.is_error
    assert "at b" in invalid.content[0].text  # type: ignore[union-attr]
    assert "integer" in invalid.content[0].text  # type: ignore[union-attr]
    extra = await call("echo__echo", {"text": "x", "colour": "red"})
    assert extra.is_error
    upstream = await call("echo__fail", {"message": "quota exceeded"})
    assert upstream.is_error
    assert "quota exceeded" in upstream.content[0].text  # type: ignore[union-attr]
    crashed = await call("echo__crash", {})
    assert crashed.is_error
    assert "crashed" in crashed.content[0].text  # type: ignore[union-attr]
    bad = await call("echo__bad_output", {})
    assert bad.is_error
    ok = await call("echo__add", {"a": 1, "b": 2})
    assert ok.structured_content == {"sum": 3}
    assert not ok.is_error


async def test_enable_disable_and_delete(gateway: Gateway) -> None:
    server = (await gateway.http.post("/admin/servers", json=echo_body())).json()
    tools = (await gateway.http.get("/admin/tools", params={"q": "echo__echo"})).json()["tools"]
    tool_id = tools[0]["id"]

    patched = await gateway.http.patch(f"/admin/tools/{tool_id}", json={"enabled": False})
    assert patched.json()["enabled"] is False
    assert (await gateway.service.call_tool("echo__echo", {"text": "x"})).is_error
    assert all(h.tool.exposed_name != "echo__echo" for h in await gateway.find("echo text", 10))
    await gateway.http.patch(f"/admin/tools/{tool_id}", json={"enabled": True})
    assert not (await gateway.service.call_tool("echo__echo", {"text": "x"})).is_error

    await gateway.http.patch(f"/admin/servers/{server['id']}", json={"enabled": False})
    assert len(gateway.service.catalog) == 0
    assert (await gateway.service.call_tool("echo__add", {"a": 1, "b": 1})).is_error
    enabled = await gateway.http.patch(f"/admin/servers/{server['id']}", json={"enabled": True})
    assert enabled.json()["sync"]["ok"] is True
    assert not (await gateway.service.call_tool("echo__add", {"a": 1, "b": 1})).is_error

    assert children_of(os.getpid())
    assert (await gateway.http.delete(f"/admin/servers/{server['id']}")).status_code == 204
    assert (await gateway.http.get("/admin/tools")).json()["total"] == 0
    assert len(gateway.service.catalog) == 0
    assert not children_of(os.getpid())  # the upstream process was stopped


async def test_import_is_idempotent_and_atomic(gateway: Gateway) -> None:
    document = {"mcpServers": {"one": {k: v for k, v in echo_body("one").items() if k != "name"}}}
    first = await gateway.http.post("/admin/import", json=document)
    assert first.status_code == 200, first.text
    assert first.json()["created"] == ["one"]
    assert first.json()["syncs"][0]["ok"] is True
    second = await gateway.http.post("/admin/import", json=document)
    assert second.json() == {"created": [], "updated": [], "unchanged": ["one"], "syncs": []}

    bad = {"mcpServers": {"two": {"command": "x"}, "three": {"url": 5}}}
    rejected = await gateway.http.post("/admin/import", json=bad)
    assert rejected.status_code == 422
    assert any("'three'" in p for p in rejected.json()["problems"])
    assert [s["name"] for s in (await gateway.http.get("/admin/servers")).json()] == ["one"]
    not_object = await gateway.http.post("/admin/import", json=["x"])
    assert not_object.status_code == 422


async def test_list_changed_triggers_a_resync(gateway: Gateway) -> None:
    await gateway.http.post("/admin/servers", json=echo_body())
    assert gateway.service.catalog.get("echo__surprise") is None
    await gateway.service.call_tool("echo__toggle_tool", {})
    await wait_until(lambda: gateway.service.catalog.get("echo__surprise") is not None)
    tools = (await gateway.http.get("/admin/tools", params={"q": "echo__surprise"})).json()
    assert tools["total"] == 1


async def test_register_sync_call_on_each_database(database_url: str, tmp_path: Path) -> None:
    """The whole registry path on SQLite and on PostgreSQL, through a real gateway app."""
    settings = Settings(data_dir=tmp_path / "d", database_url=database_url, sync_interval_s=0, auth="off")
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            created = await client.post("/admin/servers", json=echo_body())
            assert created.status_code == 201
            assert created.json()["status"] == "ok"
            assert (await client.post("/admin/servers", json=echo_body())).status_code == 409
            result = await app.state.service.call_tool("echo__add", {"a": 20, "b": 22})
            assert result.structured_content == {"sum": 42}
            ready = (await client.get("/readyz")).json()
            assert ready["database"] == "ok"
    # A second start over the same database sees the registry as it was left.
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert app.state.service.catalog.get("echo__add") is not None


async def test_periodic_sync_runs_on_its_interval(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", sync_interval_s=0.3)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        service: GatewayService = app.state.service
        server, _ = await service.register_server(ServerSpec.model_validate(echo_body()))
        first = server.last_sync_at
        assert first is not None

        async def later() -> bool:
            current = (await service.registry.get_server(server.id)).last_sync_at
            return current is not None and current > first

        with anyio.fail_after(15):
            while not await later():  # noqa: ASYNC110 - polling the database, bounded
                await anyio.sleep(0.1)


async def test_index_follows_the_registry_incrementally(gateway: Gateway) -> None:
    """Only new or changed tools are embedded; deleted ones leave results at once; disabled
    ones stay indexed and are filtered inside the query."""
    server = (await gateway.http.post("/admin/servers", json=echo_body())).json()
    stats = (await gateway.http.get("/admin/index")).json()
    assert stats["tools"] == stats["embedded_since_start"] == server["tool_count"]
    assert stats["pending"] == 0

    await gateway.http.post(f"/admin/servers/{server['id']}/sync")  # nothing changed upstream
    assert (await gateway.http.get("/admin/index")).json()["embedded_since_start"] == server["tool_count"]

    await gateway.service.call_tool("echo__toggle_tool", {})  # the upstream adds "surprise"
    catalog = gateway.service.catalog
    await wait_until(lambda: "echo__surprise" in catalog.retriever and catalog.indexing == 0)
    await wait_until(lambda: catalog.embedded > server["tool_count"])
    stats = (await gateway.http.get("/admin/index")).json()
    assert stats["embedded_since_start"] == server["tool_count"] + 1  # just the new tool
    hits = await gateway.find("a tool that comes and goes", 3)
    assert hits[0].tool.exposed_name == "echo__surprise"

    await gateway.service.call_tool("echo__toggle_tool", {})  # ... and removes it again
    await wait_until(lambda: gateway.service.catalog.get("echo__surprise") is None)
    hits = await gateway.find("a tool that comes and goes", 10)
    assert "echo__surprise" not in {h.tool.exposed_name for h in hits}

    await gateway.http.patch(f"/admin/servers/{server['id']}", json={"enabled": False})
    assert await gateway.find("add two numbers", 5) == []
    disabled = (await gateway.http.get("/admin/index")).json()
    assert disabled["tools"] == server["tool_count"]  # still indexed, filtered in the query
    assert disabled["servable"] == 0
    await gateway.http.patch(f"/admin/servers/{server['id']}", json={"enabled": True})
    hits = await gateway.find("add two numbers", 5)
    assert hits[0].tool.exposed_name == "echo__add"
    assert (await gateway.http.get("/admin/index")).json()["embedded_since_start"] == stats[
        "embedded_since_start"
    ]  # re-enabling re-embeds nothing

    await gateway.http.delete(f"/admin/servers/{server['id']}")
    assert (await gateway.http.get("/admin/index")).json()["tools"] == 0
    assert await gateway.find("add two numbers", 5) == []


async def test_find_tools_filters_in_process(gateway: Gateway) -> None:
    await gateway.http.post("/admin/servers", json=echo_body("alpha"))
    await gateway.http.post("/admin/servers", json={**echo_body("beta"), "category": "math"})
    only_beta = await gateway.find("add two numbers", 5, SearchFilters(server="beta"))
    assert only_beta
    assert {h.tool.server for h in only_beta} == {"beta"}
    math = await gateway.find("add two numbers", 5, SearchFilters(category="math"))
    assert {h.tool.server for h in math} == {"beta"}
    assert await gateway.find("add", 5, SearchFilters(category="nope")) == []
    assert await gateway.find("add", 5, SearchFilters(server="nope")) == []
    for hit in only_beta:
        assert hit.why
        assert set(hit.stages) >= {"dense", "lexical"}


async def test_adaptive_cut_returns_a_prefix(gateway: Gateway) -> None:
    await gateway.http.post("/admin/servers", json=echo_body("echo", "--extra-tools", "20"))
    full = await gateway.find("add two numbers", 15)
    cut = (await gateway.service.find_tools("add two numbers", 15, adaptive=True)).hits
    assert 1 <= len(cut) < len(full) == 15  # the generated tools score far below `add`
    assert [h.tool.exposed_name for h in cut] == [h.tool.exposed_name for h in full][: len(cut)]
    assert cut[0].tool.exposed_name == "echo__add"
