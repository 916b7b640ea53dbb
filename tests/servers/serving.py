"""Serve an ASGI app for tests and benchmarks, announcing `READY <port>` once it accepts connections."""

from __future__ import annotations

import socket
from typing import Any

import uvicorn


class _ReadyServer(uvicorn.Server):
    """Announces ``READY <port>`` only after uvicorn has finished its startup."""

    def __init__(self, config: uvicorn.Config, port: int) -> None:
        super().__init__(config)
        self._port = port

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if not self.should_exit:
            print(f"READY {self._port}", flush=True)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before uvicorn starts so ``--port 0`` can report the port the OS picked.

    IPPROTO_TCP must be explicit: asyncio only sets TCP_NODELAY on sockets whose proto
    says TCP, and without it every small response waits ~40 ms for a delayed ACK.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


async def serve_ready(app: Any, host: str, port: int) -> None:
    """Serve `app` on host:port (0 picks a free port) and print `READY <port>` when listening."""
    sock = bind_socket(host, port)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    await _ReadyServer(config, sock.getsockname()[1]).serve(sockets=[sock])
