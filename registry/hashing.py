"""Stable hashes of tool definitions, so sync re-stores (and later re-embeds) only what changed."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def definition_hash(
    *,
    name: str,
    title: str | None,
    description: str,
    input_schema: Any,
    output_schema: Any,
    annotations: Any,
) -> str:
    """SHA-256 over every field a client or the index sees."""
    payload = {
        "name": name,
        "title": title,
        "description": description,
        "input_schema": input_schema,
        "output_schema": output_schema,
        "annotations": annotations,
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()
