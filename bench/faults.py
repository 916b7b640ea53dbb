"""Upstream fault injection: one real gateway, a faulty upstream over stdio and over HTTP, and a
healthy conversation running beside every fault.

    python -m bench.faults [--rounds N] [--huge-mb 50] [--call-timeout 1.5]

For each fault (tests/servers/faulty_server.py: crash, hang, garbage, huge, bad_output,
change_list, vanish) it records what the client got (a tool error and its message, or the
result), how long it took, whether the healthy conversation kept answering meanwhile, whether
the faulty server answers again afterwards, and the gateway's child processes, open file
descriptors and TCP sockets before and after (they must come back to the baseline). Saves
bench/results/faults.json. tests/test_faults.py runs one round as a smoke test.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client

from bench.common import ROOT, GatewayProcess, free_port, machine, save, summary_ms, wait_ready_line


@dataclass(frozen=True)
class Fault:
    """One fault: the tool to call, and what a correct gateway answers."""

    server: str  # "faulty" (stdio) or "faultyweb" (streamable HTTP)
    tool: str
    expect: str  # a regex the error text must match; "" means the call must succeed
    arguments: dict[str, Any] = field(default_factory=dict)
    kills_http: bool = False  # the HTTP server process is gone afterwards: restart it


def faults(huge_mb: float) -> list[Fault]:
    """The fault matrix, over both transports."""
    matrix: list[Fault] = []
    for server in ("faulty", "faultyweb"):
        web = server == "faultyweb"
        matrix += [
            Fault(server, "crash", r"closed the connection|did not answer|failed during", kills_http=web),
            Fault(server, "hang", r"did not answer 'hang' within"),
            Fault(server, "garbage", r"not JSON-RPC" if web else r"did not answer 'garbage'.*not JSON-RPC"),
            Fault(server, "huge", r"TOOLGATE_MAX_RESULT_BYTES", {"mb": huge_mb}),
            Fault(server, "bad_output", r"breaks its own output schema"),
            Fault(server, "change_list", ""),
            Fault(server, "vanish", "", kills_http=web),
        ]
    return matrix


# -- process accounting (Linux /proc) ----------------------------------------------------------


def children(pid: int) -> set[int]:
    """Live descendants of `pid` (zombies excluded)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _socket_inodes(pid: int) -> tuple[int, set[str]]:
    fds, inodes = 0, set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        fds += 1
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return fds, inodes


def resources(pid: int) -> dict[str, int]:
    """Children, open file descriptors and TCP sockets (any state) of the process."""
    fds, inodes = _socket_inodes(pid)
    tcp = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        tcp += sum(1 for row in rows if row.split()[9] in inodes)
    return {"children": len(children(pid)), "fds": fds, "tcp": tcp}


async def settle(pid: int, baseline: dict[str, int], timeout: float) -> dict[str, int]:  # noqa: ASYNC109
    """Poll until every count is back at or under the baseline, or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        now = resources(pid)
        if all(now[k] <= baseline[k] for k in baseline) or time.monotonic() > deadline:
            return now
        await anyio.sleep(0.1)


# -- the upstreams ------------------------------------------------------------------------------


class HttpFaulty:
    """The HTTP faulty server on a fixed port, restartable after it died."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def start(self) -> None:
        args = ["-m", "tests.servers.faulty_server", "--transport", "http", "--port", str(self.port)]
        self.process = subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        wait_ready_line(self.process, timeout=30)

    def wait_exit(self, timeout: float = 10) -> None:
        if self.process is not None:
            self.process.wait(timeout)

    def ensure_running(self) -> bool:
        """Restart it if it exited; True when it had to."""
        if self.process is not None and self.process.poll() is None:
            return False
        self.start()
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _register(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/admin/servers", json=body)
    if response.status_code != 201 or response.json()["status"] != "ok":
        raise RuntimeError(f"registering {body['name']} failed: {response.text}")


def register_upstreams(http: httpx.Client, web: HttpFaulty) -> None:
    python, cwd = sys.executable, str(ROOT)
    _register(
        http, {"name": "faulty", "command": python, "args": ["-m", "tests.servers.faulty_server"], "cwd": cwd}
    )
    _register(http, {"name": "faultyweb", "transport": "http", "url": web.url})
    _register(
        http, {"name": "healthy", "command": python, "args": ["-m", "tests.servers.echo_server"], "cwd": cwd}
    )


# -- one fault ---------------------------------------------------------------------------------


def _text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def call(client: Client, name: str, arguments: dict[str, Any]) -> tuple[bool, str]:
    """call_tool through the gateway: (is_error, text)."""
    result = await client.call_tool("call_tool", {"name": name, "arguments": arguments})
    return bool(result.is_error), _text(result)


@dataclass
class Healthy:
    """A second conversation calling a healthy upstream in a loop; counts per window."""

    ok: int = 0
    failed: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)

    def window(self) -> Healthy:
        snapshot = Healthy(self.ok, list(self.failed), list(self.latencies))
        self.ok, self.failed, self.latencies = 0, [], []
        return snapshot


async def healthy_loop(client: Client, record: Healthy) -> None:
    conversation: str | None = None
    while True:
        started = time.perf_counter()
        found = await client.call_tool(
            "find_tools",
            {"query": "echo text back", **({"conversation": conversation} if conversation else {})},
        )
        if found.structured_content is not None:
            conversation = found.structured_content.get("conversation")
        error, text = await call(client, "healthy__echo", {"text": "still here"})
        record.latencies.append(time.perf_counter() - started)
        if error or found.is_error or text != "still here":
            record.failed.append(text[:200])
        else:
            record.ok += 1
        await anyio.sleep(0.02)


async def follow_up(
    fault: Fault, client: Client, web: HttpFaulty, expected_present: bool, pid: int, spawned: set[int]
) -> dict[str, Any]:
    """After the fault: the server answers again, and change_list's new list is served."""
    out: dict[str, Any] = {}
    if fault.tool == "vanish" and not fault.kills_http:  # stdio: it exits just after answering
        await _until_exited(pid, spawned)
    if fault.kills_http:
        await anyio.to_thread.run_sync(web.wait_exit)  # vanish leaves just after answering
        error, text = await call(client, f"{fault.server}__ok", {"text": "x"})
        out["while_gone"] = text[:300]  # a clear error, not a hang
        out["restarted"] = await anyio.to_thread.run_sync(web.ensure_running)
    if fault.tool == "change_list":
        out["list_followed"] = await _list_followed(client, f"{fault.server}__appeared", expected_present)
    recovered = False
    for _ in range(50):  # a few tries: an HTTP server just restarted, a stdio one respawns
        error, text = await call(client, f"{fault.server}__ok", {"text": "back"})
        if not error and text == "back":
            recovered = True
            break
        out["recovery_error"] = text[:300]
        await anyio.sleep(0.1)
    out["recovered"] = recovered
    return out


async def _until_exited(pid: int, spawned: set[int]) -> None:
    """Wait (bounded) until one of the gateway's children from before the fault has exited."""
    deadline = time.monotonic() + 10
    while spawned <= children(pid) and time.monotonic() < deadline:  # noqa: ASYNC110
        await anyio.sleep(0.02)


async def _list_followed(client: Client, name: str, present: bool) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        error, text = await call(client, name, {})
        if (not error and text == "here") == present and (present or "unknown tool" in text):
            return True
        await anyio.sleep(0.1)
    return False


async def _one_more(healthy: Healthy) -> None:
    deadline = time.monotonic() + 10
    while healthy.ok + len(healthy.failed) < 1 and time.monotonic() < deadline:  # noqa: ASYNC110
        await anyio.sleep(0.01)


async def run_fault(
    fault: Fault,
    gateway: GatewayProcess,
    client: Client,
    healthy: Healthy,
    web: HttpFaulty,
    state: dict[str, bool],
) -> dict[str, Any]:
    """Cause one fault while the healthy conversation runs; what the client saw, and after."""
    pid = gateway.process.pid
    before = resources(pid)
    spawned = children(pid)
    healthy.window()
    started = time.perf_counter()
    error, text = await call(client, f"{fault.server}__{fault.tool}", fault.arguments)
    seconds = time.perf_counter() - started
    await _one_more(healthy)  # the healthy loop's call that overlapped the fault has finished
    during = healthy.window()
    if fault.tool == "change_list":
        state[fault.server] = not state.get(fault.server, False)
    after_fault = await follow_up(fault, client, web, state.get(fault.server, False), pid, spawned)
    after = await settle(pid, before, timeout=10)
    correct = (not error) if not fault.expect else (error and re.search(fault.expect, text, re.S) is not None)
    return {
        "server": fault.server,
        "tool": fault.tool,
        "is_error": error,
        "message": text[:400],
        "correct": bool(correct),
        "seconds": round(seconds, 3),
        "healthy_during": {
            "ok": during.ok,
            "failed": during.failed,
            "max_ms": round(max(during.latencies, default=0) * 1000, 1),
        },
        **after_fault,
        "before": before,
        "after": after,
        "returned_to_baseline": all(after[k] <= before[k] for k in before),
        "gateway_up": gateway.http.get("/healthz").status_code == 200,
    }


@asynccontextmanager
async def running_suite(call_timeout: float) -> AsyncIterator[tuple[GatewayProcess, HttpFaulty]]:
    web = HttpFaulty()
    web.start()
    with tempfile.TemporaryDirectory(prefix="toolgate-faults-") as data:
        env = {
            "TOOLGATE_CALL_TIMEOUT_S": str(call_timeout),
            "TOOLGATE_CONNECT_TIMEOUT_S": "10",
            "TOOLGATE_CIRCUIT_COOLDOWN_S": "1",
            "TOOLGATE_UPSTREAM_IDLE_S": "0",
            "TOOLGATE_REGISTRY_WATCH_S": "0",
        }
        gateway = await anyio.to_thread.run_sync(lambda: GatewayProcess(Path(data), free_port(), env))
        try:
            register_upstreams(gateway.http, web)
            yield gateway, web
        finally:
            await anyio.to_thread.run_sync(gateway.stop)
            web.stop()


async def run_suite(rounds: int = 1, huge_mb: float = 50.0, call_timeout: float = 1.5) -> dict[str, Any]:
    """Every fault `rounds` times against one gateway; the result that bench/results/faults.json holds."""
    rows: list[dict[str, Any]] = []
    async with running_suite(call_timeout) as (gateway, web):
        url = f"{gateway.url}/mcp"
        async with Client(url) as client, Client(url) as other, anyio.create_task_group() as group:
            healthy = Healthy()
            for name in ("faulty__ok", "faultyweb__ok"):  # warm: both sessions open
                await call(client, name, {"text": "warm"})
            group.start_soon(healthy_loop, other, healthy)
            while healthy.ok < 3:  # noqa: ASYNC110 - polled counter of another task; the loop is running
                await anyio.sleep(0.05)
            baseline = resources(gateway.process.pid)
            state: dict[str, bool] = {}  # whether change_list's tool is present, per server
            for round_no in range(rounds):
                for fault in faults(huge_mb):
                    row = await run_fault(fault, gateway, client, healthy, web, state)
                    rows.append({"round": round_no, **row})
            group.cancel_scope.cancel()
        final = await settle(gateway.process.pid, baseline, timeout=10)
    return {
        "machine": machine(),
        "rounds": rounds,
        "call_timeout_s": call_timeout,
        "huge_mb": huge_mb,
        "faults": rows,
        "summary": summarize(rows, call_timeout),
        "baseline_resources": baseline,
        "final_resources": final,
    }


def summarize(rows: list[dict[str, Any]], call_timeout: float) -> dict[str, Any]:
    bounded = call_timeout + 3.0  # the call timeout plus the loopback and process start-up
    return {
        "faults": len(rows),
        "correct": sum(r["correct"] for r in rows),
        "bounded": sum(r["seconds"] <= bounded for r in rows),
        "bound_s": bounded,
        "healthy_kept_working": sum(
            r["healthy_during"]["ok"] > 0 and not r["healthy_during"]["failed"] for r in rows
        ),
        "recovered": sum(r["recovered"] for r in rows),
        "returned_to_baseline": sum(r["returned_to_baseline"] for r in rows),
        "fault_seconds": summary_ms([r["seconds"] for r in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--huge-mb", type=float, default=50.0)
    parser.add_argument("--call-timeout", type=float, default=1.5)
    args = parser.parse_args()
    result = anyio.run(run_suite, args.rounds, args.huge_mb, args.call_timeout)
    for row in result["faults"]:
        print(
            f"{row['round']} {row['server']:>9} {row['tool']:<11} correct={row['correct']!s:<5} "
            f"{row['seconds']:6.2f}s healthy_ok={row['healthy_during']['ok']:<3} "
            f"recovered={row['recovered']!s:<5} baseline={row['returned_to_baseline']!s:<5} {row['message'][:90]!r}"
        )
    print(result["summary"])
    print(f"saved {save('faults', result)}")


if __name__ == "__main__":
    main()
