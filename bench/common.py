"""Shared pieces of the benchmarks: subprocess servers, the gateway process, statistics, results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TOOLGATE = str(Path(sys.executable).parent / "toolgate")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "p50": round(percentile(ms, 50), 3),
        "p99": round(percentile(ms, 99), 3),
        "mean": round(statistics.fmean(ms), 3),
        "min": round(min(ms), 3),
        "max": round(max(ms), 3),
    }


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "mcp": version("mcp"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def wait_ready_line(process: subprocess.Popen[str], timeout: float = 60) -> int:
    """Read stdout until `READY <port>`; return the port."""
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("server exited before it was ready")
        if line.startswith("READY "):
            return int(line.split()[1])
    raise RuntimeError("server was not ready in time")


class GatewayProcess:
    """`toolgate serve` on a free port with its own data dir; the admin API through `self.http`."""

    def __init__(self, data_dir: Path, port: int, extra_env: dict[str, str] | None = None) -> None:
        env = {
            **os.environ,
            "TOOLGATE_DATA_DIR": str(data_dir),
            "TOOLGATE_SYNC_INTERVAL_S": "0",
            # Benchmarks run on loopback against loopback upstreams: no keys, no SSRF guard.
            "TOOLGATE_AUTH": "off",
            "TOOLGATE_UPSTREAM_ALLOW_PRIVATE": "127.0.0.0/8",
            "TOOLGATE_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        env.pop("DATABASE_URL", None)
        self.process = subprocess.Popen([TOOLGATE, "serve", "--port", str(port)], cwd=ROOT, env=env)
        self.url = f"http://127.0.0.1:{port}"
        self.http = httpx.Client(base_url=self.url, timeout=600)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()  # never leave a half-started gateway behind
        raise RuntimeError("gateway did not become ready")

    def stop(self) -> None:
        self.http.close()
        self.process.terminate()
        self.process.wait(60)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def find_shared_data() -> Path | None:
    """The benchmark data folder: TOOLGATE_SHARED_DATA, or `../shared/data` beside the checkout."""
    candidates = [
        os.environ.get("TOOLGATE_SHARED_DATA"),
        ROOT.parent / "shared" / "data",
        "/work/shared/data",
    ]
    for candidate in candidates:
        if candidate and (Path(candidate) / "README.md").exists():
            return Path(candidate)
    return None


def shared_data() -> Path:
    found = find_shared_data()
    if found is None:
        raise SystemExit("the shared benchmark data is not here: set TOOLGATE_SHARED_DATA")
    return found
