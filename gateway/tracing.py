"""OpenTelemetry tracing, and the telemetry hooks the services report through.

With an OTLP endpoint configured the app gets its own `TracerProvider` (never the global one,
so apps in one process stay independent) exporting over OTLP/HTTP in batches; without one,
the tracer is OpenTelemetry's no-op and a span costs next to nothing.

`Telemetry` is what `GatewayService` and the forwarder call: spans for find_tools (with a
child per retrieval stage), call_tool and the upstream call, and the matching metrics. The
default records nothing, so the stdio front door and the CLI need neither.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from urllib.parse import urlsplit

import mcp_types as types
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .logs import current_request_id, new_request_id, request_id_scope
from .metrics import GatewayMetrics
from .settings import Settings

logger = logging.getLogger(__name__)

REQUEST_ID_META = "io.toolgate/request-id"
_NO_OP = trace.NoOpTracer()
_PROPAGATOR = TraceContextTextMapPropagator()


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL: an endpoint ending in /v1/traces is used as given; a base URL
    (the usual `OTEL_EXPORTER_OTLP_ENDPOINT`, e.g. http://collector:4318) gets /v1/traces."""
    path = urlsplit(endpoint).path
    if path.rstrip("/").endswith("/v1/traces"):
        return endpoint
    return endpoint.rstrip("/") + "/v1/traces"


class Tracing:
    """The app's tracer and, when exporting, the provider to flush and shut down."""

    def __init__(self, provider: TracerProvider | None = None) -> None:
        self.provider = provider
        self.tracer: Tracer = provider.get_tracer("toolgate") if provider is not None else _NO_OP

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def shutdown(self) -> None:
        """Export what is still queued, then stop (blocking: run it off the event loop)."""
        if self.provider is not None:
            self.provider.force_flush()
            self.provider.shutdown()


def build_tracing(settings: Settings) -> Tracing:
    """Tracing as configured: an OTLP/HTTP exporter when `otlp_endpoint` is set, else no-op."""
    if not settings.otlp_endpoint:
        return Tracing()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: settings.otel_service_name}), shutdown_on_exit=False
    )
    endpoint = traces_url(settings.otlp_endpoint)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    logger.info("exporting traces to %s as %s", endpoint, settings.otel_service_name)
    return Tracing(provider)


@contextmanager
def _request_id() -> Iterator[str]:
    """The current request id; outside an HTTP request (stdio) a new one for this operation."""
    current = current_request_id()
    if current is not None:
        yield current
        return
    made = new_request_id()
    with request_id_scope(made):
        yield made


@contextmanager
def detached() -> Iterator[None]:
    """No request id and no current span inside the block. Tasks started here (a pooled
    upstream session, which outlives the request that opened it) then do not log under, or
    parent spans to, that one request."""
    token = otel_context.attach(otel_context.Context())
    try:
        with request_id_scope(None):
            yield
    finally:
        otel_context.detach(token)


class FindRecord:
    """What one find_tools reports once it has its result."""

    def __init__(self, span: Span, tracer: Tracer, started_ns: int) -> None:
        self._span = span
        self._tracer = tracer
        self._started_ns = started_ns
        self.stages: Mapping[str, float] = {}
        self.working_set: int | None = None

    def found(self, stages: Mapping[str, float], hits: int, working_set: int | None = None) -> None:
        """The stage timings (seconds, in the order they ran), hit count and working-set size."""
        self.stages = stages
        self.working_set = working_set
        if not self._span.is_recording():
            return
        self._span.set_attribute("toolgate.hits", hits)
        if working_set is not None:
            self._span.set_attribute("toolgate.working_set", working_set)
        # The stages run one after another from the start of the search: rebuild each as a
        # child span from its measured duration.
        parent = trace.set_span_in_context(self._span)
        cursor = self._started_ns
        for stage, seconds in stages.items():
            end = cursor + int(seconds * 1e9)
            child = self._tracer.start_span(
                f"find_tools.{stage}", context=parent, start_time=cursor, attributes={"toolgate.stage": stage}
            )
            child.end(end_time=end)
            cursor = end


class CallRecord:
    """What one call_tool reports."""

    def __init__(self, span: Span) -> None:
        self._span = span

    def result(self, result: types.CallToolResult) -> None:
        outcome = "tool_error" if result.is_error else "ok"
        self._span.set_attribute("toolgate.outcome", outcome)
        if result.is_error:
            self._span.set_status(Status(StatusCode.ERROR, "tool_error"))


class UpstreamRecord:
    """One forwarded call: the `_meta` to send, and its outcome."""

    def __init__(self, span: Span, request_id: str, tracing: bool) -> None:
        self._span = span
        self._request_id = request_id
        self._tracing = tracing
        self.outcome_name = "error"  # until told otherwise: an exception is a failed call
        self.seconds = 0.0

    def meta(self) -> dict[str, Any]:
        """The request id and, when tracing, the W3C trace context of this call's span."""
        meta: dict[str, Any] = {REQUEST_ID_META: self._request_id}
        if self._tracing:
            _PROPAGATOR.inject(meta, context=trace.set_span_in_context(self._span))
        return meta

    def outcome(self, outcome: str, message: str | None = None) -> None:
        """ok, tool_error (the tool answered isError) or error (the call failed)."""
        self.outcome_name = outcome
        self._span.set_attribute("toolgate.outcome", outcome)
        if outcome != "ok":
            self._span.set_status(Status(StatusCode.ERROR, message or outcome))


class Telemetry:
    """Spans and metrics for the services; `Telemetry()` records nothing."""

    def __init__(self, metrics: GatewayMetrics | None = None, tracer: Tracer | None = None) -> None:
        self.metrics = metrics
        self.tracer = tracer if tracer is not None else _NO_OP
        self._tracing = tracer is not None

    def _span(
        self, name: str, attributes: dict[str, Any], kind: SpanKind = SpanKind.INTERNAL
    ) -> AbstractContextManager[Span]:
        """The span as the current one; with tracing off, the shared non-recording span: even a
        no-op tracer's span costs a context switch in and out (~20 us) on every call."""
        if not self._tracing:
            return nullcontext(trace.INVALID_SPAN)
        return self.tracer.start_as_current_span(name, kind=kind, attributes=attributes)

    @contextmanager
    def find(self) -> Iterator[FindRecord]:
        """Around one find_tools: a `find_tools` span (stage children added by `found`) and the
        latency metrics."""
        started = time.perf_counter()
        with _request_id(), self._span("find_tools", {}) as span:
            record = FindRecord(span, self.tracer, time.time_ns())
            try:
                yield record
            finally:
                if self.metrics is not None:
                    self.metrics.observe_find(time.perf_counter() - started, record.stages)
                    if record.working_set is not None:
                        self.metrics.working_set_size.observe(record.working_set)

    @contextmanager
    def call(self, name: str) -> Iterator[CallRecord]:
        """Around one call_tool (validation, forwarding and learning): a `call_tool` span."""
        with _request_id(), self._span("call_tool", {"toolgate.tool": name}) as span:
            yield CallRecord(span)

    @contextmanager
    def upstream(self, server: str, tool: str) -> Iterator[UpstreamRecord]:
        """Around the call to the upstream: an `upstream` client span and the per-server metrics."""
        attributes = {"toolgate.server": server, "toolgate.tool": tool, "mcp.method.name": "tools/call"}
        started = time.perf_counter()
        with _request_id() as request_id, self._span("upstream", attributes, SpanKind.CLIENT) as span:
            record = UpstreamRecord(span, request_id, self._tracing)
            try:
                yield record
            finally:
                record.seconds = time.perf_counter() - started
                if self.metrics is not None:
                    self.metrics.observe_upstream(server, record.outcome_name, record.seconds)
