"""Who is calling: the identity that auth attaches to each request, and what it may reach.

A shared contract between auth (which sets it), the front door and retrieval (which apply the
scope inside the index query), rate limiting and logging (which key on `Principal.id`).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["admin", "client"]
ROLES: tuple[Role, ...] = ("admin", "client")
# Where the principal lives in an ASGI scope's "state" (request.state / ctx.request.state).
STATE_KEY = "toolgate_principal"


@dataclass(frozen=True, slots=True)
class Scope:
    """The tools a key or token may see, find and call: those of `servers` plus the exposed
    names in `tools`. An empty scope reaches nothing; `Principal.scope is None` reaches all."""

    servers: frozenset[str] = frozenset()
    tools: frozenset[str] = frozenset()

    def allows(self, server: str, exposed_name: str) -> bool:
        return server in self.servers or exposed_name in self.tools

    def to_dict(self) -> dict[str, list[str]]:
        return {"servers": sorted(self.servers), "tools": sorted(self.tools)}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. `id` is stable per key or token subject ("key:12",
    "jwt:<iss>/<sub>", "local" when auth is off) and never holds a secret."""

    id: str
    role: Role
    scope: Scope | None = None  # None: every tool
    kind: Literal["key", "jwt", "local"] = "key"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def allows(self, server: str, exposed_name: str) -> bool:
        return self.scope is None or self.scope.allows(server, exposed_name)


LOCAL = Principal(id="local", role="admin", kind="local")  # auth off: a loopback-only setting


def principal_of(scope: MutableMapping[str, Any]) -> Principal | None:
    """The principal auth attached to an ASGI scope, if any."""
    state = scope.get("state")
    if not isinstance(state, MutableMapping):
        return None
    found = state.get(STATE_KEY)
    return found if isinstance(found, Principal) else None


def attach(scope: MutableMapping[str, Any], principal: Principal) -> None:
    """Record the principal on an ASGI scope so that every later layer sees it."""
    scope.setdefault("state", {})[STATE_KEY] = principal
