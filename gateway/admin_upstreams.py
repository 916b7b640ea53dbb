"""Admin REST API: upstream connections and their circuit state. Routes translate only.

Circuit state is per gateway process: behind a load balancer each replica answers for itself.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from registry.errors import NotFoundError

from .circuit import CircuitSnapshot
from .services import GatewayService
from .upstream import UpstreamStatus

router = APIRouter(prefix="/admin", tags=["upstreams"])


class CircuitOut(BaseModel):
    state: Literal["closed", "open", "half_open"]
    consecutive_failures: int
    opened_at: datetime | None = Field(description="When the circuit last opened (UTC); null while closed.")
    retry_in_s: float | None = Field(
        description="Seconds until a trial call may go through; null while closed."
    )
    last_error: str | None

    @classmethod
    def of(cls, snap: CircuitSnapshot) -> CircuitOut:
        opened = datetime.fromtimestamp(snap.opened_at, UTC) if snap.opened_at is not None else None
        retry = round(snap.retry_in_s, 3) if snap.retry_in_s is not None else None
        return cls(
            state=snap.state,
            consecutive_failures=snap.consecutive_failures,
            opened_at=opened,
            retry_in_s=retry,
            last_error=snap.last_error,
        )


class UpstreamOut(BaseModel):
    name: str
    enabled: bool
    connected: bool = Field(description="This process holds a session to the server.")
    alive: bool = Field(description="That session's transport is open.")
    in_flight: int = Field(description="Calls accepted and not yet finished.")
    waiting: int = Field(description="Of those, calls waiting for a concurrency slot.")
    connect_attempts: int = Field(description="Sessions this process tried to open.")
    circuit: CircuitOut

    @classmethod
    def of(cls, enabled: bool, status: UpstreamStatus) -> UpstreamOut:
        return cls(
            name=status.name,
            enabled=enabled,
            connected=status.connected,
            alive=status.alive,
            in_flight=status.in_flight,
            waiting=status.waiting,
            connect_attempts=status.connect_attempts,
            circuit=CircuitOut.of(status.circuit),
        )


def _service(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


async def _enabled(service: GatewayService, name: str) -> bool:
    server = await service.registry.find_server(name)
    if server is None:
        raise NotFoundError(f"no server named {name!r}")
    return server.enabled


@router.get("/upstreams", response_model=list[UpstreamOut])
async def list_upstreams(request: Request) -> list[UpstreamOut]:
    """Every registered server: its session, its load and its circuit, in this process."""
    service = _service(request)
    servers = await service.registry.list_servers()
    return [UpstreamOut.of(s.enabled, service.pool.status(s.name)) for s in servers]


@router.get("/upstreams/{name}", response_model=UpstreamOut)
async def get_upstream(name: str, request: Request) -> UpstreamOut:
    service = _service(request)
    enabled = await _enabled(service, name)
    return UpstreamOut.of(enabled, service.pool.status(name))


@router.post("/upstreams/{name}/reset", response_model=UpstreamOut)
async def reset_upstream(name: str, request: Request) -> UpstreamOut:
    """Close the server's circuit now (after fixing it): the next call connects again."""
    service = _service(request)
    enabled = await _enabled(service, name)
    service.pool.reset_circuit(name)
    return UpstreamOut.of(enabled, service.pool.status(name))
