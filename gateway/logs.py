"""Logging set-up: text or JSON lines on stderr, and the request id every line carries.

The request id lives in a context variable: the HTTP middleware sets it per request, the MCP
SDK copies context variables into the tasks that handle the request, and the forwarder sends
it to the upstream in the call's `_meta`. So every log line of one request shares one id.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import traceback
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_request_id: ContextVar[str | None] = ContextVar("toolgate_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_UVICORN = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
_DROPPED = frozenset({"color_message"})  # uvicorn's ANSI-coloured copy of the message


def current_request_id() -> str | None:
    """The id of the request being handled, or None outside one."""
    return _request_id.get()


def new_request_id() -> str:
    """A fresh request id: 32 hex digits."""
    return uuid.uuid4().hex


def accept_request_id(incoming: str | None) -> str:
    """A client's `X-Request-ID` when it is short and safe to log and forward, else a new id."""
    if incoming is not None and _SAFE_ID.fullmatch(incoming):
        return incoming
    return new_request_id()


@contextmanager
def request_id_scope(request_id: str | None) -> Iterator[str | None]:
    """Make `request_id` current for the code (and the tasks it starts) inside the block;
    None clears it (for work that outlives the request, such as a pooled session's task)."""
    token = _request_id.set(request_id)
    try:
        yield request_id
    finally:
        _request_id.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601 UTC), level, logger, message, request_id when
    set, exception text, and any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or current_request_id()
        if request_id is not None:
            entry["request_id"] = request_id
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _version, status = record.args
            entry.update(client=client, method=method, path=path, status=status)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in _DROPPED and key not in entry and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        # default=str: an `extra=` value that JSON cannot hold must not lose the line
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str, fmt: str = "text") -> None:
    """Send the gateway's logs to stderr (stdout may carry the MCP protocol), as text or JSON.

    In JSON mode uvicorn's loggers are routed through the same handler; uvicorn must then be
    started with `log_config=None` so it does not install its own handlers over these."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    if fmt == "json":
        for name in _UVICORN:
            logger = logging.getLogger(name)
            logger.handlers.clear()
            logger.propagate = True
