"""What one caller of the front door may see: its principal's scope applied to names, results
and messages, so an out-of-scope tool is indistinguishable from one that does not exist.

Searches apply the scope inside the index query (`SearchFilters.scope`); this module covers
the rest: calls, "did you mean" suggestions, working-set names, the parsed intent (which
names the tools and servers it recognised) and the catalog size.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio
import mcp_types as types
from mcp.server.context import ServerRequestContext

from registry.naming import exposed_name
from retrieval.index import IndexFilter, IndexScope
from retrieval.intent_stage import CATEGORY_LABEL, SERVER_LABEL

from .catalog import Catalog
from .forwarder import error_result
from .principal import LOCAL, Principal, Scope, principal_of

# An HTTP request that reached the front door without a principal (auth not installed in
# front of it): it reaches nothing, rather than everything.
NOBODY = Principal(id="unauthenticated", role="client", scope=Scope())
_SUGGESTIONS = 3


def request_principal(ctx: ServerRequestContext[Any]) -> Principal:
    """The caller: the principal auth attached on HTTP; on stdio (no request), local."""
    request = ctx.request
    scope = getattr(request, "scope", None)
    if request is None or not isinstance(scope, dict):
        return LOCAL
    return principal_of(scope) or NOBODY


class ScopeView:
    """The catalog as one principal sees it."""

    def __init__(self, catalog: Catalog, principal: Principal) -> None:
        self.catalog = catalog
        self.principal = principal
        self.scope = principal.scope

    @property
    def restricted(self) -> bool:
        return self.scope is not None

    def allows(self, name: str) -> bool:
        """Whether the tool exists, is servable and is in scope."""
        tool = self.catalog.get(name)
        return tool is not None and self.principal.allows(tool.server, name)

    def names(self, names: Iterable[str]) -> list[str]:
        """The names the caller may see, in order (all of them when unrestricted)."""
        if self.scope is None:
            return list(names)
        return [name for name in names if self.allows(name)]

    def forgettable(self, names: Iterable[str]) -> list[str]:
        """Names the caller may drop from a working set: in scope, or no longer in the catalog
        (a tool deleted meanwhile must still be removable)."""
        if self.scope is None:
            return list(names)
        return [name for name in names if self.catalog.get(name) is None or self.allows(name)]

    def unknown_tool(self, name: str) -> types.CallToolResult:
        """The forwarder's unknown-tool answer, suggesting only tools in scope."""
        close = self.catalog.suggest(name, n=max(len(self.catalog), 1)) if self.scope is not None else []
        suggestions = [s for s in close if self.allows(s)][:_SUGGESTIONS]
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        return error_result(f"unknown tool {name!r}.{hint} Use find_tools to look tools up.")

    async def total_tools(self) -> int:
        """How many servable tools the caller can reach (the hidden catalog's size stays hidden)."""
        if self.scope is None:
            return len(self.catalog)
        flt = IndexFilter(scope=IndexScope(servers=self.scope.servers, tool_ids=self.scope.tools))
        return await anyio.to_thread.run_sync(self.catalog.retriever.index.count, flt)

    def intent(self, parsed: dict[str, Any]) -> dict[str, Any]:
        """The parsed intent without the tools, servers and categories out of scope that the
        parser recognised in the request (it knows the whole catalog)."""
        if self.scope is None:
            return parsed
        servers = self._servers()
        categories = {
            spec.category for s in servers if (spec := self.catalog.server_spec(s)) and spec.category
        }
        labels = {SERVER_LABEL + s for s in servers} | {CATEGORY_LABEL + c for c in categories}
        subs = []
        for sub in parsed.get("sub_intents", []):
            subs.append(
                {
                    **sub,
                    "domains": [d for d in sub.get("domains", []) if d.get("label") in labels],
                    "named_tools": [n for n in sub.get("named_tools", []) if self._names_tool(n)],
                    "named_servers": [s for s in sub.get("named_servers", []) if s in servers],
                }
            )
        return {**parsed, "sub_intents": subs}

    def _servers(self) -> set[str]:
        assert self.scope is not None
        servers = set(self.scope.servers)
        for name in self.scope.tools:
            tool = self.catalog.get(name)
            if tool is not None:
                servers.add(tool.server)
        return servers

    def _names_tool(self, upstream_name: str) -> bool:
        """Whether a tool of that upstream name is in scope."""
        assert self.scope is not None
        for name in self.scope.tools:
            tool = self.catalog.get(name)
            if tool is not None and tool.name == upstream_name:
                return True
        for server in self.scope.servers:
            tool = self.catalog.get(exposed_name(server, upstream_name))
            if tool is not None and tool.server == server and tool.name == upstream_name:
                return True
        return False


def visible_memory(view: ScopeView, memory: dict[str, Any]) -> dict[str, Any]:
    """A working-set view without names out of scope."""
    if not view.restricted:
        return memory
    return {**memory, **{key: view.names(memory.get(key, [])) for key in ("added", "removed", "held")}}
