"""Throughput: concurrent clients doing find_tools + call_tool against one gateway process.

    python -m bench.throughput [--clients 10,50,200] [--rounds 20] [--soak-s 600 --soak-clients 50]

Each client is a real SDK client (streamable HTTP, protocol 2026-07-28, its own conversation)
that repeats: find_tools for an echo task, then call_tool of the echo tool it found. The
upstream is tests/servers/echo_server.py over streamable HTTP. Reported per level: requests
per second over the level's wall time, p50/p99 of each operation, errors (a tool error or an
exception counts). Client, gateway and upstream share this machine's cores: compare levels
within one run. The gateway's RSS is sampled at the start and end of every level; `--soak-s`
then keeps `--soak-clients` clients going for that long and samples RSS every 10 s (flat memory
is the target). Saves bench/results/throughput.json.
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

QUERY = "echo the given text back unchanged"


async def one_client(
    url: str, rounds: int, finds: list[float], calls: list[float], errors: list[str]
) -> None:
    try:
        async with Client(url) as client:
            conversation = None
            for _ in range(rounds):
                started = time.perf_counter()
                arguments: dict[str, Any] = {"query": QUERY, "limit": 3}
                if conversation is not None:
                    arguments["conversation"] = conversation
                found = await client.call_tool("find_tools", arguments)
                finds.append(time.perf_counter() - started)
                payload = found.structured_content or {}
                conversation = payload.get("conversation", conversation)
                names = [card["name"] for card in payload.get("tools", [])]
                # After the first round the tool is held: the find names it in memory.held.
                names += payload.get("memory", {}).get("held", [])
                if found.is_error or "upstream__echo" not in names:
                    errors.append(f"find: {found.content!r}"[:200])
                    continue
                started = time.perf_counter()
                result = await client.call_tool(
                    "call_tool",
                    {"name": "upstream__echo", "arguments": {"text": "ping"}, "conversation": conversation},
                )
                calls.append(time.perf_counter() - started)
                if result.is_error:
                    errors.append(f"call: {result.content!r}"[:200])
    except Exception as exc:  # a client that breaks is an error of this level, not of the run
        errors.append(f"{type(exc).__name__}: {exc}"[:200])


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


async def level(url: str, clients: int, rounds: int, pid: int, soak_s: float = 0.0) -> dict[str, Any]:
    finds: list[float] = []
    calls: list[float] = []
    errors: list[str] = []
    samples: list[tuple[float, float]] = [(0.0, rss_mb(pid))]
    started = time.perf_counter()
    deadline = started + soak_s

    async def client_loop() -> None:
        # A soak repeats whole conversations of `rounds` until the deadline.
        while True:
            await one_client(url, rounds, finds, calls, errors)
            if time.perf_counter() >= deadline:
                return

    async def sample() -> None:
        while True:
            await anyio.sleep(10)
            samples.append((round(time.perf_counter() - started, 1), rss_mb(pid)))

    async with anyio.create_task_group() as group:
        if soak_s > 0:
            group.start_soon(sample)
        async with anyio.create_task_group() as workers:
            for _ in range(clients):
                workers.start_soon(client_loop)
        group.cancel_scope.cancel()
    wall = time.perf_counter() - started
    samples.append((round(wall, 1), rss_mb(pid)))
    requests = len(finds) + len(calls)
    return {
        "clients": clients,
        "rounds": rounds,
        "wall_s": round(wall, 2),
        "requests": requests,
        "requests_per_s": round(requests / wall, 1) if wall > 0 else 0.0,
        "find_ms": summary_ms(finds) if finds else None,
        "call_ms": summary_ms(calls) if calls else None,
        "errors": len(errors),
        "error_examples": errors[:5],
        "rss_mb_start": samples[0][1],
        "rss_mb_end": samples[-1][1],
        "rss_mb_samples": samples if soak_s > 0 else None,
    }


def run(
    levels: list[int],
    rounds: int,
    extra_env: dict[str, str] | None = None,
    soak: tuple[int, float] | None = None,
) -> dict[str, Any]:
    """Start an upstream and a gateway, measure every level, stop both; the result dict."""
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        env = {"TOOLGATE_INTENT_PARSER": "off", "TOOLGATE_MEMORY_CAPACITY": "1000", **(extra_env or {})}
        gateway = GatewayProcess(Path(tmp), free_port(), env)
        try:
            port = wait_ready_line(upstream)
            gateway.http.post(
                "/admin/servers",
                json={"name": "upstream", "transport": "http", "url": f"http://127.0.0.1:{port}/mcp"},
            ).raise_for_status()
            url, pid = f"{gateway.url}/mcp", gateway.process.pid
            results = [anyio.run(level, url, clients, rounds, pid) for clients in levels]
            soaked = anyio.run(level, url, soak[0], rounds, pid, soak[1]) if soak else None
        finally:
            gateway.stop()
            upstream.terminate()
            upstream.wait(30)
    return {
        "benchmark": "throughput",
        "command": "python -m bench.throughput " + " ".join(sys.argv[1:]),
        "upstream": "tests.servers.echo_server over streamable HTTP (loopback)",
        "levels": results,
        "soak": soaked,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="10,50,200", help="comma-separated concurrency levels")
    parser.add_argument("--rounds", type=int, default=20, help="find + call rounds per client")
    parser.add_argument("--soak-s", type=float, default=0.0, help="then run a soak this long (seconds)")
    parser.add_argument("--soak-clients", type=int, default=50)
    args = parser.parse_args()
    soak = (args.soak_clients, args.soak_s) if args.soak_s > 0 else None
    result = run([int(n) for n in args.clients.split(",")], args.rounds, soak=soak)
    path = save("throughput", result)
    print(
        f"{'clients':>8}{'req/s':>9}{'find p50':>10}{'find p99':>10}{'call p50':>10}{'call p99':>10}{'errors':>8}"
    )
    for row in result["levels"]:
        find, call = row["find_ms"] or {}, row["call_ms"] or {}
        print(
            f"{row['clients']:>8}{row['requests_per_s']:>9}{find.get('p50', 0):>10.1f}{find.get('p99', 0):>10.1f}"
            f"{call.get('p50', 0):>10.1f}{call.get('p99', 0):>10.1f}{row['errors']:>8}"
        )
    if result["soak"]:
        soaked = result["soak"]
        print(
            f"soak: {soaked['clients']} clients for {soaked['wall_s']} s, {soaked['requests']} requests, "
            f"{soaked['errors']} errors, RSS {soaked['rss_mb_start']} -> {soaked['rss_mb_end']} MB"
        )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
