"""The servable catalog: enabled tools of enabled servers, held in memory for lookup and search.

Rebuilt from the registry after every change (sync, enable/disable, delete). The lexical index
is updated incrementally: only tools whose definition hash changed are re-indexed.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import anyio

from registry.models import Tool
from registry.repository import Registry, spec_of
from registry.specs import ServerSpec
from retrieval.documents import ToolText
from retrieval.lexical import LexicalIndex


@dataclass(frozen=True, slots=True)
class CatalogTool:
    id: int
    exposed_name: str
    server: str
    name: str  # upstream name
    title: str | None
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    annotations: dict[str, Any] | None
    definition_hash: str


@dataclass(frozen=True, slots=True)
class SearchHit:
    tool: CatalogTool
    score: float


class Catalog:
    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self._tools: dict[str, CatalogTool] = {}
        self._servers: dict[str, ServerSpec] = {}
        self._index = LexicalIndex()
        self._lock = anyio.Lock()
        self.ready = False

    async def refresh(self) -> None:
        """Reload from the registry; concurrent callers queue so the last reload wins."""
        async with self._lock:
            rows = await self._registry.servable_tools()
            self._apply(rows)
            self.ready = True

    def _apply(self, rows: list[Tool]) -> None:
        tools: dict[str, CatalogTool] = {}
        servers: dict[str, ServerSpec] = {}
        for row in rows:
            server = row.server
            if server.name not in servers:
                servers[server.name] = spec_of(server)
            tools[row.exposed_name] = CatalogTool(
                id=row.id,
                exposed_name=row.exposed_name,
                server=server.name,
                name=row.name,
                title=row.title,
                description=row.description,
                input_schema=row.input_schema,
                output_schema=row.output_schema,
                annotations=row.annotations,
                definition_hash=row.definition_hash,
            )
        for name, old in self._tools.items():
            new = tools.get(name)
            if new is None or new.definition_hash != old.definition_hash:
                self._index.remove(name)
        for name, fresh in tools.items():
            previous = self._tools.get(name)
            if previous is None or previous.definition_hash != fresh.definition_hash:
                self._index.add(self._text(fresh, servers[fresh.server]))
        self._tools = tools
        self._servers = servers

    @staticmethod
    def _text(tool: CatalogTool, server: ServerSpec) -> ToolText:
        return ToolText(
            tool_id=tool.exposed_name,
            server=tool.server,
            server_description=server.description,
            name=tool.name,
            title=tool.title or "",
            description=tool.description,
            input_schema=tool.input_schema,
            examples=(),
        )

    def __len__(self) -> int:
        return len(self._tools)

    def get(self, exposed_name: str) -> CatalogTool | None:
        return self._tools.get(exposed_name)

    def server_spec(self, name: str) -> ServerSpec | None:
        return self._servers.get(name)

    def suggest(self, name: str, n: int = 3) -> list[str]:
        """The exposed names closest to a mistyped one (also matching bare upstream names)."""
        exact_upstream = [t.exposed_name for t in self._tools.values() if t.name == name]
        close = difflib.get_close_matches(name, list(self._tools), n=n, cutoff=0.5)
        return list(dict.fromkeys(exact_upstream + close))[:n]

    def search(self, query: str, limit: int, *, server: str | None = None) -> list[SearchHit]:
        allowed = None if server is None else (lambda tool_id: self._tools[tool_id].server == server)
        hits = self._index.search(query, limit, allowed=allowed)
        return [SearchHit(self._tools[tool_id], score) for tool_id, score in hits if tool_id in self._tools]
