"""Intent parsing by a language model behind any OpenAI-compatible chat-completions endpoint.

Optional: the built-in parser (:mod:`retrieval.intent`) is the default. The model is asked for
the sub-intents as JSON under a strict schema (``response_format`` ``json_schema``), and the
answer is checked before it is used: it must parse, match the schema, and every span must be
text of the query. On any failure (timeout, HTTP error, malformed JSON, schema mismatch, a span
not in the query) the built-in parser answers instead and ``fallback_reason`` says why.

The model is not asked for domain hints or character offsets: it does not know the catalog's
server and category labels (listing thousands of them would cost more tokens than the request),
and offsets are found by locating its spans in the query. Domain hints come from the same
centroids as for the built-in parser; named tools and servers are checked against the same
vocabulary, so a name the model invents is dropped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx
from jsonschema import Draft202012Validator

from .intent import MAX_SUB_INTENTS, EmbedFn, Intent, IntentParser, ParserName, SubIntent, Vocabulary

logger = logging.getLogger(__name__)

# The answer's shape: Intent's sub-intents without what is computed here (offsets, domain
# hints). Strict structured outputs need every property listed as required, nullable ones
# typed with "null", and no additional properties.
_SUB_INTENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["span", "action", "object", "effect", "named_tools", "named_servers"],
    "properties": {
        "span": {"type": "string", "description": "the exact text of the query this sub-intent covers"},
        "action": {"type": ["string", "null"], "description": "the verb, lowercase base form"},
        "object": {"type": ["string", "null"], "description": "what the action applies to"},
        "effect": {"type": "string", "enum": ["read", "write", "unknown"]},
        "named_tools": {"type": "array", "items": {"type": "string"}},
        "named_servers": {"type": "array", "items": {"type": "string"}},
    },
}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["sub_intents"],
    "properties": {"sub_intents": {"type": "array", "items": _SUB_INTENT_SCHEMA}},
}
_VALIDATOR = Draft202012Validator(ANSWER_SCHEMA)

SYSTEM_PROMPT = """You split a user's request to an AI agent into sub-intents: the separate \
things it asks for, each of which may need a different tool. Answer in JSON only.
For each sub-intent give:
- span: the part of the request that asks for it, copied verbatim (same characters, same case);
- action: the main verb in lowercase base form ("find", "send", "convert"), or null;
- object: what the action applies to, copied from the request, or null;
- effect: "read" if it only looks something up or computes something, "write" if it creates, \
changes, sends, books, buys or deletes something, "unknown" if unclear;
- named_tools, named_servers: tool or service names the request writes out explicitly, else [].
Background sentences that ask for nothing ("I'm planning a trip") are not sub-intents. Do not \
split a list of nouns that one verb applies to ("the clips and the details") into several."""


@dataclass(frozen=True)
class LLMSettings:
    """Where and how to ask. ``url`` is the API base ("https://host/v1") or the full
    ".../chat/completions" URL. The key is kept out of ``repr`` so it never reaches a log."""

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 5.0  # seconds for the whole exchange, connection included
    max_sub_intents: int = MAX_SUB_INTENTS
    temperature: float = 0.0

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


class _Failure(Exception):
    """Why the model's answer cannot be used: a short reason for ``fallback_reason``."""


class LLMIntentParser:
    """Parses with a language model, falls back to ``fallback`` (the built-in parser, whose
    vocabulary and domain centroids it also uses) on any failure."""

    name: ParserName = "llm"

    def __init__(
        self, settings: LLMSettings, fallback: IntentParser, *, client: httpx.AsyncClient | None = None
    ) -> None:
        """``client``: a shared client from the app's lifespan; without one, each call opens its own."""
        self.settings = settings
        self.fallback = fallback
        self._client = client

    async def parse(self, query: str, *, embed: EmbedFn | None = None) -> Intent:
        """The intent of ``query``. With ``embed`` (blocking; run in a worker thread) the spans
        get domain hints; otherwise pass vectors to ``fallback.with_domains`` afterwards."""
        try:
            intent = self._build(query, await self._ask(query))
        except _Failure as failure:
            reason = self._redact(str(failure))
            logger.warning(
                "intent parser %s failed, using the built-in parser: %s", self.settings.model, reason
            )
            intent = dataclasses.replace(self.fallback.parse(query), fallback_reason=reason)
        if embed is not None and self.fallback.domains is not None and intent.sub_intents:
            vectors = await anyio.to_thread.run_sync(embed, intent.spans)
            intent = self.fallback.with_domains(intent, vectors)
        return intent

    def request_body(self, query: str) -> dict[str, Any]:
        """The chat-completions request for ``query``."""
        return {
            "model": self.settings.model,
            "temperature": self.settings.temperature,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": query}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "intent", "strict": True, "schema": ANSWER_SCHEMA},
            },
        }

    async def _ask(self, query: str) -> str:
        """The model's answer text (the message content), or _Failure."""
        timeout = self.settings.timeout
        headers = {"Authorization": f"Bearer {self.settings.api_key}"} if self.settings.api_key else {}
        try:
            # fail_after bounds the whole exchange; httpx's timeout alone bounds each read, so
            # a server that trickles bytes could hold the request far longer.
            with anyio.fail_after(timeout):
                if self._client is not None:
                    response = await self._post(self._client, query, headers)
                else:
                    async with httpx.AsyncClient() as client:
                        response = await self._post(client, query, headers)
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise _Failure(f"no answer within {timeout:g} s") from exc
        except httpx.HTTPError as exc:  # connection refused, protocol errors: the type says enough
            raise _Failure(f"request failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise _Failure(f"HTTP {response.status_code} from the endpoint")
        try:
            payload = response.json()
        except ValueError as exc:
            raise _Failure("the response is not JSON") from exc
        return _message_content(payload)

    async def _post(self, client: httpx.AsyncClient, query: str, headers: dict[str, str]) -> httpx.Response:
        return await client.post(
            self.settings.endpoint,
            json=self.request_body(query),
            headers=headers,
            timeout=self.settings.timeout,
        )

    def _build(self, query: str, content: str) -> Intent:
        """Check the answer and turn it into an Intent, or _Failure."""
        try:
            answer = json.loads(content)
        except ValueError as exc:
            raise _Failure("the answer is not valid JSON") from exc
        error = next(iter(sorted(_VALIDATOR.iter_errors(answer), key=lambda e: list(e.absolute_path))), None)
        if error is not None:
            where = "/".join(str(part) for part in error.absolute_path) or "answer"
            raise _Failure(f"the answer does not match the schema at {where}: {error.message[:120]}")
        items: list[dict[str, Any]] = answer["sub_intents"][: self.settings.max_sub_intents]
        if not items:
            raise _Failure("the answer has no sub-intents")
        subs = []
        cursor = 0
        for item in items:
            span = item["span"].strip()
            start = _locate(query, span, cursor)
            if start < 0:
                raise _Failure(f"span {span[:60]!r} is not in the query")
            end = start + len(span)
            cursor = end
            tools, servers = self._names(query[start:end], item)
            subs.append(
                SubIntent(
                    span=span,
                    start=start,
                    end=end,
                    action=_text_or_none(item["action"], lower=True),
                    object=_text_or_none(item["object"]),
                    effect=item["effect"],
                    named_tools=tools,
                    named_servers=servers,
                )
            )
        return Intent(query, tuple(subs), parser="llm")

    def _names(self, span: str, item: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Names found in the span by the vocabulary, then those the model reported that the
        vocabulary knows; without a vocabulary there is nothing to check them against."""
        tools, servers = self.fallback.named(span)
        vocabulary = self.fallback.vocabulary
        if vocabulary is None:
            return tools, servers
        return (
            _union(tools, _resolved(vocabulary, item["named_tools"], "tool")),
            _union(servers, _resolved(vocabulary, item["named_servers"], "server")),
        )

    def _redact(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "***") if key else text


def _message_content(payload: object) -> str:
    """choices[0].message.content of a chat-completions response."""
    choices = payload.get("choices") if isinstance(payload, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        raise _Failure("the response has no choices[0].message")
    if message.get("refusal"):
        raise _Failure("the model refused to answer")
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise _Failure("the response message has no content")
    return content


def _locate(query: str, span: str, cursor: int) -> int:
    """Where ``span`` is in ``query``: after the previous span if it is there, else anywhere."""
    if not span:
        return -1
    found = query.find(span, cursor)
    return found if found >= 0 else query.find(span)


def _text_or_none(value: str | None, *, lower: bool = False) -> str | None:
    if value is None or not value.strip():
        return None
    return value.strip().lower() if lower else value.strip()


def _resolved(
    vocabulary: Vocabulary, names: Sequence[str], kind: Literal["tool", "server"]
) -> tuple[str, ...]:
    return tuple(canonical for name in names for canonical in vocabulary.resolve(name, kind))


def _union(first: Sequence[str], second: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*first, *second]))
