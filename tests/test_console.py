"""The operators' console end to end: the gateway app served by uvicorn on a free port, real
MCP servers registered through the console's own forms, a real MCP client making
conversations, and every page driven in a real headless Chromium. Each page is saved as a
screenshot under docs/img/ for the README."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from mcp import Client
from playwright.sync_api import expect

from gateway.app import create_app
from gateway.services import GatewayService
from gateway.settings import Settings
from gateway.tool_stats import ToolStats
from tests.support import PYTHON, ROOT, console_script, free_port, require

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = ROOT / "docs" / "img"
TIMEOUT_MS = 30_000


class ConsoleGateway:
    """The gateway app in this process (so a test can see its state), served over real HTTP."""

    def __init__(self, data_dir: Path, **overrides: Any) -> None:
        self.port = free_port()
        options: dict[str, Any] = {"auth": "off", "sync_interval_s": 0, "log_level": "WARNING", **overrides}
        settings = Settings(data_dir=data_dir, port=self.port, **options)
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="console-gateway", daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base, timeout=60)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                raise RuntimeError("the gateway thread exited during start")
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    @property
    def service(self) -> GatewayService:
        service: GatewayService = self.app.state.service
        return service

    def url(self, path: str) -> str:
        return f"{self.base}/console{path}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.http.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleGateway]:
    running = ConsoleGateway(tmp_path_factory.mktemp("console"))
    if not isinstance(getattr(running.service, "tool_stats", None), ToolStats):
        running.service.tool_stats = ToolStats()  # type: ignore[attr-defined]  # see docs/console.md
    yield running
    running.stop()


@pytest.fixture(scope="module")
def page(gateway: ConsoleGateway) -> Iterator[Any]:
    require(CHROMIUM.exists(), f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        tab = context.new_page()
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        # Console errors include Content-Security-Policy violations (an inline script or style).
        tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        # The console must work offline: any request that leaves the gateway fails the test.
        outside: list[str] = []

        def refuse(route: Any) -> None:
            outside.append(route.request.url)
            route.abort()

        context.route(re.compile(rf"^(?!http://127\.0\.0\.1:{gateway.port}/).*"), refuse)
        yield tab
        browser.close()
    assert not errors, f"JavaScript errors: {errors}"
    assert not outside, f"the console fetched from elsewhere: {outside}"


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"console-{name}.png"), full_page=True)


def expect_notice(page: Any, text: str, *, prefix: bool = False) -> None:
    """The one-shot notice of the page an action led to (retried until it shows)."""
    wanted = re.compile("^" + re.escape(text)) if prefix else text
    expect(page.locator("#notice")).to_have_text(wanted)


def ensure_time_server(gateway: ConsoleGateway) -> None:
    names = [s["name"] for s in gateway.http.get("/admin/servers").json()]
    if "time" not in names:
        body = {
            "name": "time",
            "command": console_script("mcp-server-time"),
            "args": ["--local-timezone", "UTC"],
        }
        assert gateway.http.post("/admin/servers", json=body).status_code == 201


# --- without a browser: the session and CSRF rules -------------------------------------------


def test_forms_need_the_csrf_token_and_the_same_origin(gateway: ConsoleGateway) -> None:
    with httpx.Client(base_url=gateway.base, timeout=30) as http:
        login = http.get("/console/login")
        assert login.status_code == 200
        token = http.cookies["toolgate_console_csrf"]
        assert "HttpOnly" in login.headers["set-cookie"]
        assert "SameSite=strict" in login.headers["set-cookie"]
        form = {"name": "nope", "command": "true"}
        assert http.post("/console/servers", data=form).status_code == 403  # no token
        assert http.post("/console/servers", data={**form, "csrf": "x" * 43}).status_code == 403
        foreign = http.post(
            "/console/servers", data={**form, "csrf": token}, headers={"Origin": "https://evil.example"}
        )
        assert foreign.status_code == 403
        assert "nope" not in [s["name"] for s in gateway.http.get("/admin/servers").json()]

        # Sign-in checks the key through the app's own auth (off here: any key is an admin).
        assert http.post("/console/login", data={"csrf": token, "key": ""}).status_code == 401
        signed = http.post("/console/login", data={"csrf": token, "key": "tg_some_key"})
        assert signed.status_code == 303
        (cookie,) = [c for c in signed.headers.get_list("set-cookie") if c.startswith("toolgate_console=")]
        assert cookie.startswith("toolgate_console=tg_some_key;")
        for attribute in ("HttpOnly", "Path=/console", "SameSite=strict", "Max-Age=43200"):
            assert attribute in cookie
        assert http.get("/console/api/whoami").json()["role"] == "admin"
        page = http.get("/console/servers")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert http.get("/console/static/../app.py").status_code == 404
        assert http.get("/console/static/console.css").headers["content-type"].startswith("text/css")


ADMIN_KEY = "tg_" + "a" * 43


def test_sign_in_with_an_admin_key_when_auth_is_required(tmp_path: Path) -> None:
    running = ConsoleGateway(tmp_path, auth="required", admin_key=ADMIN_KEY)
    try:
        with httpx.Client(base_url=running.base, timeout=30) as http:
            refused = http.get("/console/servers")
            assert refused.status_code in (303, 401)
            login = http.get("/console/login")
            assert login.status_code == 200
            token = http.cookies["toolgate_console_csrf"]
            wrong = http.post("/console/login", data={"csrf": token, "key": "tg_" + "b" * 43})
            assert wrong.status_code == 401
            assert "not accepted" in wrong.text
            signed = http.post("/console/login", data={"csrf": token, "key": ADMIN_KEY, "next": "/tools"})
            assert (signed.status_code, signed.headers["location"]) == (303, "/console/tools")
            assert http.get("/console/tools").status_code == 200
            assert http.get("/console/api/whoami").json()["role"] == "admin"
            # The cookie is a credential for the console only.
            assert http.get("/admin/servers").status_code == 401
            assert http.post("/console/sync", data={}).status_code == 403  # no form token
    finally:
        running.stop()


# --- in the browser ----------------------------------------------------------------------------


def test_register_import_sync_disable_and_enable_servers(gateway: ConsoleGateway, page: Any) -> None:
    page.goto(gateway.url("/"))
    assert page.title() == "Servers · toolgate console"
    form = page.locator("#register")
    form.locator("[name=name]").fill("time")
    form.locator("[name=command]").fill(console_script("mcp-server-time"))
    form.locator("[name=args]").fill("--local-timezone UTC")
    form.locator("[name=description]").fill("Current time and time-zone conversion")
    form.locator("[name=category]").fill("time")
    form.locator("button[type=submit]").click()
    page.wait_for_url(gateway.url("/servers"))
    expect_notice(page, "registered time; synced: 2 created", prefix=True)
    row = page.locator("tr[data-server=time]")
    assert row.locator(".status").inner_text().strip() == "ok"
    assert row.locator(".tools").inner_text() == "2"
    assert row.locator(".circuit").inner_text().strip() == "closed"
    assert row.locator("td").nth(3).inner_text() != "never"  # last sync

    # A bad registration says why and writes nothing.
    page.locator("#register [name=name]").fill("time")
    page.locator("#register [name=command]").fill("mcp-server-time")
    page.locator("#register button[type=submit]").click()
    expect_notice(page, "not registered", prefix=True)
    assert page.locator("#notice.error").count() == 1

    document = {
        "mcpServers": {
            "echo": {"command": PYTHON, "args": ["-m", "tests.servers.echo_server"], "cwd": str(ROOT)}
        }
    }
    page.locator("#import [name=document]").fill(json.dumps(document))
    page.locator("#import button[type=submit]").click()
    expect_notice(page, "imported: 1 created, 0 updated, 0 unchanged")
    echo = page.locator("tr[data-server=echo]")
    assert echo.locator(".status").inner_text().strip() == "ok"
    assert int(echo.locator(".tools").inner_text()) > 0
    page.locator("#import [name=document]").fill("{not json")
    page.locator("#import button[type=submit]").click()
    expect_notice(page, "nothing imported", prefix=True)

    page.once("dialog", lambda dialog: dialog.accept())
    echo.get_by_role("button", name="Disable").click()
    expect_notice(page, "echo disabled")
    assert "disabled" in page.locator("tr[data-server=echo] .status").inner_text()
    page.locator("tr[data-server=echo]").get_by_role("button", name="Enable").click()
    expect_notice(page, "echo enabled; synced", prefix=True)
    page.locator("tr[data-server=time]").get_by_role("button", name="Sync").click()
    expect_notice(page, "time: synced: 0 created, 0 updated, 0 deleted, 2 unchanged")
    servers = {s["name"]: s for s in gateway.http.get("/admin/servers").json()}
    assert servers["echo"]["enabled"] is True
    assert servers["time"]["status"] == "ok"
    shot(page, "servers")


def test_browse_filter_and_change_tools(gateway: ConsoleGateway, page: Any) -> None:
    ensure_time_server(gateway)
    stats: ToolStats = gateway.service.tool_stats  # type: ignore[attr-defined]
    stats.record_found(["time__convert_time", "time__get_current_time"])
    stats.record_found(["time__convert_time"])
    stats.record_called("time__convert_time")
    page.goto(gateway.url("/tools"))
    assert page.locator("#tools tbody tr").count() == gateway.http.get("/admin/tools").json()["total"]
    shot(page, "tools")
    page.locator("#tool-filter [name=server]").select_option("time")
    page.locator("#tool-filter button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"server=time"))
    names = page.locator("#tools tbody tr").evaluate_all("rows => rows.map(r => r.dataset.tool)")
    assert sorted(names) == ["time__convert_time", "time__get_current_time"]
    page.locator("#tool-filter [name=q]").fill("convert")
    page.locator("#tool-filter button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"q=convert"))
    assert page.locator("#tools tbody tr").evaluate_all("rows => rows.map(r => r.dataset.tool)") == [
        "time__convert_time"
    ]
    row = page.locator("tr[data-tool=time__convert_time] td.num")
    assert row.all_inner_texts()[1:] == ["2", "1"]  # found, called

    page.locator("a", has_text="time__convert_time").click()
    expect(page).to_have_title("time__convert_time · toolgate console")
    assert '"source_timezone"' in page.locator("#input-schema").inner_text()
    assert page.locator("#tool-found").inner_text() == "2"
    assert page.locator("#tool-called").inner_text() == "1"
    uses = int(page.locator("#tool-uses").inner_text().split()[0])
    page.locator("#examples [name=queries]").fill(
        "what time is it in Paris when it is noon in Tokyo\nconvert 9am EST to CET"
    )
    page.locator("#examples button[type=submit]").click()
    expect_notice(page, "recorded 2 example queries for time__convert_time")
    assert int(page.locator("#tool-uses").inner_text().split()[0]) == uses + 2

    page.get_by_role("button", name="Disable tool").click()
    expect_notice(page, "time__convert_time disabled")
    assert page.locator("#tool-enabled").inner_text() == "no"
    assert gateway.service.catalog.get("time__convert_time") is None  # no longer served
    shot(page, "tool")
    page.get_by_role("button", name="Enable tool").click()
    expect_notice(page, "time__convert_time enabled")
    assert page.locator("#tool-enabled").inner_text() == "yes"
    assert gateway.service.catalog.get("time__convert_time") is not None


def test_playground_shows_intent_stage_scores_and_token_cost(gateway: ConsoleGateway, page: Any) -> None:
    ensure_time_server(gateway)
    uses_before = gateway.service.usage_count("time__get_current_time")
    page.goto(gateway.url("/playground"))
    page.locator("#search [name=q]").fill(
        "get the current time in Tokyo and then convert 9am Tokyo time to Paris time"
    )
    page.locator("#search [name=limit]").fill("3")
    page.locator("#search button[type=submit]").click()
    page.wait_for_selector("#results")
    ranked = page.locator("#results tbody tr").evaluate_all("rows => rows.map(r => r.dataset.tool)")
    assert ranked[0] in ("time__get_current_time", "time__convert_time")
    assert {"time__get_current_time", "time__convert_time"} <= set(ranked)
    assert len(ranked) <= 3
    headers = page.locator("#results thead th").all_inner_texts()
    for column in ("dense", "lexical", "server", "usage", "fused", "refined", "tokens"):
        assert column in headers
    first = page.locator("#results tbody tr").first.locator("td").all_inner_texts()
    dense = float(first[headers.index("dense")])
    assert 0 < dense <= 1
    assert float(first[headers.index("refined")]) > 0
    assert int(first[headers.index("tokens")]) > 10
    spans = page.locator("#intent tbody tr").count()
    assert spans >= 2  # two requests in one query: two sub-intents
    result_tokens = int(page.locator("#result-tokens").inner_text())
    listing = int(page.locator("#listing-tokens").inner_text())
    assert 0 < result_tokens <= listing
    shot(page, "playground")
    # Playground searches teach nothing and open no conversation.
    assert gateway.service.usage_count("time__get_current_time") == uses_before
    assert gateway.http.get("/admin/conversations").json()["conversations"] == []


def in_thread(fn: Callable[[str], Awaitable[None]], arg: str, timeout: float = 120) -> None:
    """Run an async client on a thread of its own: Playwright's sync API holds this one's loop."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            anyio.run(fn, arg)
        except BaseException as exc:  # re-raised in the test's thread
            failures.append(exc)

    worker = threading.Thread(target=run, name="mcp-client")
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), "the MCP client did not finish"
    if failures:
        raise failures[0]


async def _chat(mcp_url: str) -> None:
    async with Client(mcp_url) as client:
        first = await client.call_tool(
            "find_tools", {"query": "what time is it", "limit": 2, "conversation": "console-demo"}
        )
        assert not first.is_error
        await client.call_tool(
            "call_tool",
            {
                "name": "time__get_current_time",
                "arguments": {"timezone": "UTC"},
                "conversation": "console-demo",
            },
        )
        for query in ("echo a message back", "add two numbers", "reverse a string", "echo again"):
            found = await client.call_tool(
                "find_tools", {"query": query, "limit": 2, "conversation": "console-demo"}
            )
            assert not found.is_error


def test_conversation_working_set_and_turns(gateway: ConsoleGateway, page: Any) -> None:
    ensure_time_server(gateway)
    in_thread(_chat, f"{gateway.base}/mcp")
    page.goto(gateway.url("/conversations"))
    page.locator("a", has_text="console-demo").click()
    expect(page).to_have_title("Conversation console-demo · toolgate console")
    history = page.locator("#history tbody tr")
    assert history.count() == 5  # five find_tools turns (the call added nothing new)
    oldest = history.last
    assert oldest.locator("td").nth(1).inner_text().startswith("find")
    assert oldest.locator(".chip.added").count() >= 1
    removed = page.locator("#history .chip.removed")
    assert removed.count() >= 1  # workflow mode pruned idle tools on a later turn
    assert "(idle)" in removed.first.inner_text()
    stored = gateway.http.get("/admin/conversations/console-demo").json()
    shown = page.locator("#working-set tbody tr").evaluate_all("rows => rows.map(r => r.dataset.tool)")
    assert sorted(shown) == sorted(stored["tools"])
    assert page.locator("#ws-count").inner_text() == str(stored["count"])
    shot(page, "conversation")


def test_live_figures_poll_and_chart(gateway: ConsoleGateway, page: Any) -> None:
    ensure_time_server(gateway)
    searched = gateway.http.get("/console/playground", params={"q": "current time in Lima"})
    assert searched.status_code == 200  # a find_tools, so the stage chart has bars
    page.goto(gateway.url("/metrics"))
    assert page.locator("#metrics-off").count() == 0
    live = page.locator("#live")
    polled = "n => Number(document.getElementById('live').dataset.polls) >= n"
    page.wait_for_function(polled, arg=2, timeout=TIMEOUT_MS)
    before = int(live.locator("[data-figure=requests]").inner_text())
    assert before > 0
    for _ in range(30):  # a burst between two polls shows as a rate
        gateway.http.get("/healthz")
    page.wait_for_function(polled, arg=4, timeout=TIMEOUT_MS)
    assert live.locator("#chart-rate polyline").count() == 1
    assert int(live.locator("[data-figure=requests]").inner_text()) >= before + 30
    rates = live.locator("#chart-rate polyline").get_attribute("points")
    assert rates is not None
    assert len({point.split(",")[1] for point in rates.split()}) > 1  # the line moved
    assert live.locator("#chart-stages rect").count() >= 2  # prepare, search, ...
    figures = gateway.http.get("/console/api/metrics").json()
    assert figures["enabled"] is True
    assert figures["requests"] >= before + 30
    assert figures["gauges"]["index_servable_tools"] >= 2
    shot(page, "metrics")
