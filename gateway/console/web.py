"""What every console page shares: templates, the CSRF token, one-shot notices, form reading.

CSRF uses a double-submit token: a random value in a SameSite=Strict cookie that every
state-changing form must echo in its `csrf` field. Another site can neither read the cookie
nor make the browser send it, and the check needs no server-side state, so it works the same
behind several replicas. A request that carries an `Origin` must also come from this origin.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import HTTPException, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..services import GatewayService
from .cookie import PREFIX, SESSION_COOKIE

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"

CSRF_COOKIE = "toolgate_console_csrf"
NOTICE_COOKIE = "toolgate_console_notice"
MAX_FORM_BYTES = 1_000_000

NoticeKind = Literal["ok", "error"]

_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _when(value: datetime | float | None) -> str:
    """A moment for people: UTC, to the second; "never" for None."""
    if value is None or value == 0:
        return "never"
    moment = value if isinstance(value, datetime) else datetime.fromtimestamp(value, UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


_env.filters["when"] = _when
_env.filters["pretty"] = _pretty

# Pages change on every action (never cache them); everything they load is the console's own
# (no inline script, no other origin), and no other site may frame them.
_PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}

NAV = (
    ("servers", "Servers"),
    ("tools", "Tools"),
    ("playground", "Playground"),
    ("conversations", "Conversations"),
    ("metrics", "Live figures"),
)


def service_of(request: Request) -> GatewayService:
    service: GatewayService = request.app.state.service
    return service


def auth_mode(request: Request) -> str:
    settings = getattr(request.app.state, "settings", None)
    return str(getattr(settings, "auth", "required"))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def render(
    request: Request, template: str, context: Mapping[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    """Render a page with the shared context (navigation, CSRF token, the pending notice)."""
    token = request.cookies.get(CSRF_COOKIE) or ""
    fresh = not _valid_token(token)
    if fresh:
        token = secrets.token_urlsafe(32)
    notice = _read_notice(request)
    page = _env.get_template(template).render(
        {
            "prefix": PREFIX,
            "nav": NAV,
            "csrf": token,
            "notice": notice,
            "auth": auth_mode(request),
            "signed_in": SESSION_COOKIE in request.cookies,
            **context,
        }
    )
    response = HTMLResponse(page, status_code=status_code)
    response.headers.update(_PAGE_HEADERS)
    if fresh:
        response.set_cookie(
            CSRF_COOKIE, token, path=PREFIX, httponly=True, samesite="strict", secure=_secure(request)
        )
    if notice is not None:
        response.delete_cookie(NOTICE_COOKIE, path=PREFIX)
    return response


def _valid_token(token: str) -> bool:
    return 32 <= len(token) <= 64 and token.replace("-", "").replace("_", "").isalnum()


def redirect(request: Request, to: str, notice: str | None = None, kind: NoticeKind = "ok") -> Response:
    """303 to a console page, with a notice shown once there (a cookie, not the URL, so a
    crafted link cannot put words on the page)."""
    response = RedirectResponse(PREFIX + to, status_code=303)
    if notice is not None:
        value = json.dumps({"kind": kind, "text": notice[:2000]})
        response.set_cookie(
            NOTICE_COOKIE,
            value,
            path=PREFIX,
            httponly=True,
            samesite="strict",
            secure=_secure(request),
            max_age=60,
        )
    return response


def _read_notice(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(NOTICE_COOKIE)
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("kind") not in ("ok", "error"):
        return None
    return {"kind": str(data["kind"]), "text": str(data.get("text", ""))}


async def checked_form(request: Request) -> dict[str, str]:
    """The form of a state-changing request, after the CSRF and origin checks (403 on failure)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise HTTPException(403, "cross-origin form rejected")
    if int(request.headers.get("content-length") or 0) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    form = await request.form()
    fields = {key: value for key, value in form.items() if isinstance(value, str)}
    expected = request.cookies.get(CSRF_COOKIE, "")
    given = fields.pop("csrf", "")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        raise HTTPException(403, "missing or stale form token: reload the page and try again")
    return fields


def not_found(request: Request, message: str) -> HTMLResponse:
    return render(request, "error.html", {"title": "Not found", "message": message}, status_code=404)
