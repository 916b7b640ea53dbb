"""Authentication: API keys and JWT bearer tokens, roles and scopes, as a pure ASGI middleware.

Every route but the health probes needs `Authorization: Bearer <credential>`. A credential
starting with `tg_` is an API key (looked up by its SHA-256 hash), anything else a JWT. The
bootstrap key `TOOLGATE_ADMIN_KEY` is compared in constant time and never stored. Role
`client` reaches /mcp only; `admin` reaches everything. The middleware attaches the
principal to the ASGI scope (`gateway.principal.attach`); the front door applies its scope.

Verified keys are cached in process for `KEY_CACHE_TTL_S`: a revocation takes effect on this
replica at once and on every other replica within that time.

Pure ASGI, not BaseHTTPMiddleware: /mcp responses stream.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import anyio
import httpx
from fastapi import FastAPI
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from registry.keys import KEY_PREFIX, KeyStore, display_prefix, hash_key, is_active, looks_like_key, scope_of
from registry.models import ApiKey, utcnow

from . import principal as principals
from .console import cookie as console_cookie
from .jwt_auth import JwtVerifier, KeysUnavailableError, TokenError
from .principal import LOCAL, Principal
from .services import GatewayService
from .settings import Settings

logger = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz", "/readyz"})
# RFC 9728 protected-resource metadata (served when a JWT issuer is configured), at the
# well-known root and with the resource path appended, as clients look for either.
METADATA_PATH = "/.well-known/oauth-protected-resource"
METADATA_PATHS = frozenset({METADATA_PATH, METADATA_PATH + "/mcp"})
KEY_CACHE_TTL_S = 5.0
_KEY_CACHE_MAX = 10_000
_TOUCH_EVERY = timedelta(minutes=1)  # last_used_at is a write: at most once a minute per key
ADMIN_KEY_ID = "admin-key"


class AuthError(Exception):
    """A refused request: `detail` is safe to return and log (it never holds a credential)."""

    def __init__(
        self, detail: str, *, status: int = 401, credential: str = "none", error: str | None = "invalid_token"
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.credential = credential  # what was presented, for logs: "none", "jwt", a key prefix
        self.error = error  # RFC 6750 error code; None when no credential was sent


@dataclass(frozen=True, slots=True)
class _Cached:
    principal: Principal | None  # None: unknown, revoked or expired
    until: float  # monotonic
    expires_at: float | None  # the key's own expiry (epoch seconds), checked on every hit


class Authenticator:
    """Turns an `Authorization` header into a Principal, or raises AuthError."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyStore,
        verifier: JwtVerifier | None = None,
        *,
        cache_ttl_s: float = KEY_CACHE_TTL_S,
    ) -> None:
        admin_key = settings.admin_key.get_secret_value() if settings.admin_key is not None else ""
        self._admin_key = admin_key.encode() if admin_key else None  # empty: no bootstrap key
        self._keys = keys
        self._verifier = verifier
        self._ttl = cache_ttl_s
        self._cache: dict[str, _Cached] = {}

    def forget_keys(self) -> None:
        """Drop cached key verdicts (after a revocation on this replica)."""
        self._cache.clear()

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller behind an `Authorization` header value: the bootstrap admin key, an API
        key (`tg_...`) or a JWT. Raises AuthError (401; 503 when keys cannot be checked)."""
        if not authorization:
            raise AuthError(
                "authentication required: send 'Authorization: Bearer <API key or token>'", error=None
            )
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthError(
                "the Authorization header must be 'Bearer <API key or token>'", error="invalid_request"
            )
        if self._admin_key is not None and hmac.compare_digest(credential.encode(), self._admin_key):
            return Principal(id=ADMIN_KEY_ID, role="admin", kind="key")
        if credential.startswith(KEY_PREFIX):
            return await self._api_key(credential)
        if self._verifier is None:
            raise AuthError("unknown API key, and JWT bearer tokens are not configured", credential="jwt")
        try:
            return await self._verifier.verify(credential)
        except TokenError as exc:
            raise AuthError(str(exc), credential="jwt") from None
        except KeysUnavailableError as exc:
            raise AuthError(str(exc), status=503, credential="jwt") from None

    async def _api_key(self, plaintext: str) -> Principal:
        if not looks_like_key(plaintext):  # not even shaped like a key: log none of it
            raise AuthError("unknown API key", credential="malformed tg_ key")
        shown = display_prefix(plaintext)
        digest = hash_key(plaintext)  # the cache holds no plaintext
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is None or cached.until <= now:
            cached = await self._lookup(plaintext, digest, now)
        if cached.principal is None or (cached.expires_at is not None and cached.expires_at <= time.time()):
            raise AuthError("unknown, revoked or expired API key", credential=shown)
        return cached.principal

    async def _lookup(self, plaintext: str, digest: str, now: float) -> _Cached:
        try:
            row = await self._keys.find(plaintext)
        except SQLAlchemyError as exc:
            logger.warning("API key lookup failed: %s", type(exc).__name__)
            raise AuthError("API keys cannot be checked right now", status=503) from None
        principal = _key_principal(row) if row is not None and is_active(row) else None
        expires = row.expires_at.timestamp() if row is not None and row.expires_at is not None else None
        cached = _Cached(principal, now + self._ttl, expires)
        if len(self._cache) >= _KEY_CACHE_MAX:
            self._cache.clear()  # bounded: a flood of made-up keys cannot grow it
        self._cache[digest] = cached
        if row is not None and principal is not None:
            await self._touch(row)
        return cached

    async def _touch(self, row: ApiKey) -> None:
        stamp = utcnow()
        if row.last_used_at is not None and stamp - row.last_used_at < _TOUCH_EVERY:
            return
        try:
            await self._keys.touch(row.id, stamp)
        except SQLAlchemyError as exc:  # bookkeeping only: the request is still authenticated
            logger.warning("could not record the use of API key %s: %s", row.prefix, type(exc).__name__)


def _key_principal(row: ApiKey) -> Principal:
    scope = scope_of(row)
    return Principal(
        id=f"key:{row.id}",
        role="admin" if row.role == "admin" else "client",
        scope=None if scope is None else principals.Scope(frozenset(scope.servers), frozenset(scope.tools)),
        kind="key",
    )


def may_reach(principal: Principal, path: str) -> bool:
    """Role check: clients reach /mcp only, admins everything."""
    return principal.is_admin or path == "/mcp" or path.startswith("/mcp/")


class AuthMiddleware:
    """Authenticates every HTTP request except the health probes (see the module docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings, owner: FastAPI) -> None:
        self.app = app
        self._off = settings.auth == "off"
        self._owner = owner
        self._issuer = settings.jwt_issuer or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        if self._off:
            principals.attach(scope, LOCAL)
            await self.app(scope, receive, send)
            return
        if path in OPEN_PATHS or console_cookie.is_open(path):
            await self.app(scope, receive, send)
            return
        if path in METADATA_PATHS and self._issuer and scope["type"] == "http":
            await JSONResponse(_resource_metadata(scope, self._issuer))(scope, receive, send)
            return
        authenticator: Authenticator | None = getattr(self._owner.state, "authenticator", None)
        try:
            if authenticator is None:
                raise AuthError("the gateway is starting", status=503)
            # On /console pages the session cookie stands in for a missing Authorization header.
            principal = await authenticator.authenticate(console_cookie.authorization(scope))
        except AuthError as exc:
            _log_refusal(scope, exc.status, exc.detail, exc.credential)
            target = console_cookie.login_redirect(scope) if exc.status == 401 else None
            if target is not None:  # a browser on a console page: to the sign-in page
                await RedirectResponse(target, status_code=303)(scope, receive, send)
                return
            await _refuse(scope, receive, send, exc.status, exc.detail, exc.error, self._issuer)
            return
        if not may_reach(principal, path):
            detail = f"role {principal.role!r} may use /mcp only"
            _log_refusal(scope, 403, detail, principal.id)
            await _refuse(scope, receive, send, 403, detail, "insufficient_scope")
            return
        principals.attach(scope, principal)
        await self.app(scope, receive, send)


def _log_refusal(scope: Scope, status: int, detail: str, credential: str) -> None:
    client = scope.get("client")
    level = logging.WARNING if status == 403 else logging.INFO
    logger.log(
        level,
        "refused %s %s from %s: %d %s (credential: %s)",
        scope.get("method", "WS"),
        scope.get("path", ""),
        client[0] if client else "?",
        status,
        detail,
        credential,
    )


def _base_url(scope: Scope) -> str:
    host = Headers(scope=scope).get("host") or "localhost"
    return f"{scope.get('scheme', 'http')}://{host}"


def _resource_metadata(scope: Scope, issuer: str) -> dict[str, Any]:
    """What an OAuth client needs to get a token for /mcp (RFC 9728)."""
    return {
        "resource": _base_url(scope) + "/mcp",
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "toolgate",
    }


async def _refuse(
    scope: Scope,
    receive: Receive,
    send: Send,
    status: int,
    detail: str,
    error: str | None,
    issuer: str | None = None,
) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    body: dict[str, Any] = {"detail": detail}
    if scope.get("path", "").startswith("/mcp"):
        # MCP clients read a JSON-RPC error; REST clients read `detail`.
        body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32001, "message": detail}, **body}
    headers = {}
    if status in (401, 403):  # RFC 6750: 403 carries error="insufficient_scope"
        headers["WWW-Authenticate"] = 'Bearer realm="toolgate"'
        if error is not None:
            headers["WWW-Authenticate"] += f', error="{error}"'
        if issuer:
            headers["WWW-Authenticate"] += f', resource_metadata="{_base_url(scope)}{METADATA_PATH}/mcp"'
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


def install_auth(app: FastAPI, settings: Settings) -> None:
    """Protect every route except the health probes; hold the key store and JWKS client."""
    app.add_middleware(AuthMiddleware, settings=settings, owner=app)

    @asynccontextmanager
    async def resources(app: FastAPI, service: GatewayService) -> AsyncIterator[None]:
        # On SQLite the registry queues its writers; key writes must queue with them.
        keys = KeyStore(service.registry.session, write_lock=service.registry.write_lock)
        app.state.api_keys = keys
        client = httpx.AsyncClient(timeout=5.0) if settings.jwt_jwks_url else None
        try:
            verifier = JwtVerifier(settings, client) if _jwt_configured(settings) else None
            app.state.authenticator = Authenticator(settings, keys, verifier)
            _warn_about(settings)
            yield
        finally:
            app.state.authenticator = None
            if client is not None:
                with anyio.CancelScope(shield=True):
                    await client.aclose()

    app.state.lifespan_hooks.append(resources)


def _jwt_configured(settings: Settings) -> bool:
    secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret is not None else ""
    return bool(settings.jwt_jwks_url or secret)


def _warn_about(settings: Settings) -> None:
    if settings.auth == "off":
        logger.warning("auth is off: every request is served as admin (loopback only)")
        return
    if not (settings.admin_key and settings.admin_key.get_secret_value()) and not _jwt_configured(settings):
        logger.info("no TOOLGATE_ADMIN_KEY and no JWT settings: only keys from `toolgate keys create` work")
    if _jwt_configured(settings) and not settings.jwt_audience:
        logger.warning("JWT tokens are accepted without an audience check: set TOOLGATE_JWT_AUDIENCE")
