"""Prometheus metrics: the `toolgate_*` series, in a registry of the app's own.

Counters and histograms are updated as requests run; the gauges (circuit state, index size,
connections, conversations) are read from the running gateway when /metrics is scraped. Each
app gets its own `CollectorRegistry`, never the process-wide one, so several apps can live in
one process (tests) without sharing or clashing series.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sized
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .services import GatewayService

# find_tools stages take from a fraction of a millisecond (the lock wait) to a few hundred
# (an llm intent parse); upstream calls and HTTP requests may run for the call timeout.
_STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_SIZE_BUCKETS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}  # -1: a state this code does not know


class GatewayMetrics:
    """Every series the gateway exports, registered in `self.registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter(
            "toolgate_http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "toolgate_http_request_duration_seconds",
            "HTTP request latency (until the response is complete; /mcp streams included).",
            ["method", "route"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.mcp_tool_calls = Counter(
            "toolgate_mcp_tool_calls",
            "tools/call requests at the MCP front door by meta-tool and outcome "
            "(ok, tool_error: an isError result, error: a protocol error).",
            ["meta_tool", "outcome"],
            registry=r,
        )
        self.find_duration = Histogram(
            "toolgate_find_tools_duration_seconds",
            "find_tools latency, from the query to the ranked tools and the updated working set.",
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.find_stage_duration = Histogram(
            "toolgate_find_tools_stage_duration_seconds",
            "find_tools latency per retrieval stage: intent (llm parse), prepare (parse + embed) "
            "or embed (intent stage off), wait (catalog lock), search (stages 1-3), memory.",
            ["stage"],
            buckets=_STAGE_BUCKETS,
            registry=r,
        )
        self.upstream_calls = Counter(
            "toolgate_upstream_calls",
            "Calls forwarded to upstream servers by server and outcome "
            "(ok, tool_error: the tool answered isError, error: the call failed).",
            ["server", "outcome"],
            registry=r,
        )
        self.upstream_duration = Histogram(
            "toolgate_upstream_call_duration_seconds",
            "Upstream call latency by server.",
            ["server"],
            buckets=_CALL_BUCKETS,
            registry=r,
        )
        self.working_set_size = Histogram(
            "toolgate_working_set_size",
            "Tools in the conversation's working set after each find_tools.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self._state: GatewayStateCollector | None = None
        # `labels()` validates and locks on every call (~10 us); the children it returns are
        # stable (nothing here removes a label set), so each is looked up once.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def _child(self, metric: Counter | Histogram, *labels: str) -> Any:
        key = (id(metric), labels)  # the metrics live as long as self
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request: counted by method, route template and status, and timed."""
        self._child(self.http_requests, method, route, str(status)).inc()
        self._child(self.http_duration, method, route).observe(seconds)

    def count_tool_call(self, meta_tool: str, outcome: str) -> None:
        """One tools/call at the front door: ok, tool_error or error."""
        self._child(self.mcp_tool_calls, meta_tool, outcome).inc()

    def observe_find(self, seconds: float, stages: Mapping[str, float]) -> None:
        """One find_tools: its total latency and each stage's (seconds by stage name)."""
        self.find_duration.observe(seconds)
        for stage, spent in stages.items():
            self._child(self.find_stage_duration, stage).observe(spent)

    def observe_upstream(self, server: str, outcome: str, seconds: float) -> None:
        """One forwarded call: outcome ok, tool_error or error, and its latency."""
        self._child(self.upstream_calls, server, outcome).inc()
        self._child(self.upstream_duration, server).observe(seconds)

    def watch(self, service: GatewayService | None) -> None:
        """Read the scrape-time gauges from this service (None: stop reading them)."""
        if self._state is not None:
            self.registry.unregister(self._state)
            self._state = None
        if service is not None:
            self._state = GatewayStateCollector(service)
            self.registry.register(self._state)

    def exposition(self) -> bytes:
        """The registry in Prometheus text exposition format."""
        return generate_latest(self.registry)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class GatewayStateCollector(Collector):
    """Gauges read from the running gateway at scrape time."""

    def __init__(self, service: GatewayService) -> None:
        self._service = service

    def describe(self) -> Iterable[Metric]:
        return []  # the series depend on the gateway's state; nothing to describe up front

    def collect(self) -> Iterable[Metric]:
        service = self._service
        index = service.catalog.stats()
        yield _gauge("toolgate_index_tools", "Tools held in the retrieval index.", index["tools"])
        yield _gauge("toolgate_index_servable_tools", "Enabled tools of enabled servers.", index["servable"])
        yield _gauge("toolgate_index_pending_tools", "Tools waiting to be embedded.", index["pending"])
        pool = service.pool.stats()
        yield _gauge("toolgate_upstream_connections", "Open upstream sessions.", pool["connections"])
        yield _gauge(
            "toolgate_upstream_connections_alive", "Upstream sessions whose transport is up.", pool["alive"]
        )
        family = GaugeMetricFamily(
            "toolgate_upstream_circuit_state",
            "Circuit breaker per upstream server: 0 closed, 1 half_open, 2 open.",
            labels=["server"],
        )
        for server, snapshot in sorted(service.pool.circuits().items()):
            family.add_metric([server], CIRCUIT_STATES.get(snapshot.state, -1))
        yield family
        conversations = _conversations(service)
        if conversations is not None:
            yield _gauge(
                "toolgate_conversations",
                "Conversations with a working set held in this process (in-process memory only).",
                conversations,
            )


def _conversations(service: GatewayService) -> int | None:
    """Working sets held by an in-process store; a shared (Redis) store is not counted here."""
    if service.memory is None:
        return 0
    store = service.memory.store
    return len(store) if isinstance(store, Sized) else None
