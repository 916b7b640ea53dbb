"""A real MCP server whose tools declare what they change: a small note store.

Run it as ``python -m tests.servers.notes_server`` (stdio). The reading tools say
``readOnlyHint: true``; ``delete_note`` and ``overwrite_note`` say ``destructiveHint: true``;
``append_note`` changes state without destroying anything. The tests use it to check that a
request that only reads is never handed a destructive tool unless it asks for the change.
"""

from __future__ import annotations

import mcp_types as types
from mcp.server.mcpserver import MCPServer

READ_ONLY = types.ToolAnnotations(read_only_hint=True, destructive_hint=False)
DESTRUCTIVE = types.ToolAnnotations(read_only_hint=False, destructive_hint=True)
ADDITIVE = types.ToolAnnotations(read_only_hint=False, destructive_hint=False)

server = MCPServer("notes")
_notes: dict[str, str] = {"groceries": "milk, eggs", "todo": "call the bank"}


@server.tool(annotations=READ_ONLY)
def read_note(title: str) -> str:
    """Show the text of a note, looked up by its title."""
    return _notes.get(title, f"no note titled {title!r}")


@server.tool(annotations=READ_ONLY)
def list_notes() -> list[str]:
    """List the titles of all saved notes."""
    return sorted(_notes)


@server.tool(annotations=READ_ONLY)
def search_notes(text: str) -> list[str]:
    """Find the notes whose text contains the given words."""
    return sorted(title for title, body in _notes.items() if text.lower() in body.lower())


@server.tool(annotations=DESTRUCTIVE)
def delete_note(title: str) -> str:
    """Delete a note permanently, by its title."""
    return "deleted" if _notes.pop(title, None) is not None else "not found"


@server.tool(annotations=DESTRUCTIVE)
def overwrite_note(title: str, text: str) -> str:
    """Replace the whole text of a note, discarding what it held."""
    _notes[title] = text
    return "saved"


@server.tool(annotations=ADDITIVE)
def append_note(title: str, text: str) -> str:
    """Add a line to the end of a note, creating it if needed."""
    _notes[title] = (_notes.get(title, "") + "\n" + text).strip()
    return "appended"


if __name__ == "__main__":
    server.run("stdio")
