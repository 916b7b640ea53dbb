"""The console's contract with the auth middleware (gateway/auth.py), in plain ASGI terms.

- `is_open(path)`: the sign-in page and the static files need no credential.
- `authorization(scope)`: for /console paths only, the session cookie as the `Authorization`
  value the middleware already understands (`Bearer <admin API key>`), used when the request
  has no Authorization header of its own. Every other path ignores the cookie, so it can never
  authenticate /admin or /mcp (no cross-site request can carry it there either: Path=/console,
  SameSite=Strict).
- `login_redirect(scope)`: where to send a browser that is refused on a console page (the
  sign-in page) instead of a JSON 401; None for the console's JSON endpoints and non-GETs.
"""

from __future__ import annotations

from collections.abc import Mapping
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import quote

PREFIX = "/console"
SESSION_COOKIE = "toolgate_console"
LOGIN_PATH = f"{PREFIX}/login"
_STATIC = f"{PREFIX}/static/"
_API = f"{PREFIX}/api/"


def is_console(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def is_open(path: str) -> bool:
    """Console paths served without a credential: sign-in and the CSS/JS it needs."""
    return path == LOGIN_PATH or path.startswith(_STATIC)


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def session_key(scope: Mapping[str, Any]) -> str | None:
    """The admin API key in the console's session cookie, on console paths only."""
    if not is_console(str(scope.get("path", ""))):
        return None
    raw = _header(scope, b"cookie")
    if not raw:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except CookieError:
        return None
    morsel = jar.get(SESSION_COOKIE)
    value = morsel.value.strip() if morsel is not None else ""
    return value or None


def authorization(scope: Mapping[str, Any]) -> str | None:
    """The request's own Authorization header, else (console paths only) the session cookie's
    key as a bearer credential."""
    given = _header(scope, b"authorization")
    if given:
        return given
    key = session_key(scope)
    return f"Bearer {key}" if key is not None else None


def login_redirect(scope: Mapping[str, Any]) -> str | None:
    """The sign-in URL for a refused browser page view, with the page to return to."""
    path = str(scope.get("path", ""))
    if scope.get("method") != "GET" or not is_console(path) or path.startswith(_API) or is_open(path):
        return None
    return f"{LOGIN_PATH}?next={quote(path, safe='/')}"
