"""Argument and result checks of the forwarder (pure; the forwarding itself is tested end to end)."""

from __future__ import annotations

from typing import Any

import mcp_types as types

from gateway.catalog import CatalogTool
from gateway.forwarder import check_output, validate_arguments
from registry.hashing import definition_hash


def tool(input_schema: Any, output_schema: Any = None) -> CatalogTool:
    digest = definition_hash(
        name="t",
        title=None,
        description="",
        input_schema=input_schema,
        output_schema=output_schema,
        annotations=None,
    )
    return CatalogTool(
        id=1,
        exposed_name="srv__t",
        server="srv",
        name="t",
        title=None,
        description="",
        input_schema=input_schema,
        output_schema=output_schema,
        annotations=None,
        definition_hash=digest,
    )


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
}


def test_arguments_are_checked_and_the_violation_named() -> None:
    assert validate_arguments(tool(SCHEMA), {"city": "Oslo", "days": 3}) is None
    missing = validate_arguments(tool(SCHEMA), {})
    assert missing is not None
    assert "'city' is a required property" in missing
    nested = validate_arguments(tool(SCHEMA), {"city": "Oslo", "days": 0})
    assert nested is not None
    assert "at days" in nested


def test_a_broken_upstream_schema_does_not_block_calls() -> None:
    assert validate_arguments(tool({"type": "no-such-type"}), {"anything": 1}) is None


def test_results_must_match_the_declared_output_schema() -> None:
    out = {"type": "object", "properties": {"sum": {"type": "integer"}}, "required": ["sum"]}
    good = types.CallToolResult(content=[], structured_content={"sum": 3})
    bad = types.CallToolResult(content=[], structured_content={"sum": "three"})
    missing = types.CallToolResult(content=[types.TextContent(type="text", text="3")])
    failed = types.CallToolResult(content=[types.TextContent(type="text", text="boom")], is_error=True)
    assert check_output(tool(SCHEMA, out), good) is None
    assert "at sum" in (check_output(tool(SCHEMA, out), bad) or "")
    assert "no structured content" in (check_output(tool(SCHEMA, out), missing) or "")
    assert check_output(tool(SCHEMA, out), failed) is None  # errors are passed on as they are
    assert check_output(tool(SCHEMA), bad) is None  # no schema declared, nothing to hold it to


def test_results_over_the_size_limit_become_an_error_naming_it() -> None:
    from gateway.forwarder import check_size

    small = types.CallToolResult(content=[types.TextContent(type="text", text="x" * 100)])
    big = types.CallToolResult(content=[types.TextContent(type="text", text="x" * 5000)])
    assert check_size(tool(SCHEMA), small, 1000) is None
    problem = check_size(tool(SCHEMA), big, 1000)
    assert problem is not None
    assert "more than 1000 bytes" in problem
    assert "TOOLGATE_MAX_RESULT_BYTES" in problem
