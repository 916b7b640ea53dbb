"""The console's parts that need no browser: the auth cookie contract, the figures read from
the Prometheus series, the registration form, the found/called counters."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from gateway.console import router
from gateway.console.cookie import SESSION_COOKIE, authorization, is_open, login_redirect, session_key
from gateway.console.figures import exposition, figures, quantile
from gateway.console.servers import spec_from_form
from gateway.metrics import GatewayMetrics
from gateway.tool_stats import ToolCounts, ToolStats
from registry.errors import InvalidSpecError


def scope(path: str, method: str = "GET", **headers: str) -> dict[str, Any]:
    raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    return {"type": "http", "path": path, "method": method, "headers": raw}


def test_the_session_cookie_is_a_credential_on_console_paths_only() -> None:
    cookie = f"other=1; {SESSION_COOKIE}=tg_admin_key; {SESSION_COOKIE}_csrf=abc"
    assert authorization(scope("/console/servers", cookie=cookie)) == "Bearer tg_admin_key"
    assert authorization(scope("/console", cookie=cookie)) == "Bearer tg_admin_key"
    for path in ("/admin/servers", "/mcp", "/consoles", "/metrics"):
        assert authorization(scope(path, cookie=cookie)) is None
    # A header of the request's own wins; a broken cookie header is no credential.
    assert (
        authorization(scope("/console/tools", cookie=cookie, authorization="Bearer other")) == "Bearer other"
    )
    assert session_key(scope("/console/tools", cookie='toolgate_console="unterminated')) is None
    assert session_key(scope("/console/tools", cookie=f"{SESSION_COOKIE}=")) is None


def test_open_paths_and_the_login_redirect() -> None:
    assert is_open("/console/login")
    assert is_open("/console/static/console.css")
    assert not is_open("/console/servers")
    assert not is_open("/console/loginx")
    assert login_redirect(scope("/console/tools/3")) == "/console/login?next=/console/tools/3"
    assert login_redirect(scope("/console/api/metrics")) is None  # scripts get the 401
    assert login_redirect(scope("/console/servers", method="POST")) is None
    assert login_redirect(scope("/admin/servers")) is None


def test_figures_read_the_gateway_series() -> None:
    metrics = GatewayMetrics()
    metrics.http_requests.labels("GET", "/admin/servers", "200").inc(3)
    metrics.http_requests.labels("POST", "/mcp", "500").inc()
    for seconds in (0.002, 0.004, 0.02):
        metrics.observe_find(seconds, {"prepare": seconds / 2, "search": seconds / 4})
    metrics.observe_upstream("time", "ok", 0.01)
    metrics.observe_upstream("time", "error", 0.5)
    metrics.observe_upstream("echo", "tool_error", 0.02)
    app = FastAPI()
    assert figures(exposition(app)) == {"enabled": False, "at": pytest.approx(figures(None)["at"], abs=5)}
    app.state.metrics = metrics
    shown = figures(exposition(app))
    assert shown["enabled"] is True
    assert shown["requests"] == 4
    assert shown["by_status"] == {"2xx": 3, "5xx": 1}
    assert shown["find"]["count"] == 3
    assert shown["find"]["sum"] == pytest.approx(0.026)
    assert 0.0025 <= shown["find"]["p50"] <= 0.005
    assert set(shown["stages"]) == {"prepare", "search"}
    assert shown["stages"]["search"]["count"] == 3
    assert shown["upstream"] == {"echo": {"tool_error": 1}, "time": {"ok": 1, "error": 1}}
    assert shown["upstream_errors"] == 1


def test_quantile_interpolates_within_a_bucket() -> None:
    buckets = [(0.1, 0.0), (0.2, 10.0), (0.4, 20.0), (float("inf"), 20.0)]
    assert quantile(buckets, 0.5) == pytest.approx(0.2)
    assert quantile(buckets, 0.25) == pytest.approx(0.15)
    assert quantile(buckets, 0.75) == pytest.approx(0.3)
    assert quantile([(0.1, 0.0), (float("inf"), 0.0)], 0.5) is None
    assert quantile([(0.1, 1.0), (float("inf"), 5.0)], 0.9) == 0.1  # past the last bound


def test_the_live_page_says_when_metrics_are_off() -> None:
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        page = client.get("/console/metrics")
        assert page.status_code == 200
        assert "Metrics are off" in page.text
        assert client.get("/console/api/metrics").json()["enabled"] is False


def test_the_registration_form_becomes_a_server_spec() -> None:
    stdio = spec_from_form(
        {
            "name": "files",
            "transport": "stdio",
            "command": "npx",
            "args": "-y '@scope/server files' --root /tmp",
            "env": "TOKEN=a=b\n\nDEBUG=1",
            "category": "",
            "url": "ignored for stdio",
        }
    )
    assert (stdio.command, stdio.args) == ("npx", ["-y", "@scope/server files", "--root", "/tmp"])
    assert stdio.env == {"TOKEN": "a=b", "DEBUG": "1"}
    assert (stdio.category, stdio.url) == (None, None)
    remote = spec_from_form(
        {"name": "remote", "transport": "http", "url": "https://example.com/mcp", "headers": "X-Key: s3cret"}
    )
    assert (remote.transport, remote.headers, remote.command) == ("http", {"X-Key": "s3cret"}, None)
    with pytest.raises(InvalidSpecError, match="NAME=value"):
        spec_from_form({"name": "bad", "command": "x", "env": "no separator"})


def test_tool_stats_count_each_search_once_per_tool() -> None:
    stats = ToolStats()
    stats.record_found(["a", "b", "a"])
    stats.record_found(["a"])
    stats.record_called("a")
    assert stats.counts("a") == ToolCounts(found=2, called=1)
    assert stats.counts("b") == ToolCounts(found=1, called=0)
    assert stats.counts("never") == ToolCounts()
    assert set(stats.snapshot()) == {"a", "b"}
