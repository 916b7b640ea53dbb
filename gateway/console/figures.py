"""Live figures from the gateway's own Prometheus series (the data /metrics serves).

The app's metrics registry is rendered in process and parsed back, so the console shows the
same numbers a scraper sees and depends on nothing but the exposition format."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

Buckets = list[tuple[float, float]]  # (upper bound, cumulative count), ascending


def exposition(app: FastAPI) -> str | None:
    """The app's metrics as exposition text, or None when metrics are off. Looks for what the
    observability module attaches: `app.state.metrics` (GatewayMetrics or a registry), or
    else any such object on the app's state."""
    state = app.state
    candidates: list[Any] = [getattr(state, "metrics", None)]
    candidates += list(getattr(state, "_state", {}).values())
    for candidate in candidates:
        if candidate is None:
            continue
        if isinstance(candidate, CollectorRegistry):
            return generate_latest(candidate).decode()
        registry = getattr(candidate, "registry", None)
        if isinstance(registry, CollectorRegistry):
            return generate_latest(registry).decode()
    return None


def quantile(buckets: Buckets, q: float) -> float | None:
    """The q-quantile of a histogram, interpolated within its bucket (as PromQL does)."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # past the last finite bucket: its bound is all we know
            span = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
        lower_bound, lower_count = bound, count
    return lower_bound


def _samples(text: str) -> dict[str, list[Sample]]:
    families: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = list(family.samples)
    return families


def _total(samples: Iterable[Sample], suffix: str = "_total") -> float:
    return sum(s.value for s in samples if s.name.endswith(suffix))


def _histogram(samples: Iterable[Sample], label: str | None = None) -> dict[str, dict[str, Any]]:
    """Per value of `label` (or "" for an unlabelled histogram): count, sum, p50, p95."""
    # Series with other labels (route, method) are summed bucket by bucket.
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[str, float] = defaultdict(float)
    sums: dict[str, float] = defaultdict(float)
    for s in samples:
        key = s.labels.get(label, "") if label else ""
        if s.name.endswith("_bucket"):
            buckets[key][float(s.labels["le"])] += s.value
        elif s.name.endswith("_count"):
            counts[key] += s.value
        elif s.name.endswith("_sum"):
            sums[key] += s.value
    out: dict[str, dict[str, Any]] = {}
    for key in counts:
        ordered = sorted(buckets[key].items())
        out[key] = {
            "count": counts[key],
            "sum": sums[key],
            "p50": quantile(ordered, 0.5),
            "p95": quantile(ordered, 0.95),
        }
    return out


def figures(text: str | None) -> dict[str, Any]:
    """What the live page shows, from exposition text (None: metrics are off)."""
    if text is None:
        return {"enabled": False, "at": time.time()}
    fam = _samples(text)
    http = fam.get("toolgate_http_requests", [])
    by_status: dict[str, float] = defaultdict(float)
    for s in http:
        if s.name.endswith("_total"):
            by_status[f"{str(s.labels.get('status', '?'))[:1]}xx"] += s.value
    upstream: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for s in fam.get("toolgate_upstream_calls", []):
        if s.name.endswith("_total"):
            upstream[s.labels.get("server", "?")][s.labels.get("outcome", "?")] += s.value
    upstream_latency = _histogram(fam.get("toolgate_upstream_call_duration_seconds", []), "server")
    circuit_names = {0.0: "closed", 1.0: "half_open", 2.0: "open"}
    circuits = {
        s.labels.get("server", "?"): circuit_names.get(s.value, str(s.value))
        for s in fam.get("toolgate_upstream_circuit_state", [])
    }
    gauges = {
        name.removeprefix("toolgate_"): samples[0].value
        for name, samples in fam.items()
        if name
        in (
            "toolgate_index_tools",
            "toolgate_index_servable_tools",
            "toolgate_index_pending_tools",
            "toolgate_upstream_connections",
            "toolgate_upstream_connections_alive",
            "toolgate_conversations",
        )
        and samples
    }
    find = _histogram(fam.get("toolgate_find_tools_duration_seconds", [])).get("", {"count": 0.0, "sum": 0.0})
    return {
        "enabled": True,
        "at": time.time(),
        "requests": _total(http),
        "by_status": dict(sorted(by_status.items())),
        "http_latency": _histogram(fam.get("toolgate_http_request_duration_seconds", [])).get("", {}),
        "find": find,
        "stages": _histogram(fam.get("toolgate_find_tools_stage_duration_seconds", []), "stage"),
        "tool_calls": _total(fam.get("toolgate_mcp_tool_calls", [])),
        "upstream": {server: dict(outcomes) for server, outcomes in sorted(upstream.items())},
        "upstream_latency": upstream_latency,
        "upstream_errors": sum(o.get("error", 0.0) for o in upstream.values()),
        "circuits": circuits,
        "gauges": gauges,
    }
