"""The search playground: one query through the same `find_tools` path clients use, shown with
its parsed intent, each stage's score per tool and what the result costs in tokens.

Searches here pass no conversation, so they are neither learned from nor recorded as turns."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response

from registry.models import Tool
from retrieval.tokens import tokenizer_name, tool_definition_tokens

from ..catalog import SearchFilters, SearchHit
from ..meta_tools import MAX_QUERY_CHARS
from .web import render, service_of

router = APIRouter()

# The stage columns, in pipeline order; any other stage a hit reports is shown after them.
STAGES = ("dense", "lexical", "server", "usage", "fused")


@dataclass(frozen=True, slots=True)
class Row:
    rank: int
    hit: SearchHit
    tokens: int
    usage_count: int


class ListingTokens:
    """Tokens of listing every servable tool, counted once per definition: the comparison the
    playground shows. The cache follows the registry (entries of gone tools are dropped)."""

    def __init__(self) -> None:
        self._by_definition: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def total(self, tools: Iterable[Tool]) -> int:
        with self._lock:
            fresh: dict[tuple[str, str], int] = {}
            for tool in tools:
                key = (tool.exposed_name, tool.definition_hash)
                cached = self._by_definition.get(key)
                if cached is None:
                    cached = tool_definition_tokens(tool.exposed_name, tool.description, tool.input_schema)
                fresh[key] = cached
            self._by_definition = fresh
            return sum(fresh.values())


def _listing(request: Request) -> ListingTokens:
    state = request.app.state
    counter = getattr(state, "console_listing_tokens", None)
    if not isinstance(counter, ListingTokens):
        counter = ListingTokens()
        state.console_listing_tokens = counter
    return counter


def _limit(raw: str | None, default: int, maximum: int) -> int:
    try:
        return min(max(1, int(raw or default)), maximum)
    except ValueError:
        return default


@router.get("/playground")
async def playground(request: Request) -> Response:
    service = service_of(request)
    settings = getattr(request.app.state, "settings", None)
    default_limit = int(getattr(settings, "find_limit_default", 5))
    max_limit = int(getattr(settings, "find_limit_max", 50))
    params = request.query_params
    query = params.get("q", "").strip()[:MAX_QUERY_CHARS]
    form = {
        "q": query,
        "limit": _limit(params.get("limit"), default_limit, max_limit),
        "server": params.get("server", "").strip(),
        "category": params.get("category", "").strip(),
        "read_only": params.get("read_only", ""),
        "adaptive": params.get("adaptive") == "true",
    }
    context: dict[str, Any] = {
        "title": "Playground",
        "page": "playground",
        "form": form,
        "max_limit": max_limit,
        "servers": [s.name for s in await service.registry.list_servers()],
        "ran": False,
    }
    if query:
        context.update(await _run(request, form))
    return render(request, "playground.html", context)


async def _run(request: Request, form: dict[str, Any]) -> dict[str, Any]:
    service = service_of(request)
    filters = SearchFilters(
        server=form["server"] or None,
        category=form["category"] or None,
        read_only={"true": True, "false": False}.get(form["read_only"]),
    )
    started = time.perf_counter()
    outcome = await service.find_tools(form["q"], form["limit"], filters, adaptive=form["adaptive"])
    elapsed_ms = (time.perf_counter() - started) * 1000
    rows = [
        Row(
            rank=rank,
            hit=hit,
            tokens=tool_definition_tokens(hit.tool.exposed_name, hit.tool.description, hit.tool.input_schema),
            usage_count=service.usage_count(hit.tool.exposed_name),
        )
        for rank, hit in enumerate(outcome.hits, start=1)
    ]
    servable = await service.registry.servable_tools()
    listing = await anyio.to_thread.run_sync(_listing(request).total, servable)
    result_tokens = sum(row.tokens for row in rows)
    extra = sorted({stage for row in rows for stage in row.hit.stages} - set(STAGES))
    return {
        "ran": True,
        "rows": rows,
        "stages": [*STAGES, *extra],
        "intent": outcome.intent.to_dict() if outcome.intent is not None else None,
        "elapsed_ms": elapsed_ms,
        "result_tokens": result_tokens,
        "listing_tokens": listing,
        "listing_count": len(servable),
        "saved_pct": 100 * (1 - result_tokens / listing) if listing else 0.0,
        "tokenizer": tokenizer_name(),
    }
