"""The tools pages: browse and filter, a tool's definition, its poisoning findings and pending
change, its usage and how often it is found versus called; enable, disable, approve or reject a
changed definition, and record example queries."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from registry.errors import NotFoundError
from registry.review import ReviewConflict, is_approved
from retrieval.tokens import tool_definition_tokens

from ..tool_stats import ToolStats
from .web import checked_form, not_found, redirect, render, service_of

router = APIRouter()

PAGE_SIZE = 50
MAX_EXAMPLES = 100


def tool_stats(service: Any) -> ToolStats | None:
    """The found/called counters, when the service keeps them."""
    stats = getattr(service, "tool_stats", None)
    return stats if isinstance(stats, ToolStats) else None


def _flag(value: str | None) -> bool | None:
    return {"true": True, "false": False}.get(value or "")


@router.get("/tools")
async def tools_page(request: Request) -> Response:
    service = service_of(request)
    params = request.query_params
    q = params.get("q", "").strip()
    server_name = params.get("server", "")
    enabled = _flag(params.get("enabled"))
    review = params.get("review", "")
    review_filter = {review: True} if review in ("flagged", "pending", "quarantined") else {}
    try:
        offset = max(0, int(params.get("offset", "0")))
    except ValueError:
        offset = 0
    servers = await service.registry.list_servers()
    server_id = next((s.id for s in servers if s.name == server_name), None)
    if server_name and server_id is None:
        page_tools, total = [], 0
    else:
        page = await service.registry.list_tools(
            server_id=server_id,
            enabled=enabled,
            query=q or None,
            limit=PAGE_SIZE,
            offset=offset,
            **review_filter,
        )
        page_tools, total = page.tools, page.total
    stats = tool_stats(service)
    filters = {"q": q, "server": server_name, "enabled": params.get("enabled", ""), "review": review}
    context = {
        "title": "Tools",
        "page": "tools",
        "tools": page_tools,
        "total": total,
        "offset": offset,
        "page_size": PAGE_SIZE,
        "servers": servers,
        "filters": filters,
        "usage": {t.exposed_name: service.usage_count(t.exposed_name) for t in page_tools},
        "counts": {t.exposed_name: stats.counts(t.exposed_name) for t in page_tools} if stats else None,
        "prev_link": _page_link(filters, offset - PAGE_SIZE) if offset > 0 else None,
        "next_link": _page_link(filters, offset + PAGE_SIZE) if offset + PAGE_SIZE < total else None,
    }
    return render(request, "tools.html", context)


def _page_link(filters: dict[str, str], offset: int) -> str:
    query = {key: value for key, value in filters.items() if value}
    return "?" + urlencode({**query, "offset": max(0, offset)})


@router.get("/tools/{tool_id}")
async def tool_page(tool_id: int, request: Request) -> Response:
    service = service_of(request)
    try:
        tool = await service.registry.get_tool(tool_id)
    except NotFoundError as exc:
        return not_found(request, str(exc))
    stats = tool_stats(service)
    context = {
        "title": tool.exposed_name,
        "page": "tools",
        "tool": tool,
        "usage_count": service.usage_count(tool.exposed_name),
        "counts": stats.counts(tool.exposed_name) if stats else None,
        "tokens": tool_definition_tokens(tool.exposed_name, tool.description, tool.input_schema),
        "servable": service.catalog.get(tool.exposed_name) is not None,
        "approved": is_approved(tool),
        "review": service.review,
    }
    return render(request, "tool.html", context)


@router.post("/tools/{tool_id}/enabled")
async def set_enabled(tool_id: int, request: Request) -> Response:
    fields = await checked_form(request)
    enabled = fields.get("enabled") == "true"
    try:
        tool = await service_of(request).set_tool_enabled(tool_id, enabled)
    except NotFoundError as exc:
        return redirect(request, "/tools", str(exc), "error")
    return redirect(
        request, f"/tools/{tool_id}", f"{tool.exposed_name} {'enabled' if enabled else 'disabled'}"
    )


@router.post("/tools/{tool_id}/examples")
async def add_examples(tool_id: int, request: Request) -> Response:
    """Example queries, one per line: each moves the tool's usage vector like a live use."""
    fields = await checked_form(request)
    queries = [line.strip()[:2000] for line in fields.get("queries", "").splitlines() if line.strip()]
    if not queries or len(queries) > MAX_EXAMPLES:
        return redirect(
            request, f"/tools/{tool_id}", f"give 1 to {MAX_EXAMPLES} example queries, one per line", "error"
        )
    service = service_of(request)
    try:
        tool = await service.registry.get_tool(tool_id)
        recorded = await service.add_examples({tool.exposed_name: queries})
    except NotFoundError as exc:
        return redirect(request, "/tools", str(exc), "error")
    count = recorded.get(tool.exposed_name, 0)
    return redirect(request, f"/tools/{tool_id}", f"recorded {count} example queries for {tool.exposed_name}")


@router.post("/tools/{tool_id}/review")
async def review(tool_id: int, request: Request) -> Response:
    """Approve (`decision=approve`) or reject (`decision=reject`) the tool's definition."""
    fields = await checked_form(request)
    decision = fields.get("decision")
    service = service_of(request)
    if decision not in ("approve", "reject"):
        return redirect(request, f"/tools/{tool_id}", "choose approve or reject", "error")
    try:
        if decision == "approve":
            tool = await service.approve_tool(tool_id)
        else:
            tool = await service.reject_tool(tool_id)
    except NotFoundError as exc:
        return redirect(request, "/tools", str(exc), "error")
    except ReviewConflict as exc:
        return redirect(request, f"/tools/{tool_id}", str(exc), "error")
    done = "approved: its definition is live" if decision == "approve" else "rejected the pending definition"
    return redirect(request, f"/tools/{tool_id}", f"{tool.exposed_name}: {done}")
