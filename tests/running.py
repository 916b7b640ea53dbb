"""A real `toolgate serve` process for end-to-end tests."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

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
            # The tests' upstreams listen on loopback, which the SSRF guard refuses by default
            # (tests/test_upstream_policy.py covers the guard itself).
            "TOOLGATE_UPSTREAM_ALLOW_PRIVATE": "127.0.0.0/8",
            # Auth is required by default: each gateway gets its own bootstrap admin key.
            "TOOLGATE_ADMIN_KEY": "tg_test_admin_" + secrets.token_urlsafe(24),
            **(extra_env or {}),
        }
        self.admin_key = self.env["TOOLGATE_ADMIN_KEY"]
        self.process = subprocess.Popen(
            [TOOLGATE, "serve", "--port", str(self.port)],
            cwd=ROOT,
            env=self.env,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Always drained: a gateway logging faster than nobody reads would block on a full pipe.
        self.log_lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.base = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.base, timeout=60, headers=self.auth_headers())
        self._wait_ready()

    def _wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._reader.join(10)
                raise RuntimeError(f"gateway exited: {self.log_text()[-4000:]}")
            try:
                if self.http.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError("gateway did not become ready")

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log_lines.append(line)

    def log_text(self) -> str:
        """Everything the gateway wrote to stderr (its logs) so far."""
        return "".join(list(self.log_lines))

    @property
    def mcp_url(self) -> str:
        return f"{self.base}/mcp"

    def auth_headers(self, token: str | None = None) -> dict[str, str]:
        """The Authorization header for ``token`` (default: the admin key)."""
        return {"Authorization": f"Bearer {token or self.admin_key}"}

    @asynccontextmanager
    async def client(self, token: str | None = None, **options: Any) -> AsyncIterator[Client]:
        """A real SDK client on /mcp sending ``token`` (default: the admin key); ``options``
        go to `mcp.Client` (mode, message_handler, ...)."""
        # The SDK's own timeouts: a response stream may stay open for minutes.
        timeout = httpx2.Timeout(30.0, read=300.0)
        async with (
            httpx2.AsyncClient(headers=self.auth_headers(token), timeout=timeout) as http,
            Client(streamable_http_client(self.mcp_url, http_client=http), **options) as client,
        ):
            yield client

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
        self._reader.join(10)
        self.http.close()
        alive = set()
        for pid in upstreams:
            try:
                os.kill(pid, 0)
                alive.add(pid)
            except ProcessLookupError:
                pass
        return alive
