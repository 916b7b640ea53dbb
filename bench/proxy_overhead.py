"""Proxy overhead: `tools/call` of an echo tool on a streamable HTTP upstream, direct vs through
the gateway, alternating call by call in one run, one client session each.

    python -m bench.proxy_overhead [--calls 1000] [--warmup 50]

Saves bench/results/proxy_overhead.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from bench.common import GatewayProcess, free_port, machine, save, summary_ms, wait_ready_line

ARGS = {"text": "ping"}


async def measure(direct_url: str, gateway_url: str, calls: int, warmup: int) -> dict[str, list[float]]:
    direct: list[float] = []
    through: list[float] = []
    async with Client(direct_url) as d, Client(gateway_url) as g:
        for _ in range(warmup):
            await d.call_tool("echo", ARGS)
            await g.call_tool("call_tool", {"name": "upstream__echo", "arguments": ARGS})
        for i in range(calls):
            # Alternate which goes first so neither side always follows the other's cache effects.
            order = (0, 1) if i % 2 == 0 else (1, 0)
            for side in order:
                started = time.perf_counter()
                if side == 0:
                    result = await d.call_tool("echo", ARGS)
                    direct.append(time.perf_counter() - started)
                else:
                    result = await g.call_tool("call_tool", {"name": "upstream__echo", "arguments": ARGS})
                    through.append(time.perf_counter() - started)
                if result.is_error:
                    raise RuntimeError(f"call failed: {result.content}")
    return {"direct": direct, "gateway": through}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()

    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        gateway = GatewayProcess(Path(tmp), free_port())
        try:
            port = wait_ready_line(upstream)
            upstream_url = f"http://127.0.0.1:{port}/mcp"
            registered = gateway.http.post(
                "/admin/servers", json={"name": "upstream", "transport": "http", "url": upstream_url}
            )
            registered.raise_for_status()
            samples = anyio.run(measure, upstream_url, f"{gateway.url}/mcp", args.calls, args.warmup)
        finally:
            gateway.stop()
            upstream.terminate()
            upstream.wait(30)

    added = [g - d for g, d in zip(samples["gateway"], samples["direct"], strict=True)]
    direct, through, diff = summary_ms(samples["direct"]), summary_ms(samples["gateway"]), summary_ms(added)
    result: dict[str, Any] = {
        "benchmark": "proxy_overhead",
        "command": "python -m bench.proxy_overhead " + " ".join(sys.argv[1:]),
        "calls": args.calls,
        "warmup": args.warmup,
        "upstream": "tests.servers.echo_server over streamable HTTP (loopback)",
        "direct_ms": direct,
        "gateway_ms": through,
        "added_ms": diff,
        "added_p50_over_direct_p50": round(through["p50"] / direct["p50"] - 1, 3),
        "targets": {
            "added_p50_le_direct_p50": (through["p50"] - direct["p50"]) <= direct["p50"],
            "added_p99_le_2x_direct_p99": (through["p99"] - direct["p99"]) <= 2 * direct["p99"],
        },
        "machine": machine(),
    }
    path = save("proxy_overhead", result)
    print(f"{'':10}{'p50':>9}{'p99':>9}{'mean':>9}  (ms, {args.calls} calls each, alternating)")
    for label, stats in (("direct", direct), ("gateway", through), ("added", diff)):
        print(f"{label:10}{stats['p50']:9.2f}{stats['p99']:9.2f}{stats['mean']:9.2f}")
    print(f"targets: {result['targets']}\nsaved {path}")


if __name__ == "__main__":
    main()
