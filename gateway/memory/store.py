"""A conversation's working set (the tools it currently holds) and the store interface.

Two implementations share this contract and one test suite: `LocalWorkingSetStore` (one process)
and `RedisWorkingSetStore` (gateway replicas sharing one Redis).
"""

from __future__ import annotations

import base64
import binascii
import json
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Literal, Protocol, TypeVar, get_args

Mode = Literal["autonomous", "workflow", "hybrid"]
MODES: tuple[Mode, ...] = get_args(Mode)
DEFAULT_CAPACITY = 128
DEFAULT_TTL_S = 3600.0
MAX_CONVERSATION_LENGTH = 128
# Per-conversation turn history kept with the working set, for operators (the console): the
# last HISTORY_LIMIT changes, each query cut to HISTORY_QUERY_CHARS, so a set stays small.
HISTORY_LIMIT = 50
HISTORY_QUERY_CHARS = 160
TurnKind = Literal["find", "call", "forget"]
TURN_KINDS: tuple[TurnKind, ...] = get_args(TurnKind)

R = TypeVar("R")


class MemoryStoreError(Exception):
    """Base of the conversation-memory errors."""


class InvalidConversationError(MemoryStoreError, ValueError):
    """The conversation id is empty, too long or holds control characters."""


class InvalidCursorError(MemoryStoreError, ValueError):
    """A `list` cursor that this store did not issue."""


class CapacityError(MemoryStoreError):
    """An update would push a working set past the store's capacity; nothing was written."""

    def __init__(self, conversation: str, size: int, capacity: int) -> None:
        super().__init__(
            f"conversation {conversation!r} would hold {size} tools, over the capacity of {capacity}; "
            "remove tools first"
        )
        self.conversation = conversation
        self.size = size
        self.capacity = capacity


class MemoryUnavailableError(MemoryStoreError):
    """The backing service (Redis) cannot be reached or answered with an error."""


class ConflictError(MemoryStoreError):
    """Optimistic retries ran out: other writers kept changing the same conversation."""


@dataclass(frozen=True, slots=True)
class ToolEntry:
    """One tool in a working set. Times are wall-clock epoch seconds; turns count `find_tools`
    queries. `None` means "never" (returned or called)."""

    added_at: float
    added_turn: int
    last_relevance: float
    last_returned_at: float | None = None
    last_returned_turn: int | None = None
    last_called_at: float | None = None
    last_called_turn: int | None = None

    @property
    def last_active_turn(self) -> int:
        """The last turn in which the tool was added, returned or called."""
        return max(self.added_turn, self.last_returned_turn or 0, self.last_called_turn or 0)

    @property
    def last_active_at(self) -> float:
        return max(self.added_at, self.last_returned_at or 0.0, self.last_called_at or 0.0)


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """What one change did to a working set: a `find` turn (its query, the tools it added and
    the ones pruned), a `call` that added the tool it ran, or a `forget`. `reasons` parallels
    `removed` ("idle", "irrelevant", "capacity", "forgotten")."""

    turn: int
    at: float
    kind: TurnKind
    query: str = ""
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class WorkingSet:
    """A conversation's tools by exposed name, its turn counter, mode override and the history
    of its recent changes (oldest first, at most `HISTORY_LIMIT`). Treat as immutable: update
    functions return a new one (`dataclasses.replace`)."""

    tools: Mapping[str, ToolEntry] = field(default_factory=dict)
    turn: int = 0
    mode: Mode | None = None
    updated_at: float = 0.0
    history: tuple[TurnRecord, ...] = ()

    def __len__(self) -> int:
        return len(self.tools)


@dataclass(frozen=True, slots=True)
class Change(Generic[R]):
    """What an update function returns: the new working set and a value for the caller. The
    store hands it back with `updated_at` stamped."""

    working_set: WorkingSet
    result: R


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """One row of the admin listing."""

    conversation: str
    tools: int
    turn: int
    mode: Mode | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class SummaryPage:
    """A page of the listing, least recently updated first; `next_cursor` is None at the end."""

    items: list[ConversationSummary]
    next_cursor: str | None


class WorkingSetStore(Protocol):
    """Where working sets live. `update` runs `fn` atomically per conversation: in Redis `fn` may
    run more than once (optimistic retries), so it must be pure. Idle conversations expire
    `ttl_s` after their last update; no working set ever holds more than `capacity` tools."""

    @property
    def capacity(self) -> int: ...

    @property
    def ttl_s(self) -> float: ...

    async def get(self, conversation: str) -> WorkingSet | None: ...

    async def update(self, conversation: str, fn: Callable[[WorkingSet], Change[R]]) -> Change[R]: ...

    async def clear(self, conversation: str) -> bool: ...

    async def list(self, limit: int = 50, cursor: str | None = None) -> SummaryPage: ...

    async def aclose(self) -> None: ...


def check_conversation(conversation: str) -> str:
    """Validate a client-supplied conversation id: 1-128 characters, no control characters."""
    if not isinstance(conversation, str) or not 0 < len(conversation) <= MAX_CONVERSATION_LENGTH:
        raise InvalidConversationError(f"a conversation id must be 1-{MAX_CONVERSATION_LENGTH} characters")
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in conversation):
        raise InvalidConversationError("a conversation id must not contain control characters")
    return conversation


def check_limit(limit: int) -> int:
    if not 1 <= limit <= 1000:
        raise ValueError("limit must be 1-1000")
    return limit


def checked_change(conversation: str, change: Change[R], capacity: int, now: float) -> Change[R]:
    """Enforce the capacity and stamp `updated_at` before anything is written."""
    new = change.working_set
    if len(new.tools) > capacity:
        raise CapacityError(conversation, len(new.tools), capacity)
    if new.mode is not None and new.mode not in MODES:
        raise ValueError(f"unknown mode {new.mode!r}")
    stamped = WorkingSet(
        tools=dict(new.tools),
        turn=new.turn,
        mode=new.mode,
        updated_at=now,
        history=tuple(new.history)[-HISTORY_LIMIT:],
    )
    return Change(stamped, change.result)


def with_record(working_set: WorkingSet, record: TurnRecord) -> WorkingSet:
    """The working set with `record` appended to its history (the oldest dropped past the
    limit; the query cut to `HISTORY_QUERY_CHARS`)."""
    if len(record.query) > HISTORY_QUERY_CHARS:
        record = replace(record, query=record.query[: HISTORY_QUERY_CHARS - 1] + "…")
    history = (*working_set.history, record)[-HISTORY_LIMIT:]
    return replace(working_set, history=history)


# Compact JSON: each tool is a fixed-order array, so 128 tools stay a few kilobytes.
_ENTRY_FIELDS = (
    "added_at",
    "added_turn",
    "last_relevance",
    "last_returned_at",
    "last_returned_turn",
    "last_called_at",
    "last_called_turn",
)
# The history ("h") was added without a version bump: documents without it read as an empty
# history, and a reader that predates it ignores the key, so replicas can upgrade one by one.
_VERSION = 1


def encode(working_set: WorkingSet) -> bytes:
    tools = {
        name: [getattr(entry, key) for key in _ENTRY_FIELDS] for name, entry in working_set.tools.items()
    }
    document: dict[str, Any] = {
        "v": _VERSION,
        "turn": working_set.turn,
        "mode": working_set.mode,
        "at": working_set.updated_at,
        "tools": tools,
    }
    if working_set.history:
        document["h"] = [_encode_record(record) for record in working_set.history]
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _encode_record(record: TurnRecord) -> list[Any]:
    return [
        record.turn,
        record.at,
        record.kind,
        record.query,
        list(record.added),
        list(record.removed),
        list(record.reasons),
    ]


def _decode_record(values: list[Any]) -> TurnRecord:
    turn, at, kind, query, added, removed, reasons = values
    if kind not in TURN_KINDS:
        raise ValueError(f"unknown turn kind {kind!r}")
    return TurnRecord(
        turn=int(turn),
        at=float(at),
        kind=kind,
        query=str(query),
        added=tuple(map(str, added)),
        removed=tuple(map(str, removed)),
        reasons=tuple(map(str, reasons)),
    )


def decode(raw: bytes | str) -> WorkingSet:
    try:
        document: dict[str, Any] = json.loads(raw)
        if document.get("v") != _VERSION:
            raise ValueError(f"unknown version {document.get('v')!r}")
        tools = {
            name: ToolEntry(**dict(zip(_ENTRY_FIELDS, values, strict=True)))
            for name, values in document["tools"].items()
        }
        mode = document["mode"]
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        history = tuple(_decode_record(values) for values in document.get("h", ()))
        return WorkingSet(
            tools=tools,
            turn=int(document["turn"]),
            mode=mode,
            updated_at=float(document["at"]),
            history=history,
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MemoryStoreError(f"a stored working set could not be read: {exc}") from exc


def summarise(conversation: str, working_set: WorkingSet) -> ConversationSummary:
    return ConversationSummary(
        conversation=conversation,
        tools=len(working_set.tools),
        turn=working_set.turn,
        mode=working_set.mode,
        updated_at=working_set.updated_at,
    )


# Listing pages by (updated_at, conversation), the order both stores can keep cheaply; a
# conversation updated while an admin pages may show up twice but is never skipped.
def encode_cursor(updated_at: float, conversation: str) -> str:
    raw = json.dumps([updated_at, conversation], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        updated_at, conversation = json.loads(raw)
        return float(updated_at), check_conversation(conversation)
    except (ValueError, TypeError, binascii.Error, MemoryStoreError) as exc:
        raise InvalidCursorError("invalid cursor") from exc
