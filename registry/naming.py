"""Names clients see: `^[a-zA-Z0-9_-]{1,64}$`, namespaced by server, readable, unique and stable."""

from __future__ import annotations

import hashlib
import re

EXPOSED_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
SERVER_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,31}$")
SEPARATOR = "__"
_INVALID = re.compile(r"[^a-zA-Z0-9_-]+")
_MAX = 64
_SERVER_PART_MAX = 24
_HASH_LEN = 6


def slugify(text: str, *, max_len: int = _MAX) -> str:
    """Replace runs of characters outside `[a-zA-Z0-9_-]` by `_` and trim."""
    slug = _INVALID.sub("_", text).strip("_-")
    return slug[:max_len] or "x"


def server_slug(name: str) -> str:
    """A valid server name derived from a free-form one (import keys may hold spaces or dots)."""
    return slugify(name, max_len=32)


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:_HASH_LEN]


def exposed_name(server: str, tool: str, *, force_hash: bool = False) -> str:
    """`<server>__<tool>`, cut to 64 characters. When the readable form would be lossy (cut, or
    characters replaced) or collides, a short hash of the true names keeps it unique and stable."""
    server_part = slugify(server, max_len=_SERVER_PART_MAX)
    tool_part = slugify(tool)
    readable = f"{server_part}{SEPARATOR}{tool_part}"
    lossy = tool_part != tool or server_part != server
    if len(readable) <= _MAX and not lossy and not force_hash:
        return readable
    suffix = "-" + _short_hash(server, tool)
    room = _MAX - len(suffix)
    return readable[:room].rstrip("_-") + suffix
