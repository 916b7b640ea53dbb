"""find_tools latency vs catalog size: through /mcp, the retrieval call alone, and the floor.

    python -m bench.latency_scale --tools 10000 [--queries 300] [--data-dir DIR] [--intent on,off]
    python -m bench.latency_scale --merge

One run, for one catalog size:

1. bench/multihost.py serves enough virtual MCP servers (toolsdk groups, replicated under
   renamed servers past the data) to reach ``--tools`` tools, echo tools included.
2. Build: a `toolgate serve` gets them through ``POST /admin/import`` (sync + embedding) in
   its data dir; its peak RSS (VmHWM) is read when the build is done. With ``--data-dir`` an
   already built dir is reused (the build figures come from its ``latency_scale_build.json``).
   The upstreams are hosted for the build only.
3. Per intent mode: a fresh `toolgate serve` on that dir (a restart: stored vectors are
   adopted; its start-up re-sync fails fast with the upstreams down). The benchmark process
   opens a copy of the data dir with the gateway's own runtime, then per query, in an order
   that rotates, times ``find_tools`` through /mcp (a real SDK client over streamable HTTP),
   the retrieval call alone (``Catalog.search``: query preparation, lock, stages 1-3) and the
   floor (query embedding alone + one exact vector scan), so that all three see the same
   machine state. /metrics before and after gives the gateway's own mean time per stage, and
   /proc its CPU time; VmHWM is read after the queries (peak while serving).

Ratios are to the floor's p50 (p99 to its p99) over the same queries.
Saves bench/results/latency_scale_<size>.json and merges every size into latency_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from bench.common import (
    RESULTS,
    ROOT,
    TOOLGATE,
    free_port,
    machine,
    save,
    shared_data,
    summary_ms,
    wait_ready_line,
)
from bench.multihost import DEFAULT_DATA, Catalog, load_groups

BUILD_MARKER = "latency_scale_build.json"
LIMIT = 5  # the gateway's find_limit_default: what a client gets without asking
INTENT_MODES = {"on": "builtin", "off": "off"}
TARGETS_P50_MS = {10_000: 20.0, 100_000: 30.0}  # issue 7 item 3, through /mcp
Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]  # (sample name, labels) -> value


def servers_for(tools: int, data: Path = DEFAULT_DATA) -> tuple[int, int]:
    """The fewest virtual servers whose tools (each server's echo tool included) reach `tools`."""
    groups = load_groups(data)
    per_round = sum(len(g.tools) + 1 for g in groups)
    count = max(0, tools // per_round - 1) * len(groups)  # whole rounds first: fast for 100k
    while True:
        count += 1
        total = Catalog(groups=groups, count=count).tool_count() + count
        if total >= tools:
            return count, total


def load_queries(count: int, warmup: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded sample of ToolBench queries to time, and a disjoint one to warm up with."""
    path = shared_data() / "toolbench" / "queries.jsonl"
    texts = [json.loads(line)["query"] for line in path.read_text().splitlines() if line.strip()]
    random.Random(seed).shuffle(texts)
    timed = texts[:count]
    rest = texts[count:] or texts
    return timed, rest[:warmup]


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (clock ticks in /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def git_state() -> str:
    """The checkout measured: commit, and whether the tree had uncommitted changes."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return described.stdout.strip()


class Gateway:
    """`toolgate serve` on a data dir, like bench.common.GatewayProcess but with a start-up
    timeout that fits adopting 100k stored vectors (the port opens only once that is done)."""

    def __init__(self, data_dir: Path, env: dict[str, str], ready_timeout: float = 1800) -> None:
        port = free_port()
        full_env = {
            **os.environ,
            "TOOLGATE_DATA_DIR": str(data_dir),
            "TOOLGATE_SYNC_INTERVAL_S": "0",
            "TOOLGATE_SYNC_CONCURRENCY": "16",
            "TOOLGATE_AUTH": "off",
            "TOOLGATE_UPSTREAM_ALLOW_PRIVATE": "127.0.0.0/8",
            "TOOLGATE_LOG_LEVEL": "WARNING",
            **env,
        }
        full_env.pop("DATABASE_URL", None)
        full_env.pop("REDIS_URL", None)  # conversation memory in process, as embedded defaults do
        self.started = datetime.now(UTC)
        begun = time.perf_counter()
        self.process = subprocess.Popen([TOOLGATE, "serve", "--port", str(port)], cwd=ROOT, env=full_env)
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=None)
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode} before it was ready")
            try:
                if self.http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("gateway did not become ready")
            time.sleep(0.2)
        self.ready_s = round(time.perf_counter() - begun, 2)

    def wait_synced(self, servers: int, timeout: float = 1800) -> float:
        """Seconds until every server has a sync recorded since this process started (the
        start-up sync runs in the background and would otherwise share the cores)."""
        begun = time.perf_counter()
        while time.perf_counter() - begun < timeout:
            rows = self.http.get("/admin/servers").json()
            done = sum(
                1
                for row in rows
                if row["last_sync_at"] and datetime.fromisoformat(row["last_sync_at"]) >= self.started
            )
            if len(rows) >= servers and done >= len(rows):
                return round(time.perf_counter() - begun, 2)
            time.sleep(min(5.0, 0.5 + servers / 2000))  # listing 10k servers is not free
        raise RuntimeError(f"start-up sync not done after {timeout} s")

    def metrics(self) -> Metrics:
        text = self.http.get("/metrics").text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(120)


def stage_means_ms(before: Metrics, after: Metrics) -> dict[str, float]:
    """Mean ms per find_tools (and per stage, and per /mcp HTTP request) over the timed queries,
    from the gateway's own histograms: sum and count deltas."""
    means: dict[str, float] = {}

    def delta(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    for (name, labels), _ in after.items():
        if not name.endswith("_sum"):
            continue
        base = name.removesuffix("_sum")
        count = delta((f"{base}_count", labels))
        if count <= 0:
            continue
        label = dict(labels)
        if base == "toolgate_find_tools_duration_seconds":
            key = "find_tools"
        elif base == "toolgate_find_tools_stage_duration_seconds":
            key = f"stage_{label['stage']}"
        elif base == "toolgate_http_request_duration_seconds" and label.get("route", "").startswith("/mcp"):
            key = f"http_{label.get('method', '')}_{label['route']}"
        else:
            continue
        means[key] = round(delta((name, labels)) / count * 1000, 3)
    return means


@dataclass
class Timings:
    """Seconds per timed query, all three measured query by query in one loop."""

    mcp: list[float] = field(default_factory=list)
    retrieval: list[float] = field(default_factory=list)
    floor: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)  # the retrieval call's own
    errors: list[str] = field(default_factory=list)
    load_s: float = 0.0  # opening the mirror in this process
    # CPU seconds per query (all threads of this process): steadier than wall time when the
    # cores are shared. For /mcp this is the client's side; the gateway's is read from /proc.
    cpu_client: list[float] = field(default_factory=list)
    cpu_retrieval: list[float] = field(default_factory=list)
    cpu_floor: list[float] = field(default_factory=list)


async def time_queries(
    url: str,
    mirror: Path,
    intent: str,
    timed: Sequence[str],
    warmup: Sequence[str],
    scrape: Callable[[], Metrics],
    gateway_pid: int,
) -> tuple[Timings, Metrics, float]:
    """Per query: find_tools through /mcp (a real SDK client over streamable HTTP), the
    retrieval call alone (``Catalog.search`` of the gateway's own runtime, opened in this
    process on a copy of the gateway's data dir) and the floor (query embedding + one exact
    vector scan on that copy's index). Interleaved, in an order that rotates per query, so all
    three see the same machine state: the cores are shared and the load drifts. Also returns
    the gateway's metrics scraped after the warm-up."""
    # Imported here: the gateway's runtime (and a second copy of the model) only for this pass.
    from gateway.runtime import gateway_runtime
    from gateway.settings import Settings
    from retrieval.pipeline import DESCRIPTION

    settings = Settings(
        data_dir=mirror,
        intent_parser=INTENT_MODES[intent],
        sync_interval_s=0,
        log_level="WARNING",
        database_url=None,
        redis_url=None,
        qdrant_url=None,
    )
    out = Timings()
    begun = time.perf_counter()
    async with (
        gateway_runtime(settings, sync_on_start=False, follow_registry=False) as service,
        Client(f"{url}/mcp") as client,
    ):
        out.load_s = round(time.perf_counter() - begun, 2)
        catalog = service.catalog
        retriever = catalog.retriever

        async def through_mcp(query: str) -> None:
            cpu, started = time.process_time(), time.perf_counter()
            result = await client.call_tool("find_tools", {"query": query, "limit": LIMIT})
            out.mcp.append(time.perf_counter() - started)
            out.cpu_client.append(time.process_time() - cpu)
            if result.is_error or not (result.structured_content or {}).get("tools"):
                out.errors.append(f"{query[:60]}: {result.content!r}"[:200])

        async def retrieval(query: str) -> None:
            cpu, started = time.process_time(), time.perf_counter()
            found = await catalog.search(query, LIMIT)
            out.retrieval.append(time.perf_counter() - started)
            out.cpu_retrieval.append(time.process_time() - cpu)
            for stage, spent in found.timings.items():
                out.stages.setdefault(stage, []).append(spent)

        async def floor(query: str) -> None:
            cpu, started = time.process_time(), time.perf_counter()
            vector = retriever.embed_query(query)
            retriever.index.search(DESCRIPTION, vector, LIMIT, None, exact=True)
            out.floor.append(time.perf_counter() - started)
            out.cpu_floor.append(time.process_time() - cpu)

        steps = [through_mcp, retrieval, floor]
        for query in warmup:
            for step in steps:
                await step(query)
        out = Timings(load_s=out.load_s)  # the steps read `out` when they run: drop the warm-up
        before = await anyio.to_thread.run_sync(scrape)
        gateway_cpu = cpu_seconds(gateway_pid)
        for number, query in enumerate(timed):
            shift = number % len(steps)
            for step in steps[shift:] + steps[:shift]:
                await step(query)
        gateway_cpu = cpu_seconds(gateway_pid) - gateway_cpu
    return out, before, gateway_cpu


def _ratio(value: float, floor: float) -> float:
    return round(value / floor, 2) if floor > 0 else float("inf")


def build(data_dir: Path, host_port: int, servers: int) -> dict[str, Any]:
    """Import every virtual server into a fresh gateway on `data_dir`; the build's figures."""
    gateway = Gateway(data_dir, {"TOOLGATE_INTENT_PARSER": "off"})
    try:
        document = {
            "mcpServers": {
                f"s{i}": {"type": "http", "url": f"http://127.0.0.1:{host_port}/s/{i}/mcp"}
                for i in range(servers)
            }
        }
        started = time.perf_counter()
        imported = gateway.http.post("/admin/import", json=document)
        imported.raise_for_status()
        import_s = time.perf_counter() - started
        syncs = imported.json()["syncs"]
        index = gateway.http.get("/admin/index").json()
        figures = {
            "servers": servers,
            "servers_failed": sum(1 for r in syncs if not r["ok"]),
            "indexed_tools": index["tools"],
            "import_s": round(import_s, 1),  # sync + embedding, one request
            "embedded_per_s": round(index["embedded_since_start"] / import_s, 1),
            "rss_peak_mb": peak_rss_mb(gateway.process.pid),
            "host_port": host_port,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    finally:
        gateway.stop()
    (data_dir / BUILD_MARKER).write_text(json.dumps(figures, indent=2) + "\n")
    return figures


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def prime(data_dir: Path) -> dict[str, Any]:
    """Restart a gateway once on the built dir before it is copied: stored vectors made by
    another embedder (or export revision) are re-embedded now, once, and not again by the
    copy. Reports how long the restart took and how many tools it had to embed."""
    gateway = Gateway(data_dir, {"TOOLGATE_INTENT_PARSER": "off", "TOOLGATE_LOG_LEVEL": "ERROR"})
    try:
        index = gateway.http.get("/admin/index").json()
        return {
            "ready_s": gateway.ready_s,
            "re_embedded": index["embedded_since_start"],
            "embedder": index["embedder"],
            "rss_peak_mb": peak_rss_mb(gateway.process.pid),
        }
    finally:
        gateway.stop()


def build_with_upstreams(data_dir: Path, servers: int) -> dict[str, Any]:
    """Host the virtual servers for as long as the build takes."""
    host_port = free_port()
    host = subprocess.Popen(
        [sys.executable, "-m", "bench.multihost", "--servers", str(servers), "--port", str(host_port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_ready_line(host)
        return build(data_dir, host_port, servers)
    finally:
        host.terminate()
        host.wait(60)


def measure_mode(
    data_dir: Path, mirror: Path, intent: str, servers: int, timed: Sequence[str], warmup: Sequence[str]
) -> dict[str, Any]:
    """One row: a restarted gateway on `data_dir`, timed against its twin on `mirror`.

    The upstreams are down by now: the gateway's start-up re-sync of every server then fails
    fast (connection refused; the tools stay, find_tools never asks upstreams) instead of
    sharing the cores with the timed queries for minutes at 100k tools."""
    gateway = Gateway(
        data_dir, {"TOOLGATE_INTENT_PARSER": INTENT_MODES[intent], "TOOLGATE_LOG_LEVEL": "ERROR"}
    )
    try:
        startup_sync_s = gateway.wait_synced(servers)
        rss_ready = peak_rss_mb(gateway.process.pid)
        local, before, gateway_cpu = anyio.run(
            time_queries, gateway.url, mirror, intent, timed, warmup, gateway.metrics, gateway.process.pid
        )
        gateway_means = stage_means_ms(before, gateway.metrics())
        rss_serving = peak_rss_mb(gateway.process.pid)
        restart_s = gateway.ready_s
    finally:
        gateway.stop()
    mcp, retrieval, floor = summary_ms(local.mcp), summary_ms(local.retrieval), summary_ms(local.floor)
    return {
        "intent": intent,
        "queries": len(timed),
        "errors": len(local.errors),
        "error_examples": local.errors[:3],
        "mcp_ms": mcp,
        "retrieval_ms": retrieval,
        "floor_ms": floor,
        "ratio_to_floor": {
            "mcp_p50": _ratio(mcp["p50"], floor["p50"]),
            "mcp_p99": _ratio(mcp["p99"], floor["p99"]),
            "retrieval_p50": _ratio(retrieval["p50"], floor["p50"]),
            "retrieval_p99": _ratio(retrieval["p99"], floor["p99"]),
        },
        "retrieval_stages_p50_ms": {k: summary_ms(v)["p50"] for k, v in local.stages.items()},
        "cpu_ms_per_query": {
            "mcp_gateway_mean": round(gateway_cpu / len(timed) * 1000, 2),
            "mcp_client_p50": summary_ms(local.cpu_client)["p50"],
            "retrieval_p50": summary_ms(local.cpu_retrieval)["p50"],
            "floor_p50": summary_ms(local.cpu_floor)["p50"],
        },
        "gateway_mean_ms": gateway_means,
        "rss_mb": {"ready_peak": rss_ready, "serving_peak": rss_serving},
        "restart_s": restart_s,
        "startup_sync_s": startup_sync_s,
        "mirror_load_s": local.load_s,
    }


def run(
    tools: int,
    *,
    queries: int = 300,
    warmup: int = 20,
    intents: Sequence[str] = ("on", "off"),
    data_dir: Path | None = None,
    seed: int = 13,
) -> dict[str, Any]:
    """Measure one catalog size; the result dict (not saved)."""
    servers, total = servers_for(tools)
    timed, warm = load_queries(queries, warmup, seed)
    scratch = None
    if data_dir is None:
        scratch = Path(tempfile.mkdtemp(prefix="toolgate-latency-"))
        data_dir = scratch
    data_dir.mkdir(parents=True, exist_ok=True)
    marker = data_dir / BUILD_MARKER
    built: dict[str, Any] | None = json.loads(marker.read_text()) if marker.exists() else None
    if built is not None and built["servers"] != servers:
        raise SystemExit(f"{data_dir} holds a build of {built['servers']} servers, not {servers}")
    load_start = os.getloadavg()
    mirror_root = Path(tempfile.mkdtemp(prefix="toolgate-latency-mirror-"))
    try:
        reused = built is not None
        if built is not None and _listening(int(built["host_port"])):
            # Something else listens where the registered upstreams were: a start-up re-sync
            # against it could replace the catalog. Rebuild elsewhere instead.
            raise SystemExit(f"port {built['host_port']} of the build's upstreams is in use now")
        if built is None:
            print(f"building {servers} servers, {total} tools in {data_dir}", file=sys.stderr, flush=True)
            built = build_with_upstreams(data_dir, servers)
            print(f"built: {built}", file=sys.stderr, flush=True)
        primed = prime(data_dir)
        # The twin the in-process timings run on (the embedded index admits one process).
        mirror = mirror_root / "data"
        copy_started = time.perf_counter()
        shutil.copytree(data_dir, mirror)
        mirror_copy_s = round(time.perf_counter() - copy_started, 1)
        rows = []
        for intent in intents:
            row = measure_mode(data_dir, mirror, intent, servers, timed, warm)
            print(
                f"{total} tools, intent {intent}: /mcp p50 {row['mcp_ms']['p50']} ms,"
                f" retrieval p50 {row['retrieval_ms']['p50']} ms, floor p50 {row['floor_ms']['p50']} ms",
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    finally:
        shutil.rmtree(mirror_root, ignore_errors=True)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    target = TARGETS_P50_MS.get(tools)
    return {
        "tools": total,
        "servers": servers,
        "build": {**built, "reused_data_dir": reused},
        "mirror_copy_s": mirror_copy_s,
        "first_restart": primed,
        "upstreams_while_timed": "down (hosted for the build only)",
        "checkout": git_state(),
        "rows": rows,
        "target_mcp_p50_ms": target,
        "target_met": {row["intent"]: row["mcp_ms"]["p50"] <= target for row in rows} if target else None,
        "loadavg": {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "machine": machine(),
    }


async def time_mcp_only(
    url: str, timed: Sequence[str], warmup: Sequence[str], scrape: Callable[[], Metrics], pid: int
) -> tuple[list[float], list[str], Metrics, float]:
    """find_tools through /mcp alone, for a gateway this script did not start."""
    seconds: list[float] = []
    errors: list[str] = []
    async with Client(f"{url}/mcp") as client:
        for query in warmup:
            await client.call_tool("find_tools", {"query": query, "limit": LIMIT})
        before = await anyio.to_thread.run_sync(scrape)
        cpu = cpu_seconds(pid)
        for query in timed:
            started = time.perf_counter()
            result = await client.call_tool("find_tools", {"query": query, "limit": LIMIT})
            seconds.append(time.perf_counter() - started)
            if result.is_error or not (result.structured_content or {}).get("tools"):
                errors.append(f"{query[:60]}: {result.content!r}"[:200])
        cpu = cpu_seconds(pid) - cpu
    return seconds, errors, before, cpu


def attach(url: str, pid: int, intent: str, queries: int, warmup: int, seed: int) -> dict[str, Any]:
    """One /mcp-only row against a running gateway (e.g. the one that just built a catalog):
    no restart, no in-process retrieval or floor, so no ratios; its own stage means and RSS."""
    timed, warm = load_queries(queries, warmup, seed)
    http = httpx.Client(base_url=url, timeout=None)

    def scrape() -> Metrics:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(http.get("/metrics").text)
            for sample in family.samples
        }

    try:
        index = http.get("/admin/index").json()
        load_start = os.getloadavg()
        seconds, errors, before, cpu = anyio.run(time_mcp_only, url, timed, warm, scrape, pid)
        means = stage_means_ms(before, scrape())
    finally:
        http.close()
    return {
        "tools": index["tools"],
        "attached": {"url": url, "pid": pid, "embedder": index["embedder"], "pending": index["pending"]},
        "rows": [
            {
                "intent": intent,
                "queries": len(timed),
                "errors": len(errors),
                "error_examples": errors[:3],
                "mcp_ms": summary_ms(seconds),
                "retrieval_ms": None,
                "floor_ms": None,
                "ratio_to_floor": None,
                "cpu_ms_per_query": {"mcp_gateway_mean": round(cpu / len(timed) * 1000, 2)},
                "gateway_mean_ms": means,
                "rss_mb": {"serving_peak": peak_rss_mb(pid)},
            }
        ],
        "loadavg": {
            "start": [round(x, 2) for x in load_start],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
        "checkout": git_state(),
        "machine": machine(),
    }


def size_label(tools: int) -> str:
    return f"{tools // 1000}k" if tools >= 1000 and tools % 1000 == 0 else str(tools)


def merge() -> Path:
    """Every latency_scale_<size>.json into latency_scale.json, smallest catalog first."""
    parts = []
    for path in sorted(RESULTS.glob("latency_scale_*.json")):
        # Only per-size files (latency_scale_10k.json); others (kept earlier runs) stay out.
        if re.fullmatch(r"latency_scale_\d+k?\.json", path.name):
            parts.append(json.loads(path.read_text()))
    parts.sort(key=lambda part: int(part["tools"]))
    return save("latency_scale", {"benchmark": "latency_scale", "sizes": parts})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tools", type=int, default=10_000, help="catalog size (echo tools included)")
    parser.add_argument("--queries", type=int, default=300, help="queries timed per mode (seeded sample)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--intent", default="on,off", help="intent stage modes to measure: on, off or both")
    parser.add_argument("--data-dir", type=Path, default=None, help="build here, or reuse a build here")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--merge", action="store_true", help="only merge the per-size results")
    parser.add_argument("--attach", default=None, help="time /mcp only on this running gateway URL")
    parser.add_argument("--attach-pid", type=int, default=0, help="its process id (RSS, CPU)")
    args = parser.parse_args()
    if args.merge:
        print(f"saved {merge()}")
        return
    intents = [mode.strip() for mode in args.intent.split(",") if mode.strip()]
    if unknown := set(intents) - set(INTENT_MODES):
        raise SystemExit(f"--intent takes on and/or off, not {sorted(unknown)}")
    if args.attach:
        (mode,) = intents  # the running gateway has one mode: say which
        attached = attach(args.attach, args.attach_pid, mode, args.queries, args.warmup, args.seed)
        target = TARGETS_P50_MS.get(args.tools)
        attached["target_mcp_p50_ms"] = target
        attached["target_met"] = {mode: attached["rows"][0]["mcp_ms"]["p50"] <= target} if target else None
        command = "python -m bench.latency_scale " + " ".join(sys.argv[1:])
        path = save(
            f"latency_scale_{size_label(args.tools)}",
            {"benchmark": "latency_scale", "command": command, **attached},
        )
        print(f"{attached['rows'][0]['mcp_ms']}; saved {path}; merged {merge()}")
        return
    result = run(
        args.tools,
        queries=args.queries,
        warmup=args.warmup,
        intents=intents,
        data_dir=args.data_dir,
        seed=args.seed,
    )
    result = {
        "benchmark": "latency_scale",
        "command": "python -m bench.latency_scale " + " ".join(sys.argv[1:]),
        **result,
    }
    path = save(f"latency_scale_{size_label(args.tools)}", result)
    print(
        f"{'tools':>7} {'intent':>6} {'mcp p50':>8} {'p99':>7} {'retr p50':>9} {'p99':>7} {'floor':>6} {'x':>5}"
    )
    for row in result["rows"]:
        print(
            f"{result['tools']:>7} {row['intent']:>6} {row['mcp_ms']['p50']:>8.1f} {row['mcp_ms']['p99']:>7.1f}"
            f" {row['retrieval_ms']['p50']:>9.1f} {row['retrieval_ms']['p99']:>7.1f}"
            f" {row['floor_ms']['p50']:>6.1f} {row['ratio_to_floor']['mcp_p50']:>5.1f}"
        )
    print(f"saved {path}; merged {merge()}")


if __name__ == "__main__":
    main()
