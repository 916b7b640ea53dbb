"""A real `toolgate serve` process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support import PYTHON, ROOT, children_of, free_port

TOOLGATE = str(Path(PYTHON).parent / "toolgate")


class RunningGateway:
    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        # The caller's shell may point DATABASE_URL anywhere; only extra_env may set it.
        inherited = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        self.env = {
            **inherited,
            "TOOLGATE_DATA_DIR": str(data_dir),
            "TOOLGATE_SYNC_INTERVAL_S": "0",
            "TOOLGATE_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        self.process = subprocess.Popen(
            [TOOLGATE, "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base, timeout=60)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"gateway exited: {self.process.stderr.read() if self.process.stderr else ''}"
                )
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"

    def register(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post("/admin/servers", json=body)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        assert data["status"] == "ok", data["last_error"]
        return data

    def stop(self) -> set[int]:
        """SIGTERM, wait, and return the upstream processes that outlived the gateway."""
        upstreams = children_of(self.process.pid)
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        self.http.close()
        alive = set()
        for pid in upstreams:
            try:
                os.kill(pid, 0)
                alive.add(pid)
            except ProcessLookupError:
                pass
        return alive
