"""Helpers for tests: skipping rules, free ports, bounded waits, process accounting."""

from __future__ import annotations

import os
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PYTHON = sys.executable
NODE_BIN = ROOT / "node_modules" / ".bin"


def require(condition: bool, reason: str) -> None:
    """Skip when a service or tool is missing on a developer machine; fail in CI, where a
    missing service is a broken environment, never a reason to pass."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def node_command(name: str) -> str:
    """Path of an npm-installed command (see package.json), or skip/fail."""
    path = NODE_BIN / name
    require(path.exists() and shutil.which("node") is not None, f"{name} is not installed (run `npm ci`)")
    return str(path)


def console_script(name: str) -> str:
    """A console script installed next to the test interpreter (e.g. mcp-server-time)."""
    path = Path(PYTHON).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    require(found is not None, f"{name} is not installed")
    assert found is not None
    return found


def children_of(pid: int) -> set[int]:
    """Live descendant process ids of `pid` (Linux /proc), to prove nothing is left behind."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # zombies are gone, just not yet reaped
            continue
        parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


class ServerProcess:
    """A test server started as a real subprocess that prints `READY <port>` when listening."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        import subprocess
        import threading

        self.process = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        ready = threading.Event()
        found: list[int] = []

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                if line.startswith("READY "):
                    found.append(int(line.split()[1]))
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(timeout) or not found:
            self.stop()
            raise RuntimeError(f"{args} did not print READY within {timeout}s")
        self.port = found[0]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except Exception:
                self.process.kill()
                self.process.wait(5)


async def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, interval: float = 0.05) -> None:  # noqa: ASYNC109
    """Poll `predicate` until it holds; fail after `timeout`. For state owned by another process
    or task that offers no event to wait on."""
    import anyio

    with anyio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - nothing to subscribe to; bounded by fail_after
            await anyio.sleep(interval)


def shared_data() -> Path:
    """The benchmark data folder, or skip/fail (see `require`)."""
    from bench.common import find_shared_data

    found = find_shared_data()
    require(found is not None, "the shared benchmark data is not here (set TOOLGATE_SHARED_DATA)")
    assert found is not None
    return found
