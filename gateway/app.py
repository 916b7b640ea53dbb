"""The HTTP app: MCP front door at /mcp, admin REST under /admin, health probes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from sqlalchemy import text
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from . import admin_keys, admin_upstreams, console, db_errors
from .admin import install_error_handlers, router
from .auth import install_auth
from .frontdoor import build_mcp_server
from .limits import RequestSizeLimit
from .observability import install_observability
from .ratelimit import install_rate_limit
from .runtime import gateway_runtime
from .services import GatewayService
from .settings import Settings

# A module that needs resources for the app's lifetime (a Redis client, an HTTP client, a
# tracer) appends one of these to `app.state.lifespan_hooks` in its install function; they
# are entered in order after the gateway's runtime is up and left in reverse.
LifespanHook = Callable[[FastAPI, GatewayService], AbstractAsyncContextManager[None]]

_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
_PROTOCOL_HEADER = b"mcp-protocol-version"
_HANDSHAKE_VERSIONS = frozenset(version.encode() for version in HANDSHAKE_PROTOCOL_VERSIONS)


def _is_modern(scope: Scope) -> bool:
    """The SDK's own era routing: a protocol header naming no handshake-era version is 2026-07-28
    (or an unknown version, which the modern path rejects properly)."""
    for name, value in scope["headers"]:
        if name == _PROTOCOL_HEADER:
            return value not in _HANDSHAKE_VERSIONS
    return False


class _MCPEndpoint:
    """ASGI endpoint handing /mcp to the session managers built in the lifespan.

    Two managers over one server: handshake-era (2025-11-25) sessions answer each POST with
    one JSON body. On SSE the SDK client reads the result event and drops the connection
    before the stream's end, so every call paid a new TCP connection and the SSE task
    machinery (~18% of the gateway's CPU for a forwarded call). The price: a long call on such
    a session sends nothing until it ends (no keep-alive pings), and request-scoped
    notifications have no wire (the front door sends none; list_changed uses the GET stream).
    2026-07-28 requests keep the SDK's default: JSON when the handler is quick, SSE with
    keep-alive pings when it is not.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        manager: StreamableHTTPSessionManager = state.mcp_modern if _is_modern(scope) else state.mcp_manager
        await manager.handle_request(scope, receive, send)


def _transport_security(settings: Settings) -> TransportSecuritySettings | None:
    """DNS-rebinding protection when bound to loopback (as the SDK does for its own apps)."""
    if settings.host not in _LOCAL_HOSTS:
        return None
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
    )


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with gateway_runtime(settings) as service:
            server = build_mcp_server(
                service,
                default_limit=settings.find_limit_default,
                max_limit=settings.find_limit_max,
                listing=settings.tools_listing,
            )
            security = _transport_security(settings)
            manager = StreamableHTTPSessionManager(
                app=server,
                security_settings=security,
                max_request_body_size=settings.max_request_bytes,
                json_response=True,
            )
            modern = StreamableHTTPSessionManager(
                app=server, security_settings=security, max_request_body_size=settings.max_request_bytes
            )
            app.state.service = service
            app.state.mcp_manager = manager
            app.state.mcp_modern = modern
            async with AsyncExitStack() as stack:
                for hook in app.state.lifespan_hooks:
                    await stack.enter_async_context(hook(app, service))
                async with manager.run(), modern.run():
                    yield

    app = FastAPI(
        title="toolgate",
        version="0.1.0",
        summary="MCP tool-retrieval gateway: admin API. MCP clients connect to /mcp.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.lifespan_hooks = []
    app.router.routes.append(Route("/mcp", endpoint=_MCPEndpoint()))
    app.router.routes.append(Route("/mcp/", endpoint=_MCPEndpoint()))
    app.include_router(router)
    app.include_router(admin_keys.router)
    app.include_router(admin_upstreams.router)
    app.include_router(console.router)
    install_error_handlers(app)
    db_errors.install(app)  # a database outage is a 503 with Retry-After, not a 500
    # Middleware added last runs first: observability (request id, metrics) wraps the size
    # limit, then auth, then the per-key rate limit, which needs the principal auth attached.
    install_rate_limit(app, settings)
    install_auth(app, settings)
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    install_observability(app, settings)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """The database answers and the tool index is loaded."""
        service = request.app.state.service
        checks: dict[str, Any] = {}
        try:
            async with service.registry.session() as session:
                await session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # any failure means not ready; say which
            checks["database"] = f"error: {type(exc).__name__}: {exc}"
        checks["index"] = "ok" if service.catalog.ready else "loading"
        checks["tools"] = len(service.catalog)
        ready = checks["database"] == "ok" and checks["index"] == "ok"
        return JSONResponse(
            {"status": "ready" if ready else "not ready", **checks}, status_code=200 if ready else 503
        )

    return app
