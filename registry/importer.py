"""Import of Claude-Desktop-style `{"mcpServers": {...}}` files (also VS Code's `{"servers": ...}`).

Parsing validates every entry first and reports every problem at once, so a bad file writes
nothing.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from .naming import server_slug
from .specs import ServerSpec, TransportName

_TRANSPORT_ALIASES: dict[str, TransportName] = {
    "stdio": "stdio",
    "http": "http",
    "streamable-http": "http",
    "streamable_http": "http",
    "streamablehttp": "http",
    "sse": "sse",
}


class ImportFileError(ValueError):
    """The file is not a valid server list; `problems` names each bad entry and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid import file:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


def parse_import_text(text: str | bytes) -> list[ServerSpec]:
    """Parse the JSON text of an import file."""
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImportFileError([f"not valid JSON: {exc}"]) from None
    return parse_import_document(document)


def parse_import_document(document: Any) -> list[ServerSpec]:
    """Turn a decoded import document into validated server specs, or raise with every problem."""
    if not isinstance(document, dict):
        raise ImportFileError(["top level must be an object with an 'mcpServers' object"])
    entries = document.get("mcpServers", document.get("servers"))
    if not isinstance(entries, dict):
        raise ImportFileError(["missing 'mcpServers' object (a map of server name to its definition)"])
    specs: list[ServerSpec] = []
    problems: list[str] = []
    names: dict[str, str] = {}
    for key, entry in entries.items():
        name = server_slug(str(key))
        if name in names:
            problems.append(f"{key!r}: its name becomes {name!r}, the same as {names[name]!r}")
            continue
        names[name] = str(key)
        try:
            specs.append(_entry_spec(name, entry))
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(p) for p in error["loc"])
                problems.append(f"{key!r}{'.' + where if where else ''}: {error['msg']}")
        except ValueError as exc:
            problems.append(f"{key!r}: {exc}")
    if problems:
        raise ImportFileError(problems)
    return specs


def _entry_spec(name: str, entry: Any) -> ServerSpec:
    if not isinstance(entry, dict):
        raise ValueError("each server must be an object")
    declared = str(entry.get("type", entry.get("transport", ""))).lower().replace(" ", "")
    if declared:
        if declared not in _TRANSPORT_ALIASES:
            raise ValueError(f"unknown transport {declared!r} (use stdio, http or sse)")
        transport = _TRANSPORT_ALIASES[declared]
    else:
        transport = "http" if "url" in entry else "stdio"
    known = {"command", "args", "env", "cwd", "url", "headers", "description", "category"}
    fields = {k: v for k, v in entry.items() if k in known}
    return ServerSpec.model_validate(
        {"name": name, "transport": transport, "enabled": not bool(entry.get("disabled", False)), **fields}
    )
