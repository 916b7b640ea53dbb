"""Profile the gateway's hot paths with py-spy, and compare two builds call by call in one run.

    python -m bench.profile_gateway call [--calls 1000] [--mode legacy|auto] [--profile current]
                                         [--baseline DIR] [--variant NAME=DIR ...] [--spy-out DIR]
    python -m bench.profile_gateway find [--servers 300] [--calls 300] [--profile current]
    python -m bench.profile_gateway find --data-dir DIR [--calls 300] [--mode auto] [--baseline DIR]

`call`: `tools/call` of an echo tool on a streamable HTTP upstream, direct and through each
gateway variant, one client session each, rounds interleaved (the first contender rotates
every round), the added latency paired per round. `find`: `find_tools` through /mcp against a
catalog of the first `--servers` ToolBench servers hosted by bench/multihost.py; with
`--data-dir`, against a catalog already built there (e.g. bench/latency_scale.py's 10k dir),
copied once per variant, upstreams down, and ToolBench queries instead of the fixed eight.
Each variant's own /metrics (find_tools, its stages and the /mcp request, mean ms over the
measured rounds) says where its time went: /mcp minus the retrieval stages is the gateway's.

Variants: `current` is this checkout; `--baseline DIR` adds `baseline`, the same gateway run
from another source tree (e.g. a copy of this one with the files under study reverted), so a
fix is measured before and after against the same upstream in the same run; `--variant
NAME=DIR` adds more (experiments). Every variant is paired with `current` round by round.

`--profile NAME` attaches `py-spy record` (raw collapsed stacks, `--nonblocking` so the
sampled process is never paused) to that variant's gateway for the measured rounds, and
prints the top frames by own and inclusive share of the samples. Idle samples (the event
loop waiting in `select`) are left out, so shares are of the gateway's CPU time.
`--name NAME` saves the result as bench/results/NAME.json, `--out PATH` anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client
from prometheus_client.parser import text_string_to_metric_families

from bench.common import ROOT, free_port, machine, save, shared_data, summary_ms, wait_ready_line
from bench.latency_scale import stage_means_ms

ECHO_ARGS = {"text": "ping"}
FIND_QUERIES = (
    "get the current weather forecast for a city",
    "translate a sentence into french",
    "search for recent news articles about a company",
    "convert an amount of money between currencies",
    "find the lyrics of a song",
    "look up a word's definition",
    "get stock prices for a ticker symbol",
    "send an email to a colleague",
)
# Frames are grouped by where their code lives, to say which layer the time goes to.
LAYERS: tuple[tuple[str, str], ...] = (
    ("gateway/", "toolgate gateway"),
    ("retrieval/", "toolgate retrieval"),
    ("registry/", "toolgate registry"),
    ("mcp/server/", "mcp server (SDK)"),
    ("mcp/client/", "mcp client (SDK)"),
    ("mcp/shared/", "mcp shared (SDK)"),
    ("mcp_types/", "mcp types (SDK)"),
    ("starlette/", "starlette"),
    ("fastapi/", "fastapi"),
    ("sse_starlette/", "sse-starlette"),
    ("uvicorn/", "uvicorn"),
    ("h11/", "h11 (HTTP parser)"),
    ("httpx2/", "httpx2"),
    ("httpcore", "httpcore"),
    ("pydantic", "pydantic"),
    ("jsonschema", "jsonschema"),
    ("opentelemetry/", "opentelemetry"),
    ("prometheus_client/", "prometheus"),
    ("anyio/", "anyio"),
    ("asyncio/", "asyncio"),
    ("logging/", "logging"),
    ("json/", "json"),
    ("sqlalchemy/", "sqlalchemy"),
    ("numpy/", "numpy"),
    ("onnxruntime", "onnxruntime"),
    ("tokenizers", "tokenizers"),
    ("qdrant", "qdrant"),
)


@dataclass
class Variant:
    """One gateway build under test: `tree` is the source tree it runs from."""

    name: str
    tree: Path
    env: dict[str, str] = field(default_factory=dict)
    url: str = ""
    pid: int = 0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Contender:
    name: str
    url: str
    tool: str
    arguments: Callable[[int], dict[str, Any]]
    samples: list[float] = field(default_factory=list)


# --- processes -----------------------------------------------------------------------------


class Children:
    """Every process started here, stopped on exit (process groups: uvicorn's too)."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[Any]] = []

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        process: subprocess.Popen[Any] = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is not None:
                continue
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            except ProcessLookupError:
                pass
        self.processes.clear()


def start_gateway(children: Children, variant: Variant, data_dir: Path, extra_env: dict[str, str]) -> None:
    """`toolgate serve` from `variant.tree`: `-c` puts the tree first on sys.path, ahead of the
    editable install's finder, so the tree's `gateway` package is the one imported."""
    port = free_port()
    env = {
        **os.environ,
        "TOOLGATE_DATA_DIR": str(data_dir),
        "TOOLGATE_SYNC_INTERVAL_S": "0",
        "TOOLGATE_AUTH": "off",
        "TOOLGATE_UPSTREAM_ALLOW_PRIVATE": "127.0.0.0/8",
        "TOOLGATE_LOG_LEVEL": "WARNING",
        **extra_env,
        **variant.env,
    }
    env.pop("DATABASE_URL", None)
    code = "import sys; from gateway.cli import main; sys.exit(main(sys.argv[1:]))"
    variant.started = datetime.now(UTC)
    process = children.start(
        [sys.executable, "-c", code, "serve", "--port", str(port)], cwd=variant.tree, env=env
    )
    variant.url = f"http://127.0.0.1:{port}"
    variant.pid = process.pid
    deadline = time.monotonic() + 600  # adopting a prebuilt catalog's vectors takes a while
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway {variant.name} exited with {process.returncode}")
        try:
            if httpx.get(f"{variant.url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gateway {variant.name} did not become ready")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_ready(children: Children, argv: list[str]) -> int:
    process = children.start(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    return wait_ready_line(process)


@contextmanager
def py_spy(pid: int | None, out: Path, rate: int) -> Iterator[Path | None]:
    """`py-spy record` on `pid` for the block (None: no profiling)."""
    if pid is None:
        yield None
        return
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    raw = out / f"py-spy-{pid}.txt"
    argv = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking"]
    process = subprocess.Popen([*argv, "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches before the first measured round
    try:
        yield raw
    finally:
        process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# --- py-spy output -------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::\d+)?\)$")


def _frame_key(frame: str) -> tuple[str, str]:
    """('func (short/path.py)', layer) for one collapsed-stack frame (line numbers dropped)."""
    match = _FRAME.match(frame)
    func, file = (match["func"], match["file"]) if match else (frame, "")
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    layer = next((name for prefix, name in LAYERS if prefix in file or file.startswith(prefix)), "other")
    return f"{func} ({file})", layer


def summarise_stacks(raw: Path, top: int = 25) -> dict[str, Any]:
    """Own and inclusive shares of the samples per function, and own share per layer."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    layers_inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_key(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf, leaf_layer = frames[-1]
        own[leaf] += count
        layers[leaf_layer] += count
        for key in {name for name, _ in frames}:
            inclusive[key] += count
        for layer in {layer for _, layer in frames}:
            layers_inclusive[layer] += count

    def shares(counter: Counter[str], n: int) -> list[dict[str, Any]]:
        return [{"frame": k, "share": round(v / total, 4)} for k, v in counter.most_common(n)]

    return {
        "samples": total,
        "layers_own": {k: round(v / total, 4) for k, v in layers.most_common()} if total else {},
        "layers_inclusive": {k: round(v / total, 4) for k, v in layers_inclusive.most_common()}
        if total
        else {},
        "top_own": shares(own, top) if total else [],
        "top_inclusive": shares(inclusive, top) if total else [],
    }


# --- measurement ---------------------------------------------------------------------------


async def measure(contenders: list[Contender], calls: int, warmup: int, mode: str, on_start: Any) -> None:
    async with AsyncExitStack() as stack:
        clients = {c.name: await stack.enter_async_context(Client(c.url, mode=mode)) for c in contenders}
        for index in range(-warmup, calls):
            if index == 0:
                await anyio.to_thread.run_sync(on_start)
            start = index % len(contenders)
            for contender in contenders[start:] + contenders[:start]:
                began = time.perf_counter()
                result = await clients[contender.name].call_tool(contender.tool, contender.arguments(index))
                elapsed = time.perf_counter() - began
                if result.is_error:
                    raise RuntimeError(f"{contender.name}: {result.content}")
                if index >= 0:
                    contender.samples.append(elapsed)


def _find_args(index: int) -> dict[str, Any]:
    return {"query": FIND_QUERIES[index % len(FIND_QUERIES)], "limit": 5}


def _toolbench_find_args(calls: int, warmup: int) -> Callable[[int], dict[str, Any]]:
    """find_tools arguments over a seeded sample of ToolBench queries (as latency_scale times),
    the warm-up rounds (negative indexes) on a disjoint sample."""
    from bench.latency_scale import LIMIT, load_queries

    timed, warm = load_queries(calls, warmup, seed=13)

    def arguments(index: int) -> dict[str, Any]:
        query = timed[index % len(timed)] if index >= 0 else warm[index % len(warm)]
        return {"query": query, "limit": LIMIT}

    return arguments


def _wait_synced(variant: Variant, timeout: float = 900) -> None:
    """Until every server has a sync recorded since the gateway started: its start-up re-sync
    (fast failures, the upstreams being down) must not share the cores with measured rounds."""
    with httpx.Client(base_url=variant.url, timeout=None) as admin:
        begun = time.monotonic()
        while time.monotonic() - begun < timeout:
            rows = admin.get("/admin/servers").json()
            stamps = [r["last_sync_at"] for r in rows]
            if all(s and datetime.fromisoformat(s) >= variant.started for s in stamps):
                return
            time.sleep(2.0)
    raise RuntimeError(f"gateway {variant.name}: start-up sync not done after {timeout} s")


def _scrape(url: str) -> Any:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _call_args(_index: int) -> dict[str, Any]:
    return {"name": "upstream__echo", "arguments": dict(ECHO_ARGS)}


def run(
    scenario: str,
    *,
    calls: int,
    warmup: int,
    mode: str = "legacy",
    baseline: Path | None = None,
    others: dict[str, Path] | None = None,
    variant_env: dict[str, dict[str, str]] | None = None,
    profile: str | None = None,
    spy_rate: int = 250,
    spy_out: Path | None = None,
    servers: int = 300,
    extra_env: dict[str, str] | None = None,
    data_dir: Path | None = None,
) -> dict[str, Any]:
    """Start the upstream and the gateway variants, measure, stop them all; the result."""
    variants = [Variant("current", ROOT)]
    trees = {**({"baseline": baseline} if baseline is not None else {}), **(others or {})}
    variants[:0] = [Variant(name, tree.resolve()) for name, tree in trees.items()]
    for variant in variants:
        variant.env = (variant_env or {}).get(variant.name, {})
    if profile is not None and profile not in {v.name for v in variants}:
        raise SystemExit(f"--profile must name a variant: {[v.name for v in variants]}")
    children = Children()
    result: dict[str, Any] = {
        "benchmark": f"profile_{scenario}",
        "command": "python -m bench.profile_gateway " + " ".join(sys.argv[1:]),
        "scenario": scenario,
        "calls": calls,
        "warmup": warmup,
        "client_mode": mode,
        "variants": {v.name: {"tree": str(v.tree), "env": v.env} for v in variants},
    }
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as cleanup:
        cleanup.callback(children.stop_all)
        workdir = Path(tmp)
        if scenario == "call":
            port = start_ready(
                children,
                [sys.executable, "-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"],
            )
            registration: dict[str, Any] = {
                "name": "upstream",
                "transport": "http",
                "url": f"http://127.0.0.1:{port}/mcp",
            }
            contenders = [Contender("direct", registration["url"], "echo", lambda _i: dict(ECHO_ARGS))]
        elif data_dir is not None:
            contenders = []
        else:
            port = start_ready(
                children, [sys.executable, "-m", "bench.multihost", "--servers", str(servers), "--port", "0"]
            )
            registration = {
                "mcpServers": {
                    f"s{i}": {"type": "http", "url": f"http://127.0.0.1:{port}/s/{i}/mcp"}
                    for i in range(servers)
                }
            }
            contenders = []
        for variant in variants:
            if data_dir is not None:  # a prebuilt catalog: one copy per gateway, nothing imported
                shutil.copytree(data_dir, workdir / variant.name)
                env = {"TOOLGATE_SYNC_CONCURRENCY": "16", **(extra_env or {})}
                start_gateway(children, variant, workdir / variant.name, env)
                _wait_synced(variant)
                result["tools"] = httpx.get(f"{variant.url}/admin/index", timeout=60).json()["tools"]
            else:
                start_gateway(children, variant, workdir / variant.name, extra_env or {})
                with httpx.Client(base_url=variant.url, timeout=1800) as admin:
                    path = "/admin/servers" if scenario == "call" else "/admin/import"
                    admin.post(path, json=registration).raise_for_status()
                    if scenario == "find":
                        result["tools"] = admin.get("/admin/tools", params={"limit": 1}).json()["total"]
            if scenario == "call":
                tool, arguments = "call_tool", _call_args
            elif data_dir is not None:
                tool, arguments = "find_tools", _toolbench_find_args(calls, warmup)
            else:
                tool, arguments = "find_tools", _find_args
            contenders.append(Contender(variant.name, f"{variant.url}/mcp", tool, arguments))
        profiled = next((v.pid for v in variants if v.name == profile), None)
        out = spy_out or workdir
        out.mkdir(parents=True, exist_ok=True)
        spy_started = ExitStack()
        try:
            raw_holder: list[Path | None] = []

            cpu_before: dict[str, float] = {}

            metrics_before: dict[str, Any] = {}

            def begin() -> None:
                cpu_before.update({v.name: cpu_seconds(v.pid) for v in variants})
                metrics_before.update({v.name: _scrape(v.url) for v in variants})
                raw_holder.append(spy_started.enter_context(py_spy(profiled, out, spy_rate)))

            began = time.perf_counter()
            anyio.run(measure, contenders, calls, warmup, mode, begin)
            result["measure_s"] = round(time.perf_counter() - began, 1)
            # CPU per request is steadier than latency on a shared machine (and py-spy's own
            # cost lands on the profiled variant only).
            result["gateway_cpu_ms_per_request"] = {
                v.name: round((cpu_seconds(v.pid) - cpu_before[v.name]) / calls * 1000, 3) for v in variants
            }
            # Mean ms per request from each gateway's own histograms (find_tools, its stages,
            # the /mcp request): /mcp minus the retrieval stages is the gateway's own share.
            result["gateway_mean_ms"] = {
                v.name: stage_means_ms(metrics_before[v.name], _scrape(v.url)) for v in variants
            }
        finally:
            spy_started.close()
        raw = raw_holder[0] if raw_holder else None
        if raw is not None and raw.exists():
            result["profile"] = {"variant": profile, "rate_hz": spy_rate, **summarise_stacks(raw)}
            if spy_out is not None:
                result["profile"]["raw"] = str(raw)
    result["ms"] = {c.name: summary_ms(c.samples) for c in contenders}
    if scenario == "find":
        result["overhead_ms"] = {
            name: _overhead(means, result["ms"][name]) for name, means in result["gateway_mean_ms"].items()
        }
    if scenario == "call":
        direct = contenders[0].samples
        result["added_ms"] = {
            c.name: summary_ms([s - d for s, d in zip(c.samples, direct, strict=True)])
            for c in contenders[1:]
        }
    for variant in variants[:-1]:
        result[f"current_minus_{variant.name}_ms"] = _paired_delta(contenders, variant.name)
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    result["machine"] = machine()
    return result


def _overhead(means: dict[str, float], client_ms: dict[str, float]) -> dict[str, float]:
    """Where a find's time went outside retrieval (ms, means): in the service around the
    search (find_tools minus the retrieval stages), in the HTTP/MCP layers of the gateway
    (/mcp request minus find_tools), and in total as the client saw it."""
    retrieval = sum(v for k, v in means.items() if k.startswith("stage_") and k != "stage_memory")
    find = means.get("find_tools", 0.0)
    http = next((v for k, v in means.items() if k.startswith("http_POST_/mcp")), 0.0)
    return {
        "retrieval_mean": round(retrieval, 3),
        "service_mean": round(find - retrieval, 3),
        "http_layers_mean": round(http - find, 3),
        "client_minus_retrieval_mean": round(client_ms["mean"] - retrieval, 3),
    }


def _paired_delta(contenders: list[Contender], other: str) -> dict[str, float]:
    by_name = {c.name: c.samples for c in contenders}
    deltas = [c - b for c, b in zip(by_name["current"], by_name[other], strict=True)]
    return {
        "p50": round(statistics.median(deltas) * 1000, 3),
        "mean": round(statistics.fmean(deltas) * 1000, 3),
    }


def print_result(result: dict[str, Any]) -> None:
    print(f"{'':12}{'p50':>9}{'p99':>9}{'mean':>9}   ms, {result['calls']} rounds, interleaved")
    for name, stats in result["ms"].items():
        print(f"{name:12}{stats['p50']:9.2f}{stats['p99']:9.2f}{stats['mean']:9.2f}")
    for name, stats in result.get("added_ms", {}).items():
        print(
            f"{'+' + name:12}{stats['p50']:9.2f}{stats['p99']:9.2f}{stats['mean']:9.2f}   (added over direct)"
        )
    print("gateway CPU per request (ms):", result.get("gateway_cpu_ms_per_request"))
    for name, parts in result.get("overhead_ms", {}).items():
        print(f"{name}: gateway means {result['gateway_mean_ms'][name]}; outside retrieval {parts}")
    for key, value in result.items():
        if key.startswith("current_minus_"):
            print(f"{key} (paired): {value}")
    profile = result.get("profile")
    if profile:
        print(f"\npy-spy on {profile['variant']}: {profile['samples']} samples at {profile['rate_hz']} Hz")
        print("layers (own):", json.dumps(profile["layers_own"]))
        for title in ("top_own", "top_inclusive"):
            print(f"-- {title}")
            for row in profile[title]:
                print(f"  {row['share'] * 100:5.1f}%  {row['frame']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=["call", "find"])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument(
        "--mode", choices=["legacy", "auto"], default="legacy", help="the client's protocol mode"
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="another source tree to run as 'baseline'"
    )
    parser.add_argument("--variant", action="append", default=[], help="NAME=DIR: one more source tree")
    parser.add_argument(
        "--variant-env", action="append", default=[], help="NAME:KEY=VALUE for one variant's gateway"
    )
    parser.add_argument("--profile", default=None, help="variant to profile with py-spy (e.g. current)")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--spy-out", type=Path, default=None, help="keep py-spy's raw output here")
    parser.add_argument("--servers", type=int, default=300, help="find: ToolBench servers in the catalog")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="find: a catalog already built here (copied per variant)"
    )
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for every gateway")
    parser.add_argument("--name", default=None, help="save the result as bench/results/NAME.json")
    parser.add_argument("--out", type=Path, default=None, help="save the result as this JSON file")
    args = parser.parse_args()
    if args.scenario == "find":
        shared_data()  # fail early when the data is missing
    extra_env = dict(item.split("=", 1) for item in args.env)
    variant_env: dict[str, dict[str, str]] = {}
    for item in args.variant_env:
        name, _, pair = item.partition(":")
        key, _, value = pair.partition("=")
        variant_env.setdefault(name, {})[key] = value
    result = run(
        args.scenario,
        calls=args.calls,
        warmup=args.warmup,
        mode=args.mode,
        baseline=args.baseline,
        others={name: Path(tree) for name, tree in (item.split("=", 1) for item in args.variant)},
        variant_env=variant_env,
        profile=args.profile,
        spy_rate=args.rate,
        spy_out=args.spy_out,
        servers=args.servers,
        extra_env=extra_env,
        data_dir=args.data_dir,
    )
    print_result(result)
    if args.name:
        print(f"saved {save(args.name, result)}")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"saved {args.out}")


if __name__ == "__main__":
    main()
