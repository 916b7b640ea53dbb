"""Observability end to end: a real gateway process with JSON logs and OTLP tracing on, real
upstream MCP servers (echo, and meta, which answers with the `_meta` it received), the SDK's
MCP client, and a real OTLP/HTTP receiver started here.

Proves: /metrics exposes every named series with values that follow the traffic; the request
id goes from `X-Request-ID` into every log line of the request and on to the upstream's
`_meta`; find_tools (with a span per stage), call_tool and upstream spans arrive with the right
parent/child links, and the upstream sees the upstream span's traceparent.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import re
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import httpx2
import pytest
from fastapi import FastAPI
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from gateway.logs import JsonFormatter, accept_request_id, current_request_id, request_id_scope
from gateway.observability import install_observability
from gateway.settings import Settings
from gateway.tracing import REQUEST_ID_META, Telemetry, build_tracing, detached, traces_url
from tests.running import RunningGateway
from tests.support import PYTHON, ROOT, wait_until

SERVICE_NAME = "toolgate-observed"


# -- a real OTLP/HTTP receiver ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    service: str


@dataclass
class OtlpReceiver:
    """Accepts POST /v1/traces (protobuf, optionally gzip) and keeps every span it decodes."""

    server: ThreadingHTTPServer
    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def received(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind is not None else None


def _start_receiver() -> OtlpReceiver:
    holder: list[OtlpReceiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_response(404)
                self.end_headers()
                return
            request = ExportTraceServiceRequest.FromString(body)
            decoded = []
            for resource_spans in request.resource_spans:
                resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        decoded.append(
                            ReceivedSpan(
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                kind=span.kind,
                                start_ns=span.start_time_unix_nano,
                                end_ns=span.end_time_unix_nano,
                                attributes={a.key: _value(a.value) for a in span.attributes},
                                service=str(resource.get("service.name")),
                            )
                        )
            receiver = holder[0]
            with receiver.lock:
                receiver.spans.extend(decoded)
            payload = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep the test output clean

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    holder.append(OtlpReceiver(server))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return holder[0]


# -- the gateway under observation -------------------------------------------------------------------


@dataclass
class Observed:
    gateway: RunningGateway
    receiver: OtlpReceiver

    @property
    def lines(self) -> list[str]:
        """The gateway's non-empty stderr lines so far."""
        return [line.rstrip("\n") for line in list(self.gateway.log_lines) if line.strip()]

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON lines (test_every_log_line_is_json checks that there are no others)."""
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def logged(self, logger: str, request_id: str) -> list[dict[str, Any]]:
        return [
            r for r in self.log_records() if r.get("logger") == logger and r.get("request_id") == request_id
        ]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    receiver = _start_receiver()
    gateway = RunningGateway(
        tmp_path_factory.mktemp("observed"),
        extra_env={
            "TOOLGATE_LOG_FORMAT": "json",
            "TOOLGATE_LOG_LEVEL": "INFO",
            "TOOLGATE_OTLP_ENDPOINT": receiver.endpoint,  # a base URL: /v1/traces is appended
            "TOOLGATE_OTEL_SERVICE_NAME": SERVICE_NAME,
            "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within 0.1 s instead of 5 s
        },
    )
    state = Observed(gateway, receiver)
    try:
        for name, module in (("echo", "tests.servers.echo_server"), ("meta", "tests.servers.meta_server")):
            gateway.register({"name": name, "command": PYTHON, "args": ["-m", module], "cwd": str(ROOT)})
        yield state
    finally:
        gateway.stop()
        receiver.server.shutdown()


@asynccontextmanager
async def mcp_client(gateway: RunningGateway, ids: list[str], mode: str = "auto") -> AsyncIterator[Client]:
    """The SDK's client over streamable HTTP; every HTTP request carries `X-Request-ID: ids[-1]`
    (and the admin key)."""

    async def stamp(request: httpx2.Request) -> None:
        request.headers["X-Request-ID"] = ids[-1]

    auth = gateway.auth_headers()
    async with httpx2.AsyncClient(headers=auth, event_hooks={"request": [stamp]}, timeout=60) as http:
        transport = streamable_http_client(gateway.mcp_url, http_client=http)
        async with Client(transport, mode=mode) as client:
            yield client


def scrape(gateway: RunningGateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = gateway.http.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _structured(result: Any) -> dict[str, Any]:
    text = "".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error, text
    assert result.structured_content is not None, text
    structured: dict[str, Any] = result.structured_content
    return structured


# -- the tests ---------------------------------------------------------------------------------------


@pytest.mark.e2e
def test_request_id_header_round_trip(observed: Observed) -> None:
    http = observed.gateway.http
    assert http.get("/healthz", headers={"X-Request-ID": "client.Id-42_x"}).headers["x-request-id"] == (
        "client.Id-42_x"
    )
    generated = {http.get("/healthz").headers["x-request-id"] for _ in range(2)}
    assert len(generated) == 2  # a fresh id per request
    for unsafe in ("has spaces", "a" * 65, "semi;colon", "new\\nline"):
        got = http.get("/healthz", headers={"X-Request-ID": unsafe}).headers["x-request-id"]
        assert got != unsafe
        assert re.fullmatch(r"[0-9a-f]{32}", got)
    refused = http.get("/no/such/route", headers={"X-Request-ID": "on-a-404"})
    assert refused.status_code == 404
    assert refused.headers["x-request-id"] == "on-a-404"


@pytest.mark.e2e
@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])  # 2026-07-28 (sessionless) and 2025-11-25 (sessions)
async def test_request_id_reaches_the_logs_and_the_upstream(observed: Observed, mode: str) -> None:
    ids = [f"setup-{mode}"]
    async with mcp_client(observed.gateway, ids, mode) as client:
        ids.append(f"meta-call-{mode}")
        result = await client.call_tool("call_tool", {"name": "meta__show_meta", "arguments": {}})
        ids.append(f"after-{mode}")
        await client.call_tool("call_tool", {"name": "meta__show_meta", "arguments": {}})
    received = _structured(result)["meta"]
    assert received["io.toolgate/request-id"] == f"meta-call-{mode}"
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", received["traceparent"])

    await wait_until(lambda: bool(observed.logged("gateway.forwarder", f"meta-call-{mode}")))
    (line,) = observed.logged("gateway.forwarder", f"meta-call-{mode}")
    assert line["level"] == "INFO"
    assert line["tool"] == "meta__show_meta"
    assert line["server"] == "meta"
    assert line["outcome"] == "ok"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["ts"])


@pytest.mark.e2e
@pytest.mark.anyio
async def test_uvicorn_access_lines_are_json_with_the_request_id(observed: Observed) -> None:
    """Needs `uvicorn.run(..., log_config=None)` in cli.py so uvicorn logs through our handler."""
    assert observed.gateway.http.get("/healthz", headers={"X-Request-ID": "access-1"}).status_code == 200
    await wait_until(lambda: bool(observed.logged("uvicorn.access", "access-1")))
    (line,) = observed.logged("uvicorn.access", "access-1")
    assert line["method"] == "GET"
    assert line["path"] == "/healthz"
    assert line["status"] == 200


@pytest.mark.e2e
def test_every_log_line_is_json(observed: Observed) -> None:
    assert observed.lines, "the gateway logged nothing at INFO"
    for line in list(observed.lines):
        record = json.loads(line)  # fails on any line that is not a JSON object
        assert {"ts", "level", "logger", "message"} <= set(record), line


@pytest.mark.e2e
@pytest.mark.anyio
async def test_metrics_follow_the_traffic(observed: Observed) -> None:
    gateway = observed.gateway
    before = scrape(gateway)
    ids = ["metrics"]
    async with mcp_client(gateway, ids) as client:
        found = _structured(
            await client.call_tool(
                "find_tools", {"query": "echo some text back", "conversation": "obs-metrics"}
            )
        )
        assert "echo__echo" in [card["name"] for card in found["tools"]]
        for text in ("one", "two"):
            await client.call_tool("call_tool", {"name": "echo__echo", "arguments": {"text": text}})
        failed = await client.call_tool("call_tool", {"name": "echo__fail", "arguments": {"message": "no"}})
        assert failed.is_error
        crashed = await client.call_tool("call_tool", {"name": "echo__crash", "arguments": {}})
        assert crashed.is_error
        unknown = await client.call_tool("call_tool", {"name": "no_such_tool", "arguments": {}})
        assert unknown.is_error
        await client.call_tool("forget_tools", {"names": ["echo__echo"], "conversation": "obs-metrics"})
    assert gateway.http.get("/admin/servers/987654").status_code == 404
    after = scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    def http_counted() -> bool:
        # An HTTP request is counted once its response is complete, which the client may see
        # a moment before the server's middleware does: scrape again until it has.
        nonlocal after
        after = scrape(gateway)
        route = "/admin/servers/{server_id}"
        return delta("toolgate_http_requests_total", method="GET", route=route, status="404") >= 1

    await wait_until(http_counted)

    # upstream calls per server and outcome, with their latency
    assert delta("toolgate_upstream_calls_total", server="echo", outcome="ok") == 2
    assert delta("toolgate_upstream_calls_total", server="echo", outcome="tool_error") == 1
    assert delta("toolgate_upstream_calls_total", server="echo", outcome="error") == 1
    assert delta("toolgate_upstream_call_duration_seconds_count", server="echo") == 4
    assert delta("toolgate_upstream_call_duration_seconds_sum", server="echo") > 0
    # the front door, by meta-tool and outcome (the unknown tool never reached an upstream)
    assert delta("toolgate_mcp_tool_calls_total", meta_tool="find_tools", outcome="ok") == 1
    assert delta("toolgate_mcp_tool_calls_total", meta_tool="call_tool", outcome="ok") == 2
    assert delta("toolgate_mcp_tool_calls_total", meta_tool="call_tool", outcome="tool_error") == 3
    assert delta("toolgate_mcp_tool_calls_total", meta_tool="forget_tools", outcome="ok") == 1
    # find_tools: total and per stage (intent stage builtin: prepare, then wait and search; memory)
    assert delta("toolgate_find_tools_duration_seconds_count") == 1
    for stage in ("prepare", "wait", "search", "memory"):
        assert delta("toolgate_find_tools_stage_duration_seconds_count", stage=stage) == 1, stage
    assert delta("toolgate_find_tools_stage_duration_seconds_count", stage="embed") == 0
    stages = sum(
        delta("toolgate_find_tools_stage_duration_seconds_sum", stage=s)
        for s in ("prepare", "wait", "search")
    )
    assert 0 < stages <= delta("toolgate_find_tools_duration_seconds_sum")
    # the working set after the find: the hits joined it
    assert delta("toolgate_working_set_size_count") == 1
    assert delta("toolgate_working_set_size_sum") == len(found["tools"])
    # HTTP by route template, never the raw path
    assert delta("toolgate_http_requests_total", method="POST", route="/mcp", status="200") >= 7
    assert delta("toolgate_http_request_duration_seconds_count", method="POST", route="/mcp") >= 7
    assert (
        delta("toolgate_http_requests_total", method="GET", route="/admin/servers/{server_id}", status="404")
        == 1
    )
    assert not any("987654" in dict(labels).get("route", "") for _, labels in after)
    # scrape-time gauges: index, connections, conversations, circuits
    assert value(after, "toolgate_index_tools") >= 9  # echo's 8 tools and meta's one
    assert value(after, "toolgate_index_servable_tools") >= 9
    assert value(after, "toolgate_index_pending_tools") == 0
    assert value(after, "toolgate_upstream_connections") >= 1
    assert value(after, "toolgate_upstream_connections_alive") >= 1
    assert value(after, "toolgate_conversations") >= 1
    assert value(after, "toolgate_upstream_circuit_state", server="echo") == 0  # one failure: still closed
    assert ("toolgate_upstream_circuit_state", frozenset({("server", "meta")})) in after


@pytest.mark.e2e
@pytest.mark.anyio
async def test_traces_link_find_call_and_upstream(observed: Observed) -> None:
    ids = ["trace-setup"]
    async with mcp_client(observed.gateway, ids) as client:
        ids.append("trace-find")
        await client.call_tool("find_tools", {"query": "show the request metadata", "conversation": "traced"})
        ids.append("trace-call")
        result = await client.call_tool("call_tool", {"name": "meta__show_meta", "arguments": {}})
    traceparent = _structured(result)["meta"]["traceparent"]

    def server_span(request_id: str) -> ReceivedSpan | None:
        return next(
            (
                s
                for s in observed.receiver.received()
                if s.kind == 2 and s.attributes.get("toolgate.request_id") == request_id
            ),
            None,
        )

    def children(parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in observed.receiver.received() if s.parent_id == parent.span_id]

    def complete() -> bool:
        find, call = server_span("trace-find"), server_span("trace-call")
        if find is None or call is None:
            return False
        calls = [s for s in children(call) if s.name == "call_tool"]
        return (
            any(s.name == "find_tools" for s in children(find)) and bool(calls) and bool(children(calls[0]))
        )

    await wait_until(complete)
    find_http = server_span("trace-find")
    call_http = server_span("trace-call")
    assert find_http is not None
    assert call_http is not None
    assert find_http.name == "POST /mcp"
    assert find_http.attributes["http.route"] == "/mcp"
    assert find_http.attributes["http.response.status_code"] == 200
    assert find_http.service == SERVICE_NAME

    (find,) = [s for s in children(find_http) if s.name == "find_tools"]
    assert find.trace_id == find_http.trace_id
    stages = sorted(children(find), key=lambda s: s.start_ns)
    assert [s.name for s in stages] == [
        "find_tools.prepare",
        "find_tools.wait",
        "find_tools.search",
        "find_tools.memory",
    ]
    for earlier, later in itertools.pairwise(stages):
        assert earlier.end_ns <= later.start_ns
    assert find.start_ns <= stages[0].start_ns
    assert stages[-1].end_ns <= find.end_ns

    (call,) = [s for s in children(call_http) if s.name == "call_tool"]
    (upstream,) = children(call)
    assert upstream.name == "upstream"
    assert upstream.kind == 3  # CLIENT
    assert upstream.attributes["toolgate.server"] == "meta"
    assert upstream.attributes["toolgate.tool"] == "show_meta"
    assert upstream.attributes["toolgate.outcome"] == "ok"
    assert call.attributes["toolgate.tool"] == "meta__show_meta"
    # the upstream saw this very span as its parent
    assert traceparent.startswith(f"00-{upstream.trace_id}-{upstream.span_id}-")
    assert call.start_ns <= upstream.start_ns <= upstream.end_ns <= call.end_ns


# -- in process: the pieces on their own ------------------------------------------------------------


def test_json_lines_carry_the_request_id_extras_and_the_exception() -> None:
    formatter = JsonFormatter()
    logger = logging.getLogger("tests.observability")
    try:
        raise ValueError("boom")
    except ValueError:
        failure = logger.makeRecord(
            logger.name,
            logging.ERROR,
            __file__,
            1,
            "failed %s",
            ("x",),
            sys.exc_info(),
            extra={"server": "s1"},
        )
    with request_id_scope("rid-1"):
        line = json.loads(formatter.format(failure))
    assert line["level"] == "ERROR"
    assert line["logger"] == "tests.observability"
    assert line["message"] == "failed x"
    assert line["request_id"] == "rid-1"
    assert line["server"] == "s1"
    assert "ValueError: boom" in line["exception"]
    plain = json.loads(
        formatter.format(logger.makeRecord(logger.name, logging.INFO, __file__, 1, "hi", (), None))
    )
    assert "request_id" not in plain
    assert "exception" not in plain


def test_request_ids_are_accepted_only_when_short_and_safe() -> None:
    assert accept_request_id("abc-DEF_1.2") == "abc-DEF_1.2"
    assert accept_request_id("x" * 64) == "x" * 64
    for bad in (None, "", "x" * 65, "a b", "a/b", "é"):
        assert re.fullmatch(r"[0-9a-f]{32}", accept_request_id(bad)), bad


def test_the_traces_url_follows_the_otlp_conventions() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"
    assert traces_url("https://proxy/otlp") == "https://proxy/otlp/v1/traces"


def test_default_telemetry_records_nothing_but_still_sends_a_request_id() -> None:
    telemetry = Telemetry()
    with telemetry.upstream("srv", "tool") as upstream:
        meta = upstream.meta()
        upstream.outcome("ok")
    assert set(meta) == {REQUEST_ID_META}  # no tracing: no traceparent
    with request_id_scope("given"), telemetry.upstream("srv", "tool") as upstream:
        assert upstream.meta() == {REQUEST_ID_META: "given"}
    assert not build_tracing(Settings(otlp_endpoint=None)).enabled


def _bare_app(**settings: Any) -> FastAPI:
    app = FastAPI()
    app.state.lifespan_hooks = []

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item": item_id}

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("broken on purpose")

    install_observability(app, Settings(**settings))
    return app


@pytest.mark.anyio
async def test_http_metrics_use_route_templates_and_count_failures() -> None:
    app = _bare_app()
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        for item_id in (1, 2, 3):
            got = await http.get(f"/items/{item_id}", headers={"X-Request-ID": f"item-{item_id}"})
            assert got.headers["x-request-id"] == f"item-{item_id}"
        assert (await http.get("/broken")).status_code == 500
        assert (await http.get("/nowhere")).status_code == 404
        text = (await http.get("/metrics")).text
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert (
        value(samples, "toolgate_http_requests_total", method="GET", route="/items/{item_id}", status="200")
        == 3
    )
    assert value(samples, "toolgate_http_requests_total", method="GET", route="/broken", status="500") == 1
    assert value(samples, "toolgate_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert (
        value(samples, "toolgate_http_request_duration_seconds_count", method="GET", route="/items/{item_id}")
        == 3
    )


@pytest.mark.anyio
async def test_metrics_can_be_turned_off() -> None:
    transport = httpx.ASGITransport(app=_bare_app(metrics_enabled=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        response = await http.get("/metrics")
    assert response.status_code == 404
    assert response.headers["x-request-id"]  # request ids do not depend on metrics


def test_detached_work_has_no_request_id_and_no_parent_span() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with request_id_scope("the-request"), tracer.start_as_current_span("request"):
        with detached():
            assert current_request_id() is None
            assert not trace.get_current_span().get_span_context().is_valid
        assert current_request_id() == "the-request"
        assert trace.get_current_span().get_span_context().is_valid
