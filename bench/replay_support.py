"""Pieces shared by the benchmarks that drive a real gateway over MCP (``bench.learning_curve``,
``bench.memory_replay``): ToolBench servers served by ``bench.multihost``, their gateway names,
the processes started (always stopped), a gateway from a frozen copy of HEAD, the import of
every virtual server, the ToolBench id <-> exposed name map, and retried meta-tool calls."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import anyio
import httpx
from mcp import Client

from bench.common import ROOT, TOOLGATE, free_port, wait_ready_line
from bench.multihost import load_groups

CALL_ATTEMPTS = 3
GATEWAY_HASH_SEED = "0"
_UNSAFE = re.compile(r"[^A-Za-z0-9]+")


# -- data and names ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerEntry:
    """One virtual server of multihost: its index, ToolBench name, gateway name and tools."""

    index: int
    source: str
    name: str
    category: str | None
    tools: dict[str, str]  # upstream tool name (as multihost serves it) -> ToolBench tool id


def safe_server_name(source: str, taken: set[str], index: int) -> str:
    """A gateway server name for a ToolBench server: [A-Za-z0-9_-]{1,32}, starting with a letter
    or digit, no '__', unique; readable words kept (the name is part of the indexed text)."""
    base = _UNSAFE.sub("_", source).strip("_")[:32].rstrip("_") or f"s{index}"
    name, n = base, 2
    while name in taken:
        suffix = f"_{n}"
        name, n = base[: 32 - len(suffix)].rstrip("_") + suffix, n + 1
    taken.add(name)
    return name


def read_tool_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def server_entries(path: Path) -> list[ServerEntry]:
    """The virtual servers multihost builds from ``path``, with each served tool's ToolBench id.

    Uses :func:`bench.multihost.load_groups` itself: it keeps one spec per data row, in row
    order within each ``server`` group, renaming a repeated name (or ``echo``) to ``name_2``...
    so zipping a group's rows with its specs gives the served name of every row. A ToolBench id
    seen twice keeps its first row, as :func:`retrieval.corpus.load_tools` does."""
    rows_by_server: dict[str, list[dict[str, Any]]] = {}
    for row in read_tool_rows(path):
        rows_by_server.setdefault(str(row["server"]), []).append(row)
    entries: list[ServerEntry] = []
    taken: set[str] = set()
    seen_ids: set[str] = set()
    for index, group in enumerate(load_groups(path)):
        rows = rows_by_server[group.name]
        tools: dict[str, str] = {}
        for row, spec in zip(rows, group.tools, strict=True):
            tool_id = f"{row['server']}/{row['name']}"
            if tool_id not in seen_ids:
                seen_ids.add(tool_id)
                tools[spec.name] = tool_id
        category = next((str(r["category"]) for r in rows if r.get("category")), None)
        entries.append(
            ServerEntry(
                index=index,
                source=group.name,
                name=safe_server_name(group.name, taken, index),
                category=category[:64] if category else None,
                tools=tools,
            )
        )
    return entries


def minimal_value(schema: Any) -> Any:
    """A small value valid for a JSON schema fragment: enum/const first, else by type."""
    if not isinstance(schema, dict):
        return "x"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "string":
        return "x" * max(1, int(schema.get("minLength", 1)))
    if kind in ("integer", "number"):
        minimum = schema.get("minimum")
        return max(1, int(minimum)) if isinstance(minimum, int | float) else 1
    if kind == "boolean":
        return True
    if kind == "array":
        return [minimal_value(schema.get("items"))] * int(schema.get("minItems", 0))
    if kind == "object":
        return minimal_arguments(schema)
    if kind == "null":
        return None
    return "x"


def minimal_arguments(schema: Any) -> dict[str, Any]:
    """Arguments for a tool: its required properties only, each with :func:`minimal_value`."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, dict):
        properties = {}
    if not isinstance(required, list):
        required = []
    return {str(name): minimal_value(properties.get(name, {})) for name in required}


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Processes:
    """Every process this benchmark starts, so all of them are stopped whatever happens."""

    started: list[subprocess.Popen[str]] = field(default_factory=list)
    logs: list[TextIO] = field(default_factory=list)

    def start(
        self, args: list[str], env: dict[str, str], log: Path, stdout: bool, cwd: Path = ROOT
    ) -> subprocess.Popen[str]:
        handle = log.open("w", encoding="utf-8")
        self.logs.append(handle)
        process = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE if stdout else handle,
            stderr=handle,
            text=True,
        )
        self.started.append(process)
        return process

    def stop(self, process: subprocess.Popen[str]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if process.stdout is not None:
            process.stdout.close()

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)
        for handle in self.logs:
            handle.close()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def error_lines(path: Path, limit: int = 40) -> list[str]:
    """The lines of a process log around errors (tracebacks and ERROR/CRITICAL records)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    marks = [i for i, line in enumerate(lines) if re.search(r"Traceback|ERROR|CRITICAL|Exception", line)]
    picked: list[str] = []
    for i in marks:
        for line in lines[i : i + 12]:
            if len(picked) >= limit:
                return picked
            picked.append(line[:300])
    return picked


GATEWAY_PACKAGES = ("gateway", "retrieval", "registry", "migrations")


@dataclass(frozen=True)
class GatewayCode:
    """Where the gateway's code comes from: the checkout as it is, or a frozen copy of HEAD."""

    source: str  # "head" or "worktree"
    cwd: Path
    commit: str
    dirty: list[str]  # gateway package files that differ from HEAD in the checkout


def gateway_code(source: str, workdir: Path) -> GatewayCode:
    """Others edit the checkout while benchmarks run, and each fold starts a new gateway process:
    with ``head`` every fold runs the same committed code, extracted with ``git archive``."""
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", *GATEWAY_PACKAGES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    dirty = sorted(line[3:] for line in status.splitlines() if line.strip())
    if source == "worktree":
        return GatewayCode(source, ROOT, commit, dirty)
    target = workdir / "code"
    target.mkdir()
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return GatewayCode(source, target, commit, dirty)


def start_gateway(
    procs: Processes,
    data_dir: Path,
    code: GatewayCode,
    extra_env: Mapping[str, str] | None = None,
    log: Path | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """``toolgate serve`` on a free port and ``data_dir``, ready on ``/readyz``; ``extra_env``
    (gateway settings) goes over the defaults below; the log is ``<data_dir>.log`` unless given."""
    port = free_port()
    env = {
        **os.environ,
        "TOOLGATE_DATA_DIR": str(data_dir),
        "TOOLGATE_SYNC_INTERVAL_S": "0",
        "TOOLGATE_LOG_LEVEL": "WARNING",
        # Benchmarks run on loopback against loopback upstreams: no keys, no SSRF guard.
        "TOOLGATE_AUTH": "off",
        "TOOLGATE_UPSTREAM_ALLOW_PRIVATE": "127.0.0.0/8",
        "TOOLGATE_UPSTREAM_IDLE_S": "0",
        # Rankings of a fresh gateway vary with the hash seed (ties, set order): fixed, so a run
        # can be repeated exactly.
        "PYTHONHASHSEED": GATEWAY_HASH_SEED,
        **(extra_env or {}),
    }
    env.pop("DATABASE_URL", None)
    log = log if log is not None else data_dir.parent / f"{data_dir.name}.log"
    # `python -c` puts the working directory first on sys.path, ahead of the editable install.
    command = [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())"]
    if code.source == "worktree":
        command = [TOOLGATE]
    process = procs.start([*command, "serve", "--port", str(port)], env, log, stdout=False, cwd=code.cwd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited ({process.returncode}):\n{tail(log)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the gateway was not ready in 120 s:\n{tail(log)}")


@contextmanager
def multihost(procs: Processes, data: Path, servers: int, workdir: Path) -> Iterator[int]:
    process = procs.start(
        [
            sys.executable,
            "-m",
            "bench.multihost",
            "--servers",
            str(servers),
            "--data",
            str(data),
            "--port",
            "0",
        ],
        dict(os.environ),
        workdir / "multihost.log",
        stdout=True,
    )
    try:
        yield wait_ready_line(process, timeout=120)
    finally:
        procs.stop(process)


# -- the gateway over MCP ----------------------------------------------------------------------


@dataclass
class ToolMap:
    """ToolBench id <-> exposed name in one gateway."""

    exposed: dict[str, str]  # ToolBench id -> exposed name
    tool_ids: dict[str, int]  # exposed name -> admin tool id
    source_of: dict[str, str]  # exposed name -> ToolBench id
    catalog_tools: int
    unmapped: list[str]


async def import_servers(
    http: httpx.AsyncClient, port: int, entries: Sequence[ServerEntry]
) -> dict[str, Any]:
    document = {
        "mcpServers": {
            entry.name: {
                "type": "http",
                "url": f"http://127.0.0.1:{port}/s/{entry.index}/mcp",
                **({"category": entry.category} if entry.category else {}),
            }
            for entry in entries
        }
    }
    response = await http.post("/admin/import", json=document)
    if response.status_code != 200:
        raise RuntimeError(f"import failed ({response.status_code}): {response.text[:2000]}")
    body: dict[str, Any] = response.json()
    failed = [s for s in body["syncs"] if not s["ok"]]
    if failed:
        raise RuntimeError(f"{len(failed)} servers failed to sync, e.g. {failed[:3]}")
    deadline = time.monotonic() + 1800
    while True:
        index: dict[str, Any] = (await http.get("/admin/index")).json()
        if index["pending"] == 0 and index["ready"]:
            return index
        if time.monotonic() > deadline:
            raise RuntimeError(f"the index still has {index['pending']} tools pending")
        await anyio.sleep(0.5)


async def map_tools(http: httpx.AsyncClient, entries: Sequence[ServerEntry]) -> ToolMap:
    listed: dict[tuple[str, str], tuple[str, int]] = {}
    offset, total = 0, None
    while total is None or offset < total:
        page = (await http.get("/admin/tools", params={"limit": 1000, "offset": offset})).json()
        total = int(page["total"])
        for tool in page["tools"]:
            listed[tool["server"], tool["name"]] = (tool["exposed_name"], int(tool["id"]))
        offset += len(page["tools"])
        if not page["tools"]:
            break
    exposed: dict[str, str] = {}
    unmapped: list[str] = []
    for entry in entries:
        for upstream, tool_id in entry.tools.items():
            found = listed.get((entry.name, upstream))
            if found is None:
                unmapped.append(tool_id)
            else:
                exposed[tool_id] = found[0]
    return ToolMap(
        exposed=exposed,
        tool_ids={name: tid for name, tid in listed.values()},
        source_of={name: tool_id for tool_id, name in exposed.items()},
        catalog_tools=len(listed),
        unmapped=unmapped,
    )


async def call(
    client: Client, tool: str, arguments: dict[str, Any], errors: list[str]
) -> tuple[Any | None, float]:
    """One meta-tool call, retried up to twice when the protocol call itself fails (not when the
    tool answers ``isError``); the result (None after three failures) and the successful
    attempt's latency. Every failure is appended to ``errors``."""
    for attempt in range(1, CALL_ATTEMPTS + 1):
        started = time.perf_counter()
        try:
            result = await client.call_tool(tool, arguments)
        except Exception as exc:  # MCPError from the gateway, or a transport error
            errors.append(f"{tool} attempt {attempt}: {type(exc).__name__}: {exc}"[:300])
            await anyio.sleep(1.0)
            continue
        return result, time.perf_counter() - started
    return None, 0.0


def cards(result: Any) -> list[dict[str, Any]] | None:
    if result is None or result.is_error or not isinstance(result.structured_content, dict):
        return None
    tools = result.structured_content.get("tools")
    return tools if isinstance(tools, list) else None
