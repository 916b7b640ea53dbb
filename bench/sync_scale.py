"""Sync scale: N real streamable HTTP MCP servers (hosted by bench/multihost.py, tools from the
toolsdk registry data) imported through the admin API, synced, stored and indexed; then a
re-sync with nothing changed; then a re-sync after a fraction of tool descriptions changed
upstream. The embedder's own throughput on a sample of the same tool texts is measured in
this process before and after, as the floor the gateway's indexing is compared with.

    python -m bench.sync_scale [--servers 200] [--change-fraction 0.01] [--concurrency 16]

Sync and indexing are timed apart from the gateway's own account (`GET /admin/index`,
`refresh`): the catalog reloads (and embeds) once, after every server has synced, so
`sync_s` is the import request's time minus the seconds it spent reloading. Re-embeds per
phase are the gateway's `embedded_since_start` counter, read once the catalog is idle.
Saves bench/results/sync_scale_<N>.json.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, GatewayProcess, free_port, machine, save, wait_ready_line
from bench.multihost import DEFAULT_DATA, Catalog, load_groups

_REQUEST_TIMEOUT_S = 3600  # an import of 2,000 servers embeds ~22k tools before it answers
TARGETS = {"sync_s_le": 60.0, "indexing_ratio_ge": 0.85, "unchanged_resync_s_le": 15.0}


def tool_texts(servers: int, data: Path = DEFAULT_DATA) -> list[str]:
    """What the gateway embeds for the tools of `servers` virtual servers named s0, s1, ...
    (the import below names them so): the same texts, built by the same function."""
    from retrieval.documents import ToolText
    from retrieval.pipeline import embedding_text

    catalog = Catalog(groups=load_groups(data), count=servers)
    texts = []
    for index in range(servers):
        for tool in catalog.tools(index):
            text = ToolText(
                tool_id=tool.name,
                server=f"s{index}",
                server_description="",
                name=tool.name,
                title=tool.title or "",
                description=tool.description or "",
                input_schema=tool.input_schema,
                examples=(),
            )
            texts.append(embedding_text(text))
    return texts


class EmbedderFloor:
    """The gateway's embedder (same settings), loaded here: texts/s on a fixed sample."""

    def __init__(self, texts: list[str], sample: int) -> None:
        from gateway.retrieval_setup import build_embedder
        from gateway.settings import Settings

        self.embedder = build_embedder(Settings())
        self.sample = random.Random(0).sample(texts, min(sample, len(texts)))
        self.embedder.encode(self.sample[:64])  # warm-up: the runtime's first call allocates

    def texts_per_s(self) -> tuple[float, float]:
        """Texts per second of wall time and per second of this process's CPU time (the
        latter is what other load on a shared machine disturbs least)."""
        started, cpu = time.perf_counter(), time.process_time()
        self.embedder.encode(self.sample, batch_size=64)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        return len(self.sample) / wall, len(self.sample) / cpu


def _sum(reports: list[dict[str, Any]], key: str) -> int:
    return sum(int(r[key]) for r in reports)


def _memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak resident) and VmRSS of a process, in kB."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0])
    return fields


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(http: httpx.Client, timeout: float = 1800, quiet_s: float = 3.0) -> dict[str, Any]:
    """The index stats once the catalog is idle: no reload running, nothing waiting to be
    embedded, and no new reload for `quiet_s` (longer than the registry watcher's 2 s poll,
    whose reload follows every change; pushed syncs may land too)."""
    deadline = time.monotonic() + timeout
    idle_since: float | None = None
    count = -1
    while time.monotonic() < deadline:
        stats: dict[str, Any] = http.get("/admin/index").raise_for_status().json()
        refresh = stats["refresh"]
        if refresh["running"] or stats["pending"] or refresh["refreshes"] != count:
            idle_since, count = None, refresh["refreshes"]
        if not refresh["running"] and not stats["pending"]:
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since >= quiet_s:
                return stats
        time.sleep(0.25)
    raise RuntimeError("the gateway's catalog did not settle in time")


def _timed(http: httpx.Client, path: str, **kwargs: Any) -> tuple[float, Any, tuple[float, float]]:
    """Seconds, JSON body and the monotonic window of one POST."""
    opened = time.monotonic()
    response = http.post(path, timeout=_REQUEST_TIMEOUT_S, **kwargs)
    response.raise_for_status()
    closed = time.monotonic()
    return closed - opened, response.json(), (opened, closed)


def reloads_within(stats: dict[str, Any], window: tuple[float, float]) -> list[dict[str, Any]]:
    """The catalog reloads that ran inside a request's window (both stamped with the
    machine-wide monotonic clock): the registry watcher's later reloads are left out."""
    opened, closed = window
    return [r for r in stats["refresh"]["recent"] if r["started_at"] >= opened and r["finished_at"] <= closed]


def run(
    servers: int, *, change_fraction: float = 0.01, concurrency: int = 16, sample: int = 1000
) -> dict[str, Any]:
    """The whole benchmark against fresh processes; returns the result document."""
    texts = tool_texts(servers)
    floor = EmbedderFloor(texts, sample)
    load_before = os.getloadavg()
    floor_before, floor_cpu_before = floor.texts_per_s()
    host = subprocess.Popen(
        [sys.executable, "-m", "bench.multihost", "--servers", str(servers), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: dict[str, Any] = {"benchmark": "sync_scale", "servers": servers, "sync_concurrency": concurrency}
    try:
        port = wait_ready_line(host)
        with tempfile.TemporaryDirectory() as tmp:
            gateway = GatewayProcess(
                Path(tmp),
                free_port(),
                {"TOOLGATE_SYNC_CONCURRENCY": str(concurrency), "TOOLGATE_UPSTREAM_IDLE_S": "0"},
            )
            try:
                result.update(_phases(gateway, host.pid, port, servers, change_fraction))
            finally:
                gateway.stop()
    finally:
        host.terminate()
        host.wait(30)
    floor_after, floor_cpu_after = floor.texts_per_s()
    floor_mean = (floor_before + floor_after) / 2
    floor_cpu = (floor_cpu_before + floor_cpu_after) / 2
    result["embedder"] = {
        "model_id": floor.embedder.model_id,
        "sample_texts": len(floor.sample),
        "texts_per_s_before": round(floor_before, 1),
        "texts_per_s_after": round(floor_after, 1),
        "texts_per_s_mean": round(floor_mean, 1),
        "texts_per_cpu_s_mean": round(floor_cpu, 1),
    }
    indexing = result["indexing"]
    indexing["ratio_to_embedder"] = round(indexing["tools_per_s"] / floor_mean, 3)
    indexing["cpu_ratio_to_embedder"] = round(indexing["tools_per_cpu_s"] / floor_cpu, 3)
    result["loadavg_before_after"] = [round(x, 2) for x in (*load_before[:1], *os.getloadavg()[:1])]
    result["same_embedder"] = floor.embedder.model_id == result.pop("gateway_embedder")
    result["targets"] = {
        "sync_s_le_60": result["sync_s"] <= TARGETS["sync_s_le"],
        "indexing_ge_85pct_of_embedder": indexing["ratio_to_embedder"] >= TARGETS["indexing_ratio_ge"],
        "unchanged_resync_s_le_15": result["unchanged_resync_s"] <= TARGETS["unchanged_resync_s_le"],
        "unchanged_resync_embeds_nothing": result["unchanged_resync"]["embedded"] == 0,
        "changed_resync_embeds_only_changed": (
            result["changed_resync"]["embedded"] == result["changed_resync"]["tools_changed_upstream"]
        ),
    }
    result["machine"] = machine()
    return result


def _phases(
    gateway: GatewayProcess, host_pid: int, port: int, servers: int, change_fraction: float
) -> dict[str, Any]:
    http = gateway.http
    pid = gateway.process.pid
    out: dict[str, Any] = {}
    start = settle(http)
    out["gateway_embedder"] = start["embedder"]
    document = {
        "mcpServers": {
            f"s{i}": {"type": "http", "url": f"http://127.0.0.1:{port}/s/{i}/mcp"} for i in range(servers)
        }
    }

    # 1. Import: register, sync every server, then one catalog reload that embeds everything.
    cpu = cpu_s(pid), cpu_s(host_pid)
    elapsed, body, window = _timed(http, "/admin/import", json=document)
    cpu = cpu_s(pid) - cpu[0], cpu_s(host_pid) - cpu[1]
    after = settle(http)
    reloads = reloads_within(after, window)
    indexing_s = sum(r["duration_s"] for r in reloads)
    indexing_cpu_s = sum(r["cpu_s"] for r in reloads)
    # CPU seconds the sync cost, which other load on a shared machine does not inflate much.
    out["sync_cpu_s"] = {"gateway": round(cpu[0] - indexing_cpu_s, 2), "upstreams": round(cpu[1], 2)}
    embedded = sum(r["embedded"] for r in reloads)
    syncs = body["syncs"]
    out["import_and_sync_s"] = round(elapsed, 3)
    out["sync_s"] = round(elapsed - indexing_s, 3)
    out["first_sync"] = {
        "servers_ok": sum(1 for r in syncs if r["ok"]),
        "servers_failed": sum(1 for r in syncs if not r["ok"]),
        "tools_created": _sum(syncs, "created"),
        "errors": sorted({r["error"] for r in syncs if r["error"]})[:5],
    }
    out["indexing"] = {
        "indexing_s": round(indexing_s, 3),
        "embed_s": round(sum(r["embed_s"] for r in reloads), 3),
        "tools_embedded": embedded,
        "tools_embedded_since_start": after["embedded_since_start"] - start["embedded_since_start"],
        "tools_per_s": round(embedded / indexing_s, 1) if indexing_s > 0 else 0.0,
        "cpu_s": round(indexing_cpu_s, 3),
        "tools_per_cpu_s": round(embedded / indexing_cpu_s, 1) if indexing_cpu_s > 0 else 0.0,
        "reloads": len(reloads),
        "reloads_since_start": after["refresh"]["refreshes"] - start["refresh"]["refreshes"],
        "reload": reloads[-1] if reloads else {},
    }
    out["rss_mb_after_index"] = round(_memory_kb(pid)["VmRSS"] / 1024, 1)

    # 2. Re-sync with nothing changed upstream: must embed nothing.
    cpu = cpu_s(pid), cpu_s(host_pid)
    elapsed, reports, window = _timed(http, "/admin/sync")
    cpu = cpu_s(pid) - cpu[0], cpu_s(host_pid) - cpu[1]
    settled = settle(http)
    out["unchanged_resync_s"] = round(elapsed, 3)
    out["unchanged_resync_cpu_s"] = {"gateway": round(cpu[0], 2), "upstreams": round(cpu[1], 2)}
    out["unchanged_resync"] = {
        "servers_ok": sum(1 for r in reports if r["ok"]),
        "updated": _sum(reports, "updated"),
        "created": _sum(reports, "created"),
        "deleted": _sum(reports, "deleted"),
        "unchanged": _sum(reports, "unchanged"),
        "embedded": settled["embedded_since_start"] - after["embedded_since_start"],
        "reloads_in_request": len(reloads_within(settled, window)),
        "reloads_since": settled["refresh"]["refreshes"] - after["refresh"]["refreshes"],
        "later_reloads": [r for r in settled["refresh"]["recent"] if r["started_at"] > window[1]][-3:],
    }

    # 3. A fraction of descriptions changed upstream (servers also push list_changed, which
    # the gateway follows): only those tools may be re-embedded.
    mutated = httpx.post(
        f"http://127.0.0.1:{port}/admin/mutate", params={"fraction": change_fraction, "seed": 7}, timeout=60
    )
    mutated.raise_for_status()
    changed = int(mutated.json()["count"])
    mutated_at = time.monotonic()
    elapsed, reports, window = _timed(http, "/admin/sync")
    final = settle(http)
    out["changed_resync_s"] = round(elapsed, 3)
    # From the change upstream to a settled catalog, the settle's quiet period left out.
    out["changed_until_settled_s"] = round(time.monotonic() - mutated_at - 3.0, 3)
    out["changed_resync"] = {
        "tools_changed_upstream": changed,
        # Pushed syncs may have taken some changes before this sync saw them.
        "updated_by_this_sync": _sum(reports, "updated"),
        "embedded": final["embedded_since_start"] - settled["embedded_since_start"],
        "reloads_since": final["refresh"]["refreshes"] - settled["refresh"]["refreshes"],
        "reloads_in_request": reloads_within(final, window),
    }
    out["tools_stored"] = http.get("/admin/tools", params={"limit": 1}).raise_for_status().json()["total"]
    out["tools_indexed"] = final["tools"]
    memory = _memory_kb(pid)
    out["gateway_peak_rss_mb"] = round(memory["VmHWM"] / 1024, 1)
    out["gateway_rss_mb_end"] = round(memory["VmRSS"] / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--change-fraction", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, default=16, help="TOOLGATE_SYNC_CONCURRENCY")
    parser.add_argument("--sample", type=int, default=1000, help="texts for the embedder's own throughput")
    args = parser.parse_args()
    result = {
        "command": "python -m bench.sync_scale " + " ".join(sys.argv[1:]),
        **run(
            args.servers,
            change_fraction=args.change_fraction,
            concurrency=args.concurrency,
            sample=args.sample,
        ),
    }
    path = save(f"sync_scale_{args.servers}", result)
    indexing = result["indexing"]
    print(
        f"{args.servers} servers, {result['tools_stored']} tools: sync {result['sync_s']} s "
        f"(import+sync+index {result['import_and_sync_s']} s), indexing {indexing['tools_embedded']} tools in "
        f"{indexing['indexing_s']} s = {indexing['tools_per_s']}/s, {indexing['ratio_to_embedder']:.0%} of the "
        f"embedder's {result['embedder']['texts_per_s_mean']}/s; unchanged re-sync {result['unchanged_resync_s']} s "
        f"(embedded {result['unchanged_resync']['embedded']}); after {result['changed_resync']['tools_changed_upstream']} "
        f"changes {result['changed_resync_s']} s (embedded {result['changed_resync']['embedded']}); "
        f"peak RSS {result['gateway_peak_rss_mb']} MB"
    )
    print(f"targets: {result['targets']}")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
