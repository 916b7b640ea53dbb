"""The front door's fixed meta-tools: their names, descriptions and schemas.

This list never changes at run time, so every client works and prompt caches stay valid.
"""

from __future__ import annotations

from typing import Any

import mcp_types as types

FIND_TOOLS = "find_tools"
CALL_TOOL = "call_tool"
FORGET_TOOLS = "forget_tools"
NAMES = (FIND_TOOLS, CALL_TOOL, FORGET_TOOLS)
MAX_QUERY_CHARS = 2000
MAX_FORGET = 256

_CARD: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "Pass this to call_tool."},
        "title": {"type": ["string", "null"]},
        "description": {"type": "string"},
        "server": {"type": "string"},
        "input_schema": {"type": "object"},
        "score": {"type": "number"},
        "why": {"type": "string", "description": "Which stage and field matched."},
        "sub_intent": {
            "type": "integer",
            "description": "Which part of the request (an index into intent.sub_intents) it answers.",
        },
    },
    "required": ["name", "description", "server", "input_schema", "score", "why"],
}

_CONVERSATION: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "description": (
        "The conversation id from your first find_tools result. Pass it back on every later "
        "find_tools, call_tool and forget_tools call of the same conversation."
    ),
}

_INTENT: dict[str, Any] = {
    "type": "object",
    "description": "How the request was read: its sub-intents, each ranked for in turn.",
    "properties": {
        "parser": {"type": "string", "enum": ["builtin", "llm"]},
        "fallback_reason": {"type": ["string", "null"]},
        "sub_intents": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "span": {"type": "string"},
                    "action": {"type": ["string", "null"]},
                    "object": {"type": ["string", "null"]},
                    "effect": {"type": "string", "enum": ["read", "write", "unknown"]},
                    "domains": {"type": "array"},
                    "named_tools": {"type": "array", "items": {"type": "string"}},
                    "named_servers": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_MEMORY: dict[str, Any] = {
    "type": "object",
    "description": "Your working set of tools in this conversation.",
    "properties": {
        "mode": {"type": "string", "enum": ["autonomous", "workflow", "hybrid"]},
        "count": {"type": "integer"},
        "capacity": {"type": "integer"},
        "added": {"type": "array", "items": {"type": "string"}},
        "removed": {"type": "array", "items": {"type": "string"}},
        "held": {
            "type": "array",
            "items": {"type": "string"},
            "description": "Tools you already hold that match this request (their cards came earlier).",
        },
    },
}


def meta_tools(max_limit: int, default_limit: int) -> list[types.Tool]:
    return [_find_tools(max_limit, default_limit), _call_tool(), _forget_tools()]


def _find_tools(max_limit: int, default_limit: int) -> types.Tool:
    return types.Tool(
        name=FIND_TOOLS,
        title="Find tools",
        description=(
            "Search the tools of every MCP server behind this gateway. Describe the task in plain "
            "words; you get the best-matching tools with their input schemas. Then run one with "
            "call_tool, passing its exact name. The result carries a conversation id: pass it back "
            "on later calls so the gateway keeps your working set of tools. Tools you already hold "
            "are not repeated: they are named in memory.held, and the result brings new ones."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "query": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_QUERY_CHARS,
                    "description": "What you want to do.",
                },
                "limit": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": max_limit,
                    "default": default_limit,
                    "description": "How many tools to return.",
                },
                "server": {"type": "string", "description": "Only tools of this server."},
                "category": {"type": "string", "description": "Only tools of servers in this category."},
                "read_only": {
                    "type": "boolean",
                    "description": "true: only tools that declare they change nothing; "
                    "false: only tools that declare they may change something.",
                },
                "adaptive": {
                    "type": "boolean",
                    "default": False,
                    "description": "Return fewer than `limit` tools when the scores drop off clearly.",
                },
                "include_held": {
                    "type": "boolean",
                    "default": False,
                    "description": "Also return the cards of matching tools already in your working set.",
                },
                "conversation": _CONVERSATION,
                "mode": {
                    "type": "string",
                    "enum": ["autonomous", "workflow", "hybrid"],
                    "description": "Change how this conversation's working set is kept (optional).",
                },
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "tools": {"type": "array", "items": _CARD},
                "total_tools": {"type": "integer"},
                "conversation": {"type": ["string", "null"]},
                "memory": _MEMORY,
                "intent": _INTENT,
            },
            "required": ["tools", "total_tools"],
        },
        annotations=types.ToolAnnotations(read_only_hint=True, destructive_hint=False, open_world_hint=False),
    )


def _call_tool() -> types.Tool:
    return types.Tool(
        name=CALL_TOOL,
        title="Call a tool",
        description=(
            "Run a tool found with find_tools: give its exact name and the arguments its input "
            "schema asks for. The tool's own result is returned unchanged."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "name": {"type": "string", "minLength": 1, "description": "The tool name from find_tools."},
                "arguments": {"type": "object", "description": "Arguments for that tool.", "default": {}},
                "conversation": _CONVERSATION,
            },
            "required": ["name"],
            "additionalProperties": False,
        },
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=True),
    )


def _forget_tools() -> types.Tool:
    return types.Tool(
        name=FORGET_TOOLS,
        title="Forget tools",
        description=(
            "Remove tools you no longer need from this conversation's working set, to make room for new ones."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "names": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 1,
                    "maxItems": MAX_FORGET,
                    "description": "Exact tool names to remove.",
                },
                "conversation": _CONVERSATION,
            },
            "required": ["names"],
            "additionalProperties": False,
        },
        output_schema={
            "type": "object",
            "properties": {
                "conversation": {"type": "string"},
                "forgotten": {"type": "array", "items": {"type": "string"}},
                "memory": _MEMORY,
            },
            "required": ["conversation", "forgotten", "memory"],
        },
        annotations=types.ToolAnnotations(
            read_only_hint=False, destructive_hint=False, open_world_hint=False
        ),
    )
