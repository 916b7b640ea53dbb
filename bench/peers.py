"""Proxy overhead side by side with peer gateways: one upstream, one client, one run.

    python -m bench.peers [--calls 300] [--warmup 30] [--contenders direct,toolgate,...]

Every contender forwards `tools/call` of the `echo` tool to the same streamable HTTP upstream
(`tests/servers/echo_server.py`) and is reached by the same SDK client code (`mcp.Client` over
streamable HTTP, protocol 2025-11-25 "legacy" unless a contender says otherwise). Calls are
interleaved: round i calls every contender once, starting at a rotating position, so load
changes on this shared machine hit all contenders alike. Added latency is paired per round:
contender minus the direct call of the same round.

The peers are installed by this script in throwaway virtualenvs outside the repository
(`$TOOLGATE_BENCH_HOME`, default `~/.cache/toolgate-bench`), never in the project's own
environment: ContextForge 1.1.0 needs Python >= 3.12 (on 3.11 pip silently picks 1.0.7).
A peer that cannot be installed or started is reported with the reason, never with a number.

Saves bench/results/peers.json (or --out).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from bench.common import ROOT, GatewayProcess, free_port, machine, save, summary_ms, wait_ready_line

ARGS: dict[str, Any] = {"text": "ping"}
BENCH_HOME = Path(os.environ.get("TOOLGATE_BENCH_HOME", Path.home() / ".cache" / "toolgate-bench"))
CONTEXTFORGE = ("mcp-contextforge-gateway", "1.1.0")
FASTMCP = ("fastmcp", "4.2.3")
CF_ADMIN = "admin@example.com"
TARGET_RATIO = 0.2  # issue 7: toolgate's added p50 <= 1/5 of ContextForge's (best settings)

# Order matters only for the printout; the measurement rotates the start every round.
ALL_CONTENDERS = [
    "direct",
    "toolgate",
    "direct_auto",
    "toolgate_auto",
    "contextforge_default",
    "contextforge_best",
    "fastmcp_proxy",
    "fastmcp_proxy_reused",
]
BASELINE = {"direct_auto": "", "toolgate_auto": "direct_auto"}  # everything else pairs with "direct"

# Only what ContextForge refuses to run without, or what makes this benchmark possible at all:
# its secrets, a private database and Redis, loopback upstreams, and a rate limit above the
# benchmark's call rate (the default 100/min would fail the run, not slow it).
CF_REQUIRED = {
    "SSRF_ALLOW_LOCALHOST": "true",
    "RATE_LIMIT_MEDIUM_RPM": "1000000",
    "RATE_LIMIT_MEDIUM_BURST": "1000000",
    "TOOL_RATE_LIMIT": "1000000",
    "PLATFORM_ADMIN_EMAIL": CF_ADMIN,
}
# Its best per-call settings, from the hints and its tuning guide: sessions kept
# (USE_STATEFUL_SESSIONS is what lets 1.1.0 reuse one upstream session per downstream session
# instead of opening one per call), in-memory caches, no per-call database writes for metrics,
# token usage or structured logs, no rate limiter, no compression of tiny responses.
CF_BEST = {
    "USE_STATEFUL_SESSIONS": "true",
    "SKIP_SSL_VERIFY": "true",
    "CACHE_TYPE": "memory",
    "RATE_LIMITING_ENABLED": "false",
    "DB_METRICS_RECORDING_ENABLED": "false",
    "TOKEN_USAGE_LOGGING_ENABLED": "false",
    "PERFORMANCE_TRACKING_ENABLED": "false",
    "STRUCTURED_LOGGING_ENABLED": "false",
    "COMPRESSION_ENABLED": "false",
    "OBSERVABILITY_ENABLED": "false",
    "LOG_LEVEL": "ERROR",
}

# Run by the fastmcp venv's interpreter, so nothing of fastmcp is imported here.
FASTMCP_SCRIPT = """
import sys, anyio
from fastmcp import Client
from fastmcp.server import create_proxy

async def main(url: str, port: int, reuse: bool) -> None:
    serve = dict(show_banner=False, host="127.0.0.1", port=port, log_level="warning")
    if reuse:
        async with Client(url, mode="legacy") as client:
            await create_proxy(client, name="bench").run_http_async(**serve)
    else:
        await create_proxy(url, name="bench").run_http_async(**serve)

anyio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3] == "reuse")
"""


class PeerUnavailable(RuntimeError):
    """A contender that cannot run here; the message says exactly why."""


@dataclass
class Contender:
    """One endpoint to call, and how it was set up."""

    name: str
    url: str
    tool: str
    arguments: Callable[[], dict[str, Any]]
    mode: str = "legacy"
    headers: dict[str, str] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def echo_args() -> dict[str, Any]:
    return dict(ARGS)


def toolgate_args() -> dict[str, Any]:
    return {"name": "upstream__echo", "arguments": dict(ARGS)}


# --- processes -----------------------------------------------------------------------------


class Processes:
    """Every child process this benchmark starts, ended on exit even after a failure."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[Any]] = []

    def start(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        # Own process group: uvicorn reloaders or workers go down with their parent.
        process: subprocess.Popen[Any] = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.children.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.children):
            stop_process(process)
        self.children.clear()


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a grace period."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
    except ProcessLookupError:
        pass


def wait_http(url: str, process: subprocess.Popen[Any], log: Path | None, timeout: float) -> None:
    """Poll `url` until it answers below 500; fail with the log's tail if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PeerUnavailable(f"exited with code {process.returncode} before it was ready: {tail(log)}")
        try:
            if httpx.get(url, timeout=5).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise PeerUnavailable(f"not ready after {timeout:.0f} s: {tail(log)}")


def tail(log: Path | None, lines: int = 8) -> str:
    if log is None or not log.exists():
        return "(no log)"
    return " | ".join(log.read_text(errors="replace").strip().splitlines()[-lines:])


def load_average() -> dict[str, Any]:
    """The machine's load now: it is shared with other engineers' test runs."""
    uptime = subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    one, five, fifteen = os.getloadavg()
    return {"uptime": uptime, "loadavg": [round(one, 2), round(five, 2), round(fifteen, 2)]}


# --- throwaway virtualenvs -----------------------------------------------------------------


def python_at_least(minor: int) -> Path:
    """An interpreter >= 3.<minor>: pyenv's versions first, then PATH."""
    candidates = sorted(
        glob.glob(str(Path.home() / ".pyenv" / "versions" / f"3.{minor}*" / "bin" / "python3"))
    )
    for name in (f"python3.{minor}", "python3.13", "python3.14"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    for candidate in candidates:
        probe = subprocess.run(
            [candidate, "-c", f"import sys; print(sys.version_info >= (3, {minor}))"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.stdout.strip() == "True":
            return Path(candidate)
    raise PeerUnavailable(f"no Python >= 3.{minor} found (looked in ~/.pyenv/versions and PATH)")


def ensure_venv(package: str, version: str, python: Path) -> Path:
    """A virtualenv under BENCH_HOME with exactly `package==version`; created when missing."""
    tag = subprocess.run(
        [str(python), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    venv = BENCH_HOME / f"{package}-{version}-py{tag}"
    venv_python = venv / "bin" / "python"
    check = [str(venv_python), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"]
    if venv_python.exists():
        probe = subprocess.run(check, capture_output=True, text=True, check=False)
        if probe.stdout.strip() == version:
            return venv_python
    print(f"installing {package}=={version} into {venv} (once) ...", flush=True)
    BENCH_HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(python), "-m", "venv", "--clear", str(venv)], check=True)
    log = venv / "pip-install.log"
    with log.open("w") as out:
        done = subprocess.run(
            [
                str(venv_python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                f"{package}=={version}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
    probe = subprocess.run(check, capture_output=True, text=True, check=False)
    if done.returncode != 0 or probe.stdout.strip() != version:
        raise PeerUnavailable(
            f"pip install {package}=={version} failed (exit {done.returncode}): {tail(log, 4)}"
        )
    return venv_python


# --- contenders ----------------------------------------------------------------------------


def start_upstream(procs: Processes, log: Path) -> str:
    with log.open("w") as err:
        process = procs.start(
            [sys.executable, "-m", "tests.servers.echo_server", "--transport", "http", "--port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    return f"http://127.0.0.1:{wait_ready_line(process)}/mcp"


def upstream_errors(log: Path) -> dict[str, Any]:
    """What the upstream logged as errors: a peer that misuses sessions shows up here."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line for line in lines if line.startswith(("Error", "ERROR")) or line.endswith("Error")]
    return {"error_lines": len(errors), "examples": sorted(set(errors))[:5]}


@contextmanager
def toolgate(upstream: str, workdir: Path) -> Iterator[str]:
    """`toolgate serve` as bench/common.py starts it, with the upstream registered."""
    gateway = GatewayProcess(workdir / "toolgate", free_port())
    try:
        registered = gateway.http.post(
            "/admin/servers", json={"name": "upstream", "transport": "http", "url": upstream}
        )
        registered.raise_for_status()
        yield f"{gateway.url}/mcp"
    finally:
        gateway.stop()


def start_redis(procs: Processes) -> str:
    """A private Redis for ContextForge, so it shares nothing with other engineers' runs."""
    server = shutil.which("redis-server")
    if server is None:
        raise PeerUnavailable("redis-server is not on PATH (ContextForge's deployment needs Redis)")
    port = free_port()
    process = procs.start(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ping = subprocess.run(
            ["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True, check=False
        )
        if ping.stdout.strip() == "PONG":
            return f"redis://127.0.0.1:{port}"
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise PeerUnavailable("the private redis-server did not start")


def contextforge_secrets(python: Path) -> dict[str, str]:
    made = subprocess.run(
        [str(python), "-m", "mcpgateway.scripts.init_secrets", "--stdout"],
        capture_output=True,
        text=True,
        check=False,
    )
    secrets = dict(
        line.split("=", 1) for line in made.stdout.splitlines() if "=" in line and not line.startswith("#")
    )
    if made.returncode != 0 or "JWT_SECRET_KEY" not in secrets or "AUTH_ENCRYPTION_SECRET" not in secrets:
        raise PeerUnavailable(f"mcpgateway.scripts.init_secrets failed: {made.stderr.strip()[-300:]}")
    return secrets


def start_contextforge(
    procs: Processes, python: Path, workdir: Path, redis_url: str, upstream: str, settings: dict[str, str]
) -> tuple[str, str, str]:
    """Start one ContextForge, register the upstream and a virtual server; (url, tool, token)."""
    workdir.mkdir(parents=True)
    secrets = contextforge_secrets(python)
    port = free_port()
    env = {
        # A clean environment: ContextForge reads hundreds of variables, none of ours may leak in.
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "LANG": "C.UTF-8",
        **secrets,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{workdir / 'mcp.db'}",
        "REDIS_URL": redis_url,
        **CF_REQUIRED,
        **settings,
    }
    log = workdir / "contextforge.log"
    with log.open("w") as out:
        process = procs.start(
            [str(python.parent / "mcpgateway"), "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    # First start runs its migrations: slow on a loaded machine.
    wait_http(f"{base}/health", process, log, timeout=240)
    made = subprocess.run(
        [
            str(python),
            "-m",
            "mcpgateway.utils.create_jwt_token",
            "--username",
            CF_ADMIN,
            "--exp",
            "600",
            "--secret",
            secrets["JWT_SECRET_KEY"],
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        check=False,
    )
    token = made.stdout.strip().splitlines()[-1] if made.stdout.strip() else ""
    if made.returncode != 0 or not token:
        raise PeerUnavailable(f"create_jwt_token failed: {made.stderr.strip()[-300:]}")
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as admin:
        gateway = admin.post(
            "/gateways", json={"name": "upstream", "url": upstream, "transport": "STREAMABLEHTTP"}
        )
        if gateway.status_code >= 300:
            raise PeerUnavailable(f"POST /gateways answered {gateway.status_code}: {gateway.text[:300]}")
        tools = admin.get("/tools").json()
        echo = next((t for t in tools if t.get("originalName") == "echo"), None)
        if echo is None:
            raise PeerUnavailable(
                f"the upstream's echo tool did not appear in GET /tools: {str(tools)[:300]}"
            )
        server = admin.post("/servers", json={"server": {"name": "bench", "associated_tools": [echo["id"]]}})
        if server.status_code >= 300:
            raise PeerUnavailable(f"POST /servers answered {server.status_code}: {server.text[:300]}")
    return f"{base}/servers/{server.json()['id']}/mcp", str(echo["name"]), token


def start_fastmcp(procs: Processes, python: Path, workdir: Path, upstream: str, reuse: bool) -> str:
    script = workdir / "fastmcp_proxy.py"
    script.write_text(FASTMCP_SCRIPT)
    port = free_port()
    log = workdir / f"fastmcp-{'reuse' if reuse else 'fresh'}.log"
    with log.open("w") as out:
        process = procs.start(
            [str(python), str(script), upstream, str(port), "reuse" if reuse else "fresh"],
            cwd=workdir,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir), "LANG": "C.UTF-8"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/mcp"
    wait_http(url, process, log, timeout=60)  # a GET without a session answers 4xx once it listens
    return url


def build_contenders(
    names: list[str], procs: Processes, stack: ExitStack, workdir: Path, upstream: str
) -> tuple[list[Contender], dict[str, str]]:
    """Start what `names` needs; return the contenders that run and the reasons for the rest."""
    contenders: list[Contender] = []
    unavailable: dict[str, str] = {}
    legacy = "legacy: initialize handshake, protocol 2025-11-25, Mcp-Session-Id"
    auto = "auto (the SDK client's default): server/discover, protocol 2026-07-28 when offered"
    for name, mode in (("direct", "legacy"), ("direct_auto", "auto")):
        if name in names:
            info: dict[str, Any] = {
                "what": "the upstream itself, no gateway",
                "client_mode": legacy if mode == "legacy" else auto,
            }
            contenders.append(Contender(name, upstream, "echo", echo_args, mode, info=info))
    if {"toolgate", "toolgate_auto"} & set(names):
        url = stack.enter_context(toolgate(upstream, workdir))
        settings = {
            "TOOLGATE_AUTH": "off",
            "TOOLGATE_LOG_LEVEL": "WARNING",
            "database": "SQLite (embedded default)",
        }
        for name, mode in (("toolgate", "legacy"), ("toolgate_auto", "auto")):
            if name in names:
                info = {
                    "what": "toolgate serve (this checkout), call_tool meta-tool -> upstream__echo",
                    "client_mode": legacy if mode == "legacy" else auto,
                    "settings": settings,
                }
                contenders.append(Contender(name, url, "call_tool", toolgate_args, mode, info=info))
    cf_wanted = [n for n in ("contextforge_default", "contextforge_best") if n in names]
    if cf_wanted:
        try:
            python = ensure_venv(*CONTEXTFORGE, python_at_least(12))
            redis_url = start_redis(procs)
        except (PeerUnavailable, subprocess.CalledProcessError, OSError) as exc:
            unavailable.update({n: f"ContextForge: {exc}" for n in cf_wanted})
            cf_wanted = []
        for index, name in enumerate(cf_wanted):
            settings = CF_BEST if name == "contextforge_best" else {}
            try:
                url, tool, token = start_contextforge(
                    procs, python, workdir / name, f"{redis_url}/{index}", upstream, settings
                )
            except PeerUnavailable as exc:
                unavailable[name] = f"ContextForge did not start or register: {exc}"
                continue
            info = {
                "what": f"{'='.join(CONTEXTFORGE)} (uvicorn, 1 worker, via its `mcpgateway` command), "
                "POST /gateways + POST /servers, called at /servers/<id>/mcp with a JWT",
                "client_mode": legacy,
                "python": str(python),
                "required_settings": {
                    **CF_REQUIRED,
                    "JWT_SECRET_KEY/AUTH_ENCRYPTION_SECRET": "from init_secrets",
                }
                | {"DATABASE_URL": "sqlite (private file)", "REDIS_URL": "private redis-server"},
                "settings": settings or "defaults",
            }
            contenders.append(
                Contender(name, url, tool, echo_args, "legacy", {"Authorization": f"Bearer {token}"}, info)
            )
    fm_wanted = [n for n in ("fastmcp_proxy", "fastmcp_proxy_reused") if n in names]
    if fm_wanted:
        try:
            # Same interpreter version as toolgate (fastmcp supports 3.11), its own venv all the same.
            python = ensure_venv(*FASTMCP, Path(getattr(sys, "_base_executable", sys.executable)))
        except (PeerUnavailable, subprocess.CalledProcessError, OSError) as exc:
            unavailable.update({n: f"fastmcp: {exc}" for n in fm_wanted})
            fm_wanted = []
        for name in fm_wanted:
            reuse = name == "fastmcp_proxy_reused"
            try:
                url = start_fastmcp(procs, python, workdir, upstream, reuse)
            except PeerUnavailable as exc:
                unavailable[name] = f"fastmcp proxy did not start: {exc}"
                continue
            how = (
                "create_proxy(<connected fastmcp.Client>): one upstream session reused by every call"
                if reuse
                else "create_proxy(url), its default: a fresh upstream session per request"
            )
            info = {"what": f"{'=='.join(FASTMCP)} {how}", "client_mode": legacy, "python": str(python)}
            contenders.append(Contender(name, url, "echo", echo_args, "legacy", info=info))
    return contenders, unavailable


# --- measurement ---------------------------------------------------------------------------


async def measure(contenders: list[Contender], calls: int, warmup: int) -> dict[str, Any]:
    """Interleaved rounds; a contender that fails is dropped with its error, the rest go on."""
    samples: dict[str, dict[int, float]] = {c.name: {} for c in contenders}
    failures: dict[str, str] = {}
    negotiated: dict[str, str | None] = {}
    async with AsyncExitStack() as stack:
        clients: dict[str, Client] = {}
        for contender in contenders:
            http = await stack.enter_async_context(create_mcp_http_client(headers=contender.headers or None))
            transport = streamable_http_client(contender.url, http_client=http)
            try:
                client = await stack.enter_async_context(Client(transport, mode=contender.mode))
            except Exception as exc:  # boundary: a peer's failure to connect is a result, not a crash
                failures[contender.name] = f"connect failed: {type(exc).__name__}: {exc}"
                continue
            clients[contender.name] = client
            negotiated[contender.name] = client.session.protocol_version
        live = [c for c in contenders if c.name in clients]

        async def call(contender: Contender) -> float:
            started = time.perf_counter()
            result = await clients[contender.name].call_tool(contender.tool, contender.arguments())
            elapsed = time.perf_counter() - started
            if result.is_error:
                raise RuntimeError(f"tool error: {result.content}")
            return elapsed

        for round_index in range(-warmup, calls):
            start = round_index % max(1, len(live))
            for contender in live[start:] + live[:start]:
                try:
                    elapsed = await call(contender)
                except Exception as exc:  # boundary: record why, keep measuring the others
                    failures[contender.name] = f"round {round_index}: {type(exc).__name__}: {exc}"
                    live = [c for c in live if c is not contender]
                    continue
                if round_index >= 0:
                    samples[contender.name][round_index] = elapsed
    return {"samples": samples, "failures": failures, "negotiated": negotiated}


def paired_added(samples: dict[int, float], baseline: dict[int, float]) -> list[float]:
    return [samples[i] - baseline[i] for i in sorted(samples) if i in baseline]


def summarise(contenders: list[Contender], measured: dict[str, Any], calls: int) -> dict[str, Any]:
    samples: dict[str, dict[int, float]] = measured["samples"]
    out: dict[str, Any] = {}
    for contender in contenders:
        name = contender.name
        mine = samples.get(name, {})
        entry: dict[str, Any] = {**contender.info, "negotiated_protocol": measured["negotiated"].get(name)}
        if name in measured["failures"]:
            entry["failed"] = measured["failures"][name]
        if len(mine) == calls:
            entry["ms"] = summary_ms(list(mine.values()))
            base = BASELINE.get(name, "direct")
            if base and base != name and len(samples.get(base, {})) == calls:
                entry["baseline"] = base
                entry["added_ms"] = summary_ms(paired_added(mine, samples[base]))
        out[name] = entry
    return out


def ratios(results: dict[str, Any]) -> dict[str, float]:
    """toolgate's added p50 over each peer's added p50 (same client mode, legacy)."""
    mine = results.get("toolgate", {}).get("added_ms")
    if not mine:
        return {}
    out: dict[str, float] = {}
    for name, entry in results.items():
        theirs = entry.get("added_ms")
        if name.startswith(("contextforge", "fastmcp")) and theirs and theirs["p50"] > 0:
            out[f"toolgate_added_p50/{name}_added_p50"] = round(mine["p50"] / theirs["p50"], 4)
    return out


def run(names: list[str], calls: int, warmup: int) -> dict[str, Any]:
    """Start the upstream and every contender in `names`, measure, stop them all; the result."""
    unknown = sorted(set(names) - set(ALL_CONTENDERS))
    if unknown or "direct" not in names:
        raise SystemExit(f"contenders must include direct and be among {ALL_CONTENDERS}; got {names}")
    load_before = load_average()
    procs = Processes()
    with tempfile.TemporaryDirectory(prefix="toolgate-peers-") as tmp, ExitStack() as stack:
        stack.callback(procs.stop_all)
        upstream_log = Path(tmp) / "upstream.log"
        upstream = start_upstream(procs, upstream_log)
        contenders, unavailable = build_contenders(names, procs, stack, Path(tmp), upstream)
        print("measuring: " + ", ".join(c.name for c in contenders), flush=True)
        load_start = load_average()
        started = time.monotonic()
        measured = anyio.run(measure, contenders, calls, warmup)
        seconds = time.monotonic() - started
        upstream_log_errors = upstream_errors(upstream_log)
    results = summarise(contenders, measured, calls)
    for name, reason in unavailable.items():
        results[name] = {"unavailable": reason}
    found = ratios(results)
    cf_best = found.get("toolgate_added_p50/contextforge_best_added_p50")
    return {
        "benchmark": "peers",
        "calls": calls,
        "warmup": warmup,
        "rotation": "each round calls every contender once; the first contender rotates every round",
        "upstream": "tests.servers.echo_server --transport http (loopback), tool echo {'text': 'ping'}",
        "client": "mcp.Client over streamable_http_client, one session per contender, same code for all",
        "measure_seconds": round(seconds, 1),
        "contenders": results,
        "ratios": found,
        "target": {
            "rule": "toolgate added p50 <= 1/5 of ContextForge's added p50 with its best settings",
            "met": None if cf_best is None else cf_best <= TARGET_RATIO,
        },
        "upstream_log": upstream_log_errors,
        "load": {"before_setup": load_before, "measure_start": load_start, "after": load_average()},
        "machine": machine(),
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{'contender':24}{'p50':>9}{'p99':>9}{'mean':>9}{'added p50':>11}{'added p99':>11}  ms")
    for name, entry in result["contenders"].items():
        if "ms" not in entry:
            print(f"{name:24}  not measured: {entry.get('unavailable') or entry.get('failed')}")
            continue
        ms, added = entry["ms"], entry.get("added_ms")
        extra = f"{added['p50']:11.2f}{added['p99']:11.2f}" if added else f"{'':11}{'':11}"
        print(f"{name:24}{ms['p50']:9.2f}{ms['p99']:9.2f}{ms['mean']:9.2f}{extra}")
    for key, value in result["ratios"].items():
        print(f"{key} = {value}")
    print(f"target (ratio vs contextforge_best <= {TARGET_RATIO}): {result['target']['met']}")
    print(f"load: {result['load']['measure_start']['uptime']} -> {result['load']['after']['uptime']}")
    if result["upstream_log"]["error_lines"]:
        print(
            f"upstream logged {result['upstream_log']['error_lines']} error lines: {result['upstream_log']['examples']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--contenders", default=",".join(ALL_CONTENDERS), help="comma-separated subset")
    parser.add_argument(
        "--out", type=Path, default=None, help="result file (default bench/results/peers.json)"
    )
    args = parser.parse_args()
    result = run([n.strip() for n in args.contenders.split(",") if n.strip()], args.calls, args.warmup)
    result["command"] = "python -m bench.peers " + " ".join(sys.argv[1:])
    if args.out is None:
        path = save("peers", result)
    else:
        path = args.out
        path.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
