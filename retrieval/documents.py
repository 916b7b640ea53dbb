"""A tool's searchable document, built from weighted fields.

The lexical index scores a term by its weighted frequency (BM25F-style): a word in the tool's
name counts several times more than the same word deep in a parameter description. Schemas
come from untrusted upstream servers, so the walker accepts anything and never raises.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from retrieval.text import iter_tokens, phrase_key

# Field weights. The name is the most deliberate summary of what a tool does, and queries
# reuse its words ("get channel clips"); the server name says which product or domain it
# belongs to ("Transfermarkt", "Kick.com"), which queries also mention by name. Title and
# description are the prose the author wrote for a model to read. Parameters say what the
# tool operates on ("artist_id", "city") but many are generic ("limit", "page"), so they
# count less; parameter descriptions and the server description are long and shared by many
# tools, so they count least. Example queries are user phrasing for this very tool.
WEIGHT_SERVER = 2.0
WEIGHT_SERVER_DESCRIPTION = 0.5
WEIGHT_NAME = 3.0
WEIGHT_TITLE = 2.0
WEIGHT_DESCRIPTION = 1.0
WEIGHT_PARAM_NAME = 1.0
WEIGHT_PARAM_DESCRIPTION = 0.5
WEIGHT_EXAMPLE = 1.0
# A query that is exactly the tool's name, with or without its server, is asking for this
# tool: the whole name is indexed as one extra term (see text.phrase_key), rare by nature
# and exempt from length normalisation (see lexical).
WEIGHT_EXACT_NAME = 3.0

# Only the first tokens of each field text count. A parameter description that lists every
# country code, or a description pasted from a manual, would otherwise swamp the document
# length and drown the words that say what the tool does.
MAX_FIELD_TOKENS = 64

# Bounds on what a schema may contribute, so one huge or adversarial schema cannot blow up
# the index: nesting depth walked, and parameters read in total.
MAX_SCHEMA_DEPTH = 4
MAX_SCHEMA_PARAMS = 200

# Keywords under which a schema nests alternatives or element schemas at the same level.
_COMBINATORS = ("anyOf", "oneOf", "allOf")


@dataclass(frozen=True)
class ToolText:
    """The text of one tool that search looks at. ``tool_id`` is opaque: never split it."""

    tool_id: str
    server: str
    server_description: str
    name: str
    title: str
    description: str
    input_schema: Mapping[str, Any] | None = None
    examples: Sequence[str] = field(default=())


def tool_text_from_record(record: Mapping[str, Any]) -> ToolText:
    """Build a :class:`ToolText` from a catalog row ``{"server", "name", "description", ...}``.

    The id is ``<server>/<name>`` as one string, the convention of the benchmark data.
    Missing or non-string fields become empty strings.
    """

    def text(key: str) -> str:
        value = record.get(key)
        return value if isinstance(value, str) else ""

    schema = record.get("input_schema")
    examples = record.get("examples")
    return ToolText(
        tool_id=f"{text('server')}/{text('name')}",
        server=text("server"),
        server_description=text("server_description"),
        name=text("name"),
        title=text("title"),
        description=text("description"),
        input_schema=schema if isinstance(schema, Mapping) else None,
        examples=[e for e in examples if isinstance(e, str)] if isinstance(examples, list) else (),
    )


def _iter_schema(schema: object, depth: int) -> Iterator[tuple[str, str]]:
    if depth > MAX_SCHEMA_DEPTH or not isinstance(schema, Mapping):
        return
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        for name, sub in properties.items():
            description = sub.get("description") if isinstance(sub, Mapping) else None
            yield str(name), description if isinstance(description, str) else ""
            yield from _iter_schema(sub, depth + 1)
    items = schema.get("items")
    # "items" is a schema, or (older drafts) a list of positional schemas.
    for sub in items if isinstance(items, list) else [items]:
        yield from _iter_schema(sub, depth + 1)
    for keyword in _COMBINATORS:
        alternatives = schema.get(keyword)
        if isinstance(alternatives, list):
            for sub in alternatives:
                yield from _iter_schema(sub, depth + 1)


def schema_parameters(schema: object) -> list[tuple[str, str]]:
    """``(name, description)`` of every parameter in a JSON schema, nested ones included.

    Walks ``properties``, array ``items`` and ``anyOf``/``oneOf``/``allOf`` up to
    :data:`MAX_SCHEMA_DEPTH` levels and :data:`MAX_SCHEMA_PARAMS` parameters. Anything that is
    not shaped like a schema is skipped; the function never raises on bad input.
    """
    params: list[tuple[str, str]] = []
    for param in _iter_schema(schema, 0):
        params.append(param)
        if len(params) >= MAX_SCHEMA_PARAMS:
            break
    return params


def document_parts(tool: ToolText) -> list[tuple[str, str, float]]:
    """The ``(field, text, weight)`` parts of a tool's document, empty texts left out."""
    parts = [
        ("server", tool.server, WEIGHT_SERVER),
        ("server_description", tool.server_description, WEIGHT_SERVER_DESCRIPTION),
        ("name", tool.name, WEIGHT_NAME),
        ("title", tool.title, WEIGHT_TITLE),
        ("description", tool.description, WEIGHT_DESCRIPTION),
    ]
    for name, description in schema_parameters(tool.input_schema):
        parts.append(("param_name", name, WEIGHT_PARAM_NAME))
        parts.append(("param_description", description, WEIGHT_PARAM_DESCRIPTION))
    examples = [tool.examples] if isinstance(tool.examples, str) else tool.examples
    parts.extend(("example", example, WEIGHT_EXAMPLE) for example in examples)
    return [part for part in parts if isinstance(part[1], str) and part[1].strip()]


@functools.lru_cache(maxsize=1 << 14)
def _field_tokens(text: str) -> tuple[str, ...]:
    # Server descriptions, parameter names and their descriptions repeat across a catalog's
    # tools; tokenising each distinct text once makes indexing several times cheaper.
    return tuple(itertools.islice(iter_tokens(text), MAX_FIELD_TOKENS))


def weighted_terms(tool: ToolText) -> dict[str, float]:
    """Term -> weighted frequency over all fields: the document the BM25 index stores.

    A term's frequency is the sum of its field weights, once per occurrence within the first
    :data:`MAX_FIELD_TOKENS` tokens of each part. Two extra phrase terms (see
    :func:`retrieval.text.phrase_key`) stand for the exact name, alone and prefixed by the
    server name; the index leaves them out of the document length.
    """
    terms: dict[str, float] = {}
    for _field, text, weight in document_parts(tool):
        for token in _field_tokens(text):
            terms[token] = terms.get(token, 0.0) + weight
    for text in (tool.name, f"{tool.server} {tool.name}"):
        key = phrase_key(text)
        if key is not None:
            terms[key] = WEIGHT_EXACT_NAME
    return terms
