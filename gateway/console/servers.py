"""The servers page: status, last sync, error, tool count and circuit of every upstream;
register, import, sync, enable and disable. Each action calls the service the admin API uses."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from registry.errors import DuplicateError, InvalidSpecError, NotFoundError
from registry.importer import ImportFileError, parse_import_document
from registry.specs import ServerSpec
from registry.sync import SyncReport

from .web import NoticeKind, checked_form, redirect, render, service_of

router = APIRouter()


@dataclass(frozen=True, slots=True)
class Circuit:
    state: str
    failures: int = 0
    retry_in_s: float | None = None


def circuits(service: Any) -> dict[str, Circuit]:
    """Circuit state per server from the pool, read defensively: older pools have none."""
    read = getattr(service.pool, "circuits", None)
    if not callable(read):
        return {}
    found: dict[str, Circuit] = {}
    for name, snapshot in dict(read()).items():
        found[str(name)] = Circuit(
            state=str(getattr(snapshot, "state", "unknown")),
            failures=int(getattr(snapshot, "consecutive_failures", 0) or 0),
            retry_in_s=getattr(snapshot, "retry_in_s", None),
        )
    return found


@router.get("/")
async def home(request: Request) -> Response:
    return redirect(request, "/servers")


@router.get("/servers")
async def servers_page(request: Request) -> Response:
    service = service_of(request)
    servers = await service.registry.list_servers()
    counts = await service.registry.tool_counts()
    context = {
        "title": "Servers",
        "page": "servers",
        "servers": servers,
        "counts": counts,
        "circuits": circuits(service),
        "circuits_known": callable(getattr(service.pool, "circuits", None)),
    }
    return render(request, "servers.html", context)


def _pairs(text: str, separator: str) -> dict[str, str]:
    """`KEY=value` (or `Name: value`) lines as a dict; blank lines are skipped."""
    pairs: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, found, value = line.partition(separator)
        if not found or not key.strip():
            raise InvalidSpecError(f"expected one 'NAME{separator}value' per line, got {line.strip()!r}")
        pairs[key.strip()] = value.strip()
    return pairs


def spec_from_form(fields: dict[str, str]) -> ServerSpec:
    """The registration form as a `ServerSpec` (validated as the admin API validates it)."""
    transport = fields.get("transport", "stdio")
    document: dict[str, Any] = {
        "name": fields.get("name", "").strip(),
        "transport": transport,
        "description": fields.get("description", "").strip(),
        "category": fields.get("category", "").strip() or None,
        "enabled": fields.get("enabled", "true") == "true",
    }
    if transport == "stdio":
        document["command"] = fields.get("command", "").strip() or None
        document["args"] = shlex.split(fields.get("args", ""))
        document["cwd"] = fields.get("cwd", "").strip() or None
        document["env"] = _pairs(fields.get("env", ""), "=")
    else:
        document["url"] = fields.get("url", "").strip() or None
        document["headers"] = _pairs(fields.get("headers", ""), ":")
    return ServerSpec.model_validate(document)


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'server'}: {error['msg']}" for error in exc.errors()
    )


def _sync_summary(report: SyncReport | None) -> str:
    if report is None:
        return "not synced (disabled)"
    if not report.ok:
        return f"sync failed: {report.error}"
    d = report.diff
    return f"synced: {d.created} created, {d.updated} updated, {d.deleted} deleted, {d.unchanged} unchanged"


@router.post("/servers")
async def register(request: Request) -> Response:
    fields = await checked_form(request)
    try:
        spec = spec_from_form(fields)
        server, report = await service_of(request).register_server(spec)
    except ValidationError as exc:
        return redirect(request, "/servers", f"not registered: {_problems(exc)}", "error")
    except (DuplicateError, InvalidSpecError) as exc:
        return redirect(request, "/servers", f"not registered: {exc}", "error")
    kind: NoticeKind = "ok" if report is None or report.ok else "error"
    return redirect(request, "/servers", f"registered {server.name}; {_sync_summary(report)}", kind)


@router.post("/import")
async def import_document(request: Request) -> Response:
    fields = await checked_form(request)
    try:
        document = json.loads(fields.get("document", ""))
        if not isinstance(document, dict):
            raise ImportFileError(["the document must be a JSON object"])
        outcome = await service_of(request).import_servers(parse_import_document(document))
    except ValueError as exc:  # JSONDecodeError included
        problems = exc.problems if isinstance(exc, ImportFileError) else [str(exc)]
        return redirect(request, "/servers", "nothing imported: " + "; ".join(problems), "error")
    result = outcome.result
    failed = [r.server for r in outcome.reports if not r.ok]
    text = (
        f"imported: {len(result.created)} created, {len(result.updated)} updated, "
        f"{len(result.unchanged)} unchanged"
    )
    if failed:
        text += f"; sync failed for {', '.join(failed)}"
    return redirect(request, "/servers", text, "error" if failed else "ok")


@router.post("/servers/{server_id}/sync")
async def sync(server_id: int, request: Request) -> Response:
    await checked_form(request)
    service = service_of(request)
    try:
        server = await service.registry.get_server(server_id)
    except NotFoundError as exc:
        return redirect(request, "/servers", str(exc), "error")
    report = await service.sync_server(server_id)
    return redirect(
        request, "/servers", f"{server.name}: {_sync_summary(report)}", "ok" if report.ok else "error"
    )


@router.post("/sync")
async def sync_all(request: Request) -> Response:
    await checked_form(request)
    reports = await service_of(request).sync_all()
    failed = [r.server for r in reports if not r.ok]
    text = f"synced {len(reports)} servers" + (f"; failed: {', '.join(failed)}" if failed else "")
    return redirect(request, "/servers", text, "error" if failed else "ok")


@router.post("/servers/{server_id}/enabled")
async def set_enabled(server_id: int, request: Request) -> Response:
    fields = await checked_form(request)
    enabled = fields.get("enabled") == "true"
    try:
        server, report = await service_of(request).update_server(server_id, {"enabled": enabled})
    except NotFoundError as exc:
        return redirect(request, "/servers", str(exc), "error")
    text = f"{server.name} {'enabled' if enabled else 'disabled'}"
    if report is not None:
        text += f"; {_sync_summary(report)}"
    return redirect(request, "/servers", text, "ok" if report is None or report.ok else "error")


@router.post("/servers/{server_id}/reset-circuit")
async def reset_circuit(server_id: int, request: Request) -> Response:
    """Close the server's circuit now (after fixing it), as POST /admin/upstreams/{name}/reset."""
    await checked_form(request)
    service = service_of(request)
    try:
        server = await service.registry.get_server(server_id)
    except NotFoundError as exc:
        return redirect(request, "/servers", str(exc), "error")
    reset = getattr(service.pool, "reset_circuit", None)
    if not callable(reset):
        return redirect(request, "/servers", "this gateway has no circuit breakers", "error")
    reset(server.name)
    return redirect(request, "/servers", f"{server.name}: circuit closed; the next call connects again")
