"""Sync scale: N real streamable HTTP MCP servers (hosted by bench/multihost.py, tools from the
toolsdk registry data) imported through the admin API, synced and stored; then a re-sync with
nothing changed; then a re-sync after a fraction of tool descriptions changed upstream.

    python -m bench.sync_scale [--servers 200] [--change-fraction 0.01] [--concurrency 16]

Saves bench/results/sync_scale_<N>.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import ROOT, GatewayProcess, free_port, machine, save, wait_ready_line


def _sum(reports: list[dict[str, Any]], key: str) -> int:
    return sum(int(r[key]) for r in reports)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--change-fraction", type=float, default=0.01)
    parser.add_argument("--concurrency", type=int, default=16, help="TOOLGATE_SYNC_CONCURRENCY")
    args = parser.parse_args()

    host = subprocess.Popen(
        [sys.executable, "-m", "bench.multihost", "--servers", str(args.servers), "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: dict[str, Any] = {
        "benchmark": "sync_scale",
        "command": "python -m bench.sync_scale " + " ".join(sys.argv[1:]),
        "servers": args.servers,
        "sync_concurrency": args.concurrency,
    }
    with tempfile.TemporaryDirectory() as tmp:
        gateway = GatewayProcess(
            Path(tmp),
            free_port(),
            {"TOOLGATE_SYNC_CONCURRENCY": str(args.concurrency), "TOOLGATE_UPSTREAM_IDLE_S": "0"},
        )
        try:
            port = wait_ready_line(host)
            document = {
                "mcpServers": {
                    f"s{i}": {"type": "http", "url": f"http://127.0.0.1:{port}/s/{i}/mcp"}
                    for i in range(args.servers)
                }
            }
            started = time.perf_counter()
            imported = gateway.http.post("/admin/import", json=document)
            imported.raise_for_status()
            body = imported.json()
            result["import_and_sync_s"] = round(time.perf_counter() - started, 3)
            syncs = body["syncs"]
            result["first_sync"] = {
                "servers_ok": sum(1 for r in syncs if r["ok"]),
                "servers_failed": sum(1 for r in syncs if not r["ok"]),
                "tools_created": _sum(syncs, "created"),
                "errors": sorted({r["error"] for r in syncs if r["error"]})[:5],
            }

            started = time.perf_counter()
            again = gateway.http.post("/admin/sync")
            again.raise_for_status()
            result["unchanged_resync_s"] = round(time.perf_counter() - started, 3)
            reports = again.json()
            result["unchanged_resync"] = {
                "updated": _sum(reports, "updated"),
                "created": _sum(reports, "created"),
                "deleted": _sum(reports, "deleted"),
                "unchanged": _sum(reports, "unchanged"),
            }

            mutated = httpx.post(
                f"http://127.0.0.1:{port}/admin/mutate", params={"fraction": args.change_fraction, "seed": 7}
            )
            mutated.raise_for_status()
            changed = int(mutated.json()["count"])
            started = time.perf_counter()
            third = gateway.http.post("/admin/sync")
            third.raise_for_status()
            result["changed_resync_s"] = round(time.perf_counter() - started, 3)
            reports = third.json()
            result["changed_resync"] = {
                "tools_changed_upstream": changed,
                "updated": _sum(reports, "updated"),
                "unchanged": _sum(reports, "unchanged"),
            }
            tools = gateway.http.get("/admin/tools", params={"limit": 1}).json()["total"]
            result["tools_stored"] = tools
        finally:
            gateway.stop()
            host.terminate()
            host.wait(30)
    result["targets"] = {"import_and_sync_le_10s_at_200": result["import_and_sync_s"] <= 10.0}
    result["machine"] = machine()
    path = save(f"sync_scale_{args.servers}", result)
    print(
        f"{args.servers} servers, {result['tools_stored']} tools: import+sync {result['import_and_sync_s']} s, "
        f"unchanged re-sync {result['unchanged_resync_s']} s (updated {result['unchanged_resync']['updated']}), "
        f"re-sync after {result['changed_resync']['tools_changed_upstream']} changes "
        f"{result['changed_resync_s']} s (updated {result['changed_resync']['updated']})"
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
