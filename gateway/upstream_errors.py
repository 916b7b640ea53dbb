"""The messages a model reads when an upstream fails, and how each failure is recognised.

Kept apart from the pool (gateway/upstream.py) so the wording of every upstream fault lives in
one place: timeouts, crashes, unreadable answers, answers over the size limit.
"""

from __future__ import annotations

import re

import mcp_types as types
from mcp.shared.exceptions import MCPError

from .http_limits import TOO_LARGE_MARKER
from .stdio_transport import TOO_LARGE_CODE

# The largest answer an upstream may send (one JSON-RPC message, and a call's serialized result):
# below the 1 MiB the SDK's HTTP client accepts in one SSE event, so whatever we pass on reaches
# SDK clients, and ~130k tokens, already more than a model should read from one tool.
DEFAULT_MAX_RESULT_BYTES = 512 * 1024
# The SDK client checks results against the tool's outputSchema itself and raises this.
_SDK_BAD_OUTPUT = "Invalid structured content returned by tool"
_INSTANCE_PATH = re.compile(r"On instance((?:\[[^\]]*\])*):")
_SSE_TOO_LARGE = "byte limit"  # httpx2: "Server-sent event exceeded the N byte limit."


class UpstreamError(Exception):
    """An upstream could not be reached or misbehaved; the message is safe to show a client."""


def is_too_large(exc: MCPError) -> bool:
    """An answer over the size limit: from our stdio reader, our HTTP body cap, or the SDK's
    SSE event cap."""
    if exc.code == TOO_LARGE_CODE:
        return True
    if exc.code == types.CONNECTION_CLOSED:
        return _SSE_TOO_LARGE in exc.message
    return exc.code == types.PARSE_ERROR and TOO_LARGE_MARKER in exc.message


def too_large_error(server: str, tool: str, max_bytes: int) -> str:
    """What the model reads when a result is over the limit: the limit, and what to do."""
    return (
        f"{server} answered {tool!r} with more than {max_bytes} bytes, over the gateway's result "
        "limit (TOOLGATE_MAX_RESULT_BYTES); the result was dropped. Ask for less: narrower "
        "arguments, a filter or a page."
    )


def call_error(
    server: str,
    tool: str,
    limit: float,
    exc: MCPError,
    noise: int = 0,
    max_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> UpstreamError:
    """The error for a JSON-RPC error answer (or the SDK's stand-in for a lost one); `noise`
    counts the unreadable messages the server sent during the call."""
    if is_too_large(exc):
        return UpstreamError(too_large_error(server, tool, max_bytes))
    if exc.code == types.REQUEST_TIMEOUT:
        garbled = f" (meanwhile it sent {noise} messages that are not JSON-RPC)" if noise > 0 else ""
        return UpstreamError(f"{server} did not answer {tool!r} within {limit:g}s{garbled}")
    if exc.code == types.CONNECTION_CLOSED:
        return UpstreamError(
            f"{server} closed the connection during {tool!r} (the server may have crashed; "
            "it is restarted on the next call)"
        )
    if exc.code == types.PARSE_ERROR:  # the SDK could not read the HTTP answer
        return UpstreamError(f"{server} answered {tool!r} with something that is not JSON-RPC: {exc.message}")
    return UpstreamError(f"{server} rejected {tool!r}: {exc.message}")


def other_call_error(server: str, tool: str, exc: Exception) -> UpstreamError:
    """The error for anything else a call raised: a result the SDK refused, a broken transport."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and text.startswith(_SDK_BAD_OUTPUT):
        detail = (text.partition(": ")[2] or text).splitlines()[0]
        found = _INSTANCE_PATH.search(text)  # jsonschema's "On instance['a'][0]:" line
        if found and found.group(1):
            path = "/".join(part.strip("'\"") for part in re.findall(r"\[([^\]]*)\]", found.group(1)))
            detail = f"at {path}: {detail}"
        return UpstreamError(
            f"{server} returned output for {tool!r} that breaks its own output schema: {detail}"
        )
    return UpstreamError(f"{server} failed during {tool!r}: {type(exc).__name__}: {text}")


def connect_error(exc: BaseException) -> str:
    """Why a connection could not be opened, in one line."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return exc.message
    if isinstance(exc, FileNotFoundError):
        return f"command not found: {exc.filename or exc}"
    return str(exc) or type(exc).__name__
