"""Signing in to the console, and its static files.

A browser cannot send `Authorization: Bearer` when it follows a link, so POST /console/login
takes an admin API key and stores it in the `toolgate_console` cookie (HttpOnly,
SameSite=Strict, Path=/console, Secure over https). The auth middleware reads that cookie as
the bearer credential for /console paths only, so a console session is exactly as valid as the
key: revoking or expiring the key ends it at once, and no session state is kept anywhere.

The key is checked before the cookie is set by asking the app itself, through its whole
middleware stack, who `Authorization: Bearer <key>` is (GET /console/api/whoami): the console
never re-implements the auth rules.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import FileResponse

from ..principal import principal_of
from .cookie import PREFIX, SESSION_COOKIE
from .web import STATIC_DIR, checked_form, redirect, render

router = APIRouter()

SESSION_MAX_AGE_S = 12 * 3600
_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


@router.get("/api/whoami")
async def whoami(request: Request) -> dict[str, Any]:
    """The caller as auth sees it (the login check, and a probe for operators)."""
    principal = principal_of(request.scope)
    if principal is None:  # auth is not installed or off: loopback callers are admins
        return {"id": "local", "role": "admin", "kind": "local"}
    return {"id": principal.id, "role": principal.role, "kind": principal.kind}


async def _check_key(request: Request, key: str) -> str | None:
    """None when `key` is an admin credential; else why not."""
    transport = httpx.ASGITransport(app=request.app)
    async with httpx.AsyncClient(transport=transport, base_url=str(request.base_url)) as client:
        answer = await client.get(f"{PREFIX}/api/whoami", headers={"Authorization": f"Bearer {key}"})
    if answer.status_code == 401:
        return "that key was not accepted"
    if answer.status_code == 403:
        return "that key is not an admin key"
    if answer.status_code != 200:
        return f"the key could not be checked (HTTP {answer.status_code})"
    role = answer.json().get("role")
    return None if role == "admin" else "that key is not an admin key"


def _next(value: str | None) -> str:
    """Where to go after signing in: a console page (never another site), else the servers."""
    if value and value.startswith(PREFIX + "/") and "//" not in value and "\\" not in value:
        return value[len(PREFIX) :]
    return "/servers"


@router.get("/login")
async def login_page(request: Request) -> Response:
    context = {"title": "Sign in", "error": None, "next": _next(request.query_params.get("next"))}
    return render(request, "login.html", context)


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the admin key and keep it in the session cookie."""
    fields = await checked_form(request)
    key = fields.get("key", "").strip()
    problem = "enter an admin API key" if not key else await _check_key(request, key)
    target = _next(PREFIX + fields.get("next", ""))
    if problem is not None:
        context = {"title": "Sign in", "error": problem, "next": target}
        return render(request, "login.html", context, status_code=401)
    response = redirect(request, target, "signed in")
    response.set_cookie(
        SESSION_COOKIE,
        key,
        max_age=SESSION_MAX_AGE_S,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await checked_form(request)
    response = redirect(request, "/login", "signed out")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


@router.get("/static/{name}")
async def static(name: str) -> Response:
    """The console's own CSS and JS (no CDN: it works offline)."""
    path = STATIC_DIR / name
    media_type = _STATIC_TYPES.get(path.suffix)
    if "/" in name or name.startswith(".") or media_type is None or not path.is_file():
        raise HTTPException(404, "no such file")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "max-age=300"})
