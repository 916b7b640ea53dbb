"""The registry database being unreachable is an outage, not a bug: a 503 with a clear message.

Without this, a request that needs the database while PostgreSQL is down or restarting ends in
a 500 and a traceback. `install(app)` adds exception handlers for the errors a lost or refused
connection raises (through SQLAlchemy, or straight from the driver while connecting), so
admin writes answer 503 with `Retry-After` until the database is back; nothing was written.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5


def _connection_errors() -> tuple[type[Exception], ...]:
    """Exception types meaning "no usable connection to the database"."""
    errors: list[type[Exception]] = [
        sa_exc.OperationalError,  # refused, reset, "the database system is shutting down"
        sa_exc.InterfaceError,  # the connection closed under the driver
        sa_exc.TimeoutError,  # no pooled connection became free in time
        ConnectionError,  # asyncpg raises OSError subclasses while connecting
    ]
    try:
        import asyncpg
    except ImportError:  # SQLite-only installs
        return tuple(errors)
    errors += [
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.ConnectionDoesNotExistError,
        asyncpg.InterfaceError,
    ]
    return tuple(errors)


def is_connection_error(error: BaseException) -> bool:
    """True when `error`, or what it wraps, says the connection failed. SQLAlchemy wraps most
    asyncpg errors in a plain `DBAPIError` (e.g. "the database system is starting up")."""
    kinds = _connection_errors()
    seen: BaseException | None = error
    for _ in range(5):  # orig / __cause__ chains are short
        if seen is None:
            return False
        if isinstance(seen, kinds) or getattr(seen, "connection_invalidated", False):
            return True
        seen = getattr(seen, "orig", None) or seen.__cause__
    return False


def describe(error: BaseException) -> str:
    """A one-line reason (the driver's error, not SQLAlchemy's wrapper with the statement)."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def unavailable(error: BaseException) -> JSONResponse:
    """The response for a request that needed the database while it was unreachable."""
    message = (
        f"the registry database is unavailable ({describe(error)}); the request did not complete, retry later"
    )
    return JSONResponse(
        status_code=503, content={"detail": message}, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


def install(app: FastAPI) -> None:
    """Answer 503 (not 500) for every route whose database connection failed."""

    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return unavailable(exc)

    async def other_database_error(request: Request, exc: Exception) -> JSONResponse:
        if is_connection_error(exc):
            return unavailable(exc)
        # Any other database error is a bug: keep the 500 and its traceback in the log.
        logger.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse(status_code=500, content={"detail": "internal error"})

    for error in _connection_errors():
        app.add_exception_handler(error, handler)
    app.add_exception_handler(sa_exc.DBAPIError, other_database_error)
