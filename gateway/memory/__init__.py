"""Conversation memory: each conversation's working set of tools (MemTool's short-term memory)."""

from __future__ import annotations

from gateway.memory.local import LocalWorkingSetStore
from gateway.memory.redis_store import RedisWorkingSetStore
from gateway.memory.store import (
    DEFAULT_CAPACITY,
    DEFAULT_TTL_S,
    HISTORY_LIMIT,
    CapacityError,
    Change,
    ConflictError,
    ConversationSummary,
    InvalidConversationError,
    InvalidCursorError,
    MemoryStoreError,
    MemoryUnavailableError,
    Mode,
    SummaryPage,
    ToolEntry,
    TurnKind,
    TurnRecord,
    WorkingSet,
    WorkingSetStore,
    with_record,
)

__all__ = [
    "DEFAULT_CAPACITY",
    "DEFAULT_TTL_S",
    "HISTORY_LIMIT",
    "CapacityError",
    "Change",
    "ConflictError",
    "ConversationSummary",
    "InvalidConversationError",
    "InvalidCursorError",
    "LocalWorkingSetStore",
    "MemoryStoreError",
    "MemoryUnavailableError",
    "Mode",
    "RedisWorkingSetStore",
    "SummaryPage",
    "ToolEntry",
    "TurnKind",
    "TurnRecord",
    "WorkingSet",
    "WorkingSetStore",
    "open_store",
    "with_record",
]


def open_store(
    redis_url: str | None, *, ttl_s: float = DEFAULT_TTL_S, capacity: int = DEFAULT_CAPACITY
) -> WorkingSetStore:
    """Redis when a URL is given (shared by replicas), process memory otherwise. Does no I/O:
    call from the app's lifespan and `aclose()` on the way out."""
    if redis_url:
        return RedisWorkingSetStore.from_url(redis_url, ttl_s=ttl_s, capacity=capacity)
    return LocalWorkingSetStore(ttl_s=ttl_s, capacity=capacity)
