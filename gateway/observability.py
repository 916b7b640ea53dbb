"""Request ids, Prometheus metrics and tracing for the HTTP app.

`install_observability` adds, outermost of all middleware, a pure ASGI middleware (not
`BaseHTTPMiddleware`: /mcp streams its responses) that gives every request an id, counts and
times it by route template, and traces it when tracing is on; it mounts /metrics; and it adds
the lifespan hook that hands the running `GatewayService` its telemetry.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from fastapi import FastAPI
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import REQUEST_ID_HEADER, accept_request_id, request_id_scope
from .meta_tools import NAMES
from .metrics import GatewayMetrics
from .settings import Settings
from .tracing import Telemetry, Tracing, build_tracing

if TYPE_CHECKING:
    from .services import GatewayService

METRICS_PATH = "/metrics"
_UNTRACED = frozenset({METRICS_PATH, "/healthz", "/readyz"})  # scrapes and probes: noise in traces
_PROPAGATOR = TraceContextTextMapPropagator()


class _Observed:
    """What the middleware reads on every request; the lifespan hook swaps the tracing in."""

    def __init__(self, metrics: GatewayMetrics | None) -> None:
        self.metrics = metrics
        self.tracing = Tracing()


def _route_template(scope: Scope, routes: list[BaseRoute]) -> str:
    """The matched route's template (never the raw path: ids in paths would explode the label
    set). The router records its match in the scope; requests refused before routing (auth)
    are matched here."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match is not Match.NONE:
            candidate_path = getattr(candidate, "path", None)
            return candidate_path if isinstance(candidate_path, str) else "unmatched"
    return "unmatched"


def _server_span(tracer: Tracer, scope: Scope, headers: Headers, request_id: str) -> Any:
    """The request's server span, continuing the caller's W3C trace context when it sent one."""
    parent = _PROPAGATOR.extract(dict(headers.items()))
    attributes = {
        "http.request.method": scope["method"],
        "url.path": scope["path"],
        "toolgate.request_id": request_id,
    }
    return tracer.start_as_current_span(
        scope["method"], context=parent, kind=SpanKind.SERVER, attributes=attributes
    )


class ObservabilityMiddleware:
    """Request id, HTTP metrics and the server span, for every HTTP request."""

    def __init__(self, app: ASGIApp, observed: _Observed, routes: list[BaseRoute]) -> None:
        self.app = app
        self._observed = observed
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        request_id = accept_request_id(headers.get(REQUEST_ID_HEADER))
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in response_headers:
                    response_headers.append(REQUEST_ID_HEADER, request_id)
            await send(message)

        tracing = self._observed.tracing
        traced = tracing.enabled and scope["path"] not in _UNTRACED
        span_scope = _server_span(tracing.tracer, scope, headers, request_id) if traced else nullcontext()
        with request_id_scope(request_id), span_scope as span:
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                route = self._count(scope, status, started)
                if span is not None:
                    span.update_name(f"{scope['method']} {route}")
                    span.set_attribute("http.route", route)
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))

    def _count(self, scope: Scope, status: int, started: float) -> str:
        route = _route_template(scope, self._routes)
        metrics = self._observed.metrics
        if metrics is not None:
            metrics.observe_http(scope["method"], route, status, time.perf_counter() - started)
        return route


class FrontDoorMetrics:
    """MCP middleware on the front door: tools/call requests by meta-tool and outcome. It sees
    the calls the front door refuses (bad arguments) as well as the ones it serves."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method != "tools/call":
            return await call_next(ctx)
        name = ctx.params.get("name") if isinstance(ctx.params, dict) else None
        # A working-set tool called by its own name (dynamic listing) gets one shared label.
        label = name if isinstance(name, str) and name in NAMES else "working_set"
        try:
            result = await call_next(ctx)
        except Exception:
            self._metrics.count_tool_call(label, "error")
            raise
        self._metrics.count_tool_call(label, "tool_error" if _is_error(result) else "ok")
        return result


def _is_error(result: HandlerResult) -> bool:
    if isinstance(result, types.CallToolResult):
        return bool(result.is_error)
    return isinstance(result, dict) and result.get("isError") is True


def _metrics_endpoint(metrics: GatewayMetrics) -> Any:
    async def serve_metrics(_request: Request) -> Response:
        """Prometheus text exposition of every toolgate_* series."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return serve_metrics


def _telemetry_hook(settings: Settings, observed: _Observed) -> Any:
    @asynccontextmanager
    async def telemetry(app: FastAPI, service: GatewayService) -> AsyncIterator[None]:
        tracing = build_tracing(settings)
        metrics = observed.metrics
        observed.tracing = tracing
        service.set_telemetry(Telemetry(metrics, tracing.tracer if tracing.enabled else None))
        if metrics is not None:
            metrics.watch(service)
            manager = getattr(app.state, "mcp_manager", None)
            if manager is not None:
                manager.app.middleware.append(FrontDoorMetrics(metrics))
        try:
            yield
        finally:
            service.set_telemetry(Telemetry())
            observed.tracing = Tracing()
            if metrics is not None:
                metrics.watch(None)
            with anyio.CancelScope(shield=True):  # the last spans are exported even on cancel
                await anyio.to_thread.run_sync(tracing.shutdown)

    return telemetry


def install_observability(app: FastAPI, settings: Settings) -> None:
    """Request ids (X-Request-ID in and out), HTTP metrics, /metrics when enabled, and the
    tracing and service telemetry for the app's lifetime."""
    metrics = GatewayMetrics() if settings.metrics_enabled else None
    observed = _Observed(metrics)
    app.state.metrics = metrics
    if metrics is not None:
        app.add_route(METRICS_PATH, _metrics_endpoint(metrics), methods=["GET"], include_in_schema=False)
    app.add_middleware(ObservabilityMiddleware, observed=observed, routes=app.router.routes)
    app.state.lifespan_hooks.append(_telemetry_hook(settings, observed))
