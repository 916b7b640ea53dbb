"""Forward a client's call to the upstream that owns the tool.

Everything that goes wrong here is the model's business, not a protocol failure: it comes
back as a tool result with `isError` and a message that says what to do next.
"""

from __future__ import annotations

import logging
from typing import Any

import mcp_types as types
from jsonschema import Draft202012Validator, SchemaError
from jsonschema.exceptions import best_match

from .catalog import Catalog, CatalogTool
from .tracing import Telemetry
from .upstream import UpstreamError, UpstreamPool, too_large_error

logger = logging.getLogger(__name__)


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=message)], is_error=True)


_UNUSABLE = object()  # marks a schema that is itself invalid
_validators: dict[str, Any] = {}  # definition hash -> compiled validator (or _UNUSABLE)


def _validator(tool: CatalogTool, *, output: bool = False) -> Draft202012Validator | None:
    """Validators compiled once per tool definition (keyed by its hash) and direction."""
    key = ("out:" if output else "in:") + tool.definition_hash
    cached = _validators.get(key)
    if cached is None:
        schema = tool.output_schema if output else tool.input_schema
        try:
            Draft202012Validator.check_schema(schema)
            cached = Draft202012Validator(schema)
        except SchemaError:
            cached = _UNUSABLE  # the upstream's schema is broken: let the upstream judge the arguments
        if len(_validators) > 50_000:  # bound memory on huge, churning catalogs
            _validators.clear()
        _validators[key] = cached
    return None if cached is _UNUSABLE else cached


def check_output(tool: CatalogTool, result: types.CallToolResult) -> str | None:
    """With an `outputSchema`, a successful result must carry conforming structured content.
    The SDK client checks only tools it saw on the first listing page, so we check here."""
    if tool.output_schema is None or result.is_error:
        return None
    if result.structured_content is None:
        return f"{tool.exposed_name} returned no structured content although it declares an output schema"
    validator = _validator(tool, output=True)
    if validator is None:
        return None
    error = best_match(validator.iter_errors(result.structured_content))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(result)"
    return (
        f"{tool.exposed_name} returned output that breaks its own output schema: at {where}: {error.message}"
    )


def check_size(tool: CatalogTool, result: types.CallToolResult, max_bytes: int) -> str | None:
    """A result whose JSON is over `max_bytes` would flood the model's context (and SDK clients
    refuse SSE events over 1 MiB): it becomes an error naming the limit."""
    size = len(result.model_dump_json(by_alias=True, exclude_none=True))
    if size <= max_bytes:
        return None
    return too_large_error(tool.server, tool.name, max_bytes) + f" (it was {size} bytes)"


def validate_arguments(tool: CatalogTool, arguments: dict[str, Any]) -> str | None:
    """None when the arguments fit the tool's input schema, else a message naming the violation."""
    validator = _validator(tool)
    if validator is None:
        return None
    error = best_match(validator.iter_errors(arguments))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
    return f"invalid arguments for {tool.exposed_name}: at {where}: {error.message}"


_RESERVED_META = "io.modelcontextprotocol/"


def _without_protocol_meta(result: types.CallToolResult) -> types.CallToolResult:
    """Drop the upstream's protocol-reserved `_meta` keys (its serverInfo stamp, for one): the
    client is talking to the gateway, which stamps its own. Other metadata passes through."""
    meta = result.meta
    if not meta or not any(key.startswith(_RESERVED_META) for key in meta):
        return result
    kept = {key: value for key, value in meta.items() if not key.startswith(_RESERVED_META)}
    return result.model_copy(update={"meta": kept or None})


class Forwarder:
    def __init__(self, catalog: Catalog, pool: UpstreamPool, telemetry: Telemetry | None = None) -> None:
        self._catalog = catalog
        self._pool = pool
        self.telemetry = telemetry if telemetry is not None else Telemetry()

    async def call(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        tool = self._catalog.get(name)
        if tool is None:
            suggestions = self._catalog.suggest(name)
            hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
            return error_result(f"unknown tool {name!r}.{hint} Use find_tools to look tools up.")
        spec = self._catalog.server_spec(tool.server)
        if spec is None:  # catalog holds only servable tools; guard against a concurrent refresh
            return error_result(f"tool {name!r} is not available right now")
        arguments = arguments or {}
        problem = validate_arguments(tool, arguments)
        if problem is not None:
            return error_result(problem)
        with self.telemetry.upstream(tool.server, tool.name) as upstream:
            try:
                result = await self._pool.call_tool(spec, tool.name, arguments, meta=upstream.meta())
            except UpstreamError as exc:
                upstream.outcome("error", str(exc))
                result = error_result(str(exc))
            else:
                problem = check_size(tool, result, self._pool.max_result_bytes) or check_output(tool, result)
                if problem is not None:  # a server that breaks its own schema is failing, not the tool
                    upstream.outcome("error", problem)
                    result = error_result(problem)
                else:
                    upstream.outcome("tool_error" if result.is_error else "ok")
                    result = _without_protocol_meta(result)
        _log_call(name, tool.server, upstream.outcome_name, upstream.seconds, result)
        return result


def _log_call(name: str, server: str, outcome: str, seconds: float, result: types.CallToolResult) -> None:
    """One line per forwarded call (the request id is added by the log formatter)."""
    fields = {"tool": name, "server": server, "outcome": outcome, "duration_ms": round(seconds * 1000, 2)}
    if outcome == "error":
        message = "".join(getattr(block, "text", "") for block in result.content)
        logger.warning("call to %s failed: %s", name, message, extra=fields)
    else:
        logger.info("called %s on %s: %s in %.1f ms", name, server, outcome, seconds * 1000, extra=fields)
