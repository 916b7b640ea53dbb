"""Follow registry changes made by other replicas.

Replicas share one database but each holds its own catalog (tool lookup, lexical index, usage
state). A replica that registers, syncs, disables or deletes refreshes itself; the others
notice here, by polling a cheap fingerprint of the registry (row counts and the latest update
times of servers, tools and usage), and then refresh their catalog or reload usage evidence.
One indexed aggregate query per table every couple of seconds costs the database nothing
noticeable, needs no extra service, and survives a restarted database by simply retrying.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import anyio
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from registry.models import Server, Tool, ToolUsage
from registry.repository import Registry

logger = logging.getLogger(__name__)


_FINGERPRINT_LIMIT_S = 10.0
_FOLLOW_LIMIT_S = 600.0


@dataclass(frozen=True, slots=True)
class Fingerprint:
    servers: tuple[int, datetime | None]
    tools: tuple[int, datetime | None]
    usage: tuple[int, datetime | None]


class Follower(Protocol):
    """What the watcher drives: the catalog. `loaded_fingerprint` is the registry's
    fingerprint read just before the follower's latest reload read the rows (None: unknown),
    so a change this replica made and already reloaded is not reloaded a second time."""

    @property
    def loaded_fingerprint(self) -> Fingerprint | None: ...

    async def refresh(self) -> None: ...

    async def reload_usage(self) -> None: ...


async def fingerprint(registry: Registry) -> Fingerprint:
    """Counts and latest update times of the registry's tables, in one round trip each."""
    async with registry.session() as session:
        parts = []
        for model in (Server, Tool, ToolUsage):
            row = (await session.execute(select(func.count(), func.max(model.updated_at)))).one()
            parts.append((int(row[0]), row[1]))
    return Fingerprint(*parts)


class RegistryWatcher:
    """Polls the fingerprint; a changed server or tool refreshes the catalog, changed usage
    reloads usage evidence. The first poll only records the starting point."""

    def __init__(self, registry: Registry, follower: Follower, *, interval_s: float) -> None:
        self._registry = registry
        self._follower = follower
        self._interval_s = interval_s
        self._last: Fingerprint | None = None
        self.refreshes = 0
        self.usage_reloads = 0

    async def check(self) -> None:
        """One poll: compare with the last fingerprint and follow what changed."""
        await self._follow(await fingerprint(self._registry))

    async def _follow(self, current: Fingerprint) -> None:
        last, self._last = self._last, current
        if last is None:
            return
        loaded = self._follower.loaded_fingerprint
        already = loaded is not None and (loaded.servers, loaded.tools) == (current.servers, current.tools)
        if (current.servers, current.tools) != (last.servers, last.tools) and not already:
            await self._follower.refresh()
            self.refreshes += 1
        if current.usage != last.usage:
            await self._follower.reload_usage()
            self.usage_reloads += 1

    async def run(self) -> None:
        """Poll forever; a database outage is logged once and retried at the same pace."""
        failing = False
        while True:
            try:
                # Never cancelled mid-query: SQLAlchemy then terminates the connection with a
                # close task that can outlive the event loop and hang the process's exit.
                current: Fingerprint | None = None
                with anyio.move_on_after(_FINGERPRINT_LIMIT_S, shield=True):
                    current = await fingerprint(self._registry)
                # A reload of a large catalog takes tens of seconds (21.7k tools: 15-35 s on
                # 2 loaded cores): its own, longer limit, so it is not cut off halfway.
                if current is not None:
                    with anyio.move_on_after(_FOLLOW_LIMIT_S, shield=True):
                        await self._follow(current)
                if failing:
                    logger.info("registry watch: the database answers again")
                failing = False
            except (SQLAlchemyError, OSError) as exc:
                if not failing:
                    logger.warning("registry watch: cannot read the registry: %s", type(exc).__name__)
                failing = True
            await anyio.sleep(self._interval_s)
