"""Working sets in process memory: the embedded default, for a single gateway process."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.memory.store import (
    DEFAULT_CAPACITY,
    DEFAULT_TTL_S,
    Change,
    R,
    SummaryPage,
    WorkingSet,
    check_conversation,
    check_limit,
    checked_change,
    decode,
    decode_cursor,
    encode,
    encode_cursor,
    summarise,
)


@dataclass(slots=True)
class _Slot:
    raw: bytes  # stored encoded, like Redis: callers never share mutable state with the store
    updated_at: float
    expires: float  # monotonic deadline


class LocalWorkingSetStore:
    """Expires lazily on access and by a sweep that `update` runs at most every `sweep_interval_s`.

    `update` has no await between its read and its write, so it is atomic on the event loop;
    the lock also keeps it atomic if it is ever called from worker threads."""

    def __init__(
        self,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        capacity: int = DEFAULT_CAPACITY,
        sweep_interval_s: float = 60.0,
    ) -> None:
        if ttl_s <= 0 or capacity < 1:
            raise ValueError("ttl_s must be positive and capacity at least 1")
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._sweep_interval_s = min(sweep_interval_s, ttl_s)
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic() + self._sweep_interval_s

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    def __len__(self) -> int:
        """Slots held, expired ones included until the next sweep."""
        return len(self._slots)

    async def get(self, conversation: str) -> WorkingSet | None:
        check_conversation(conversation)
        with self._lock:
            slot = self._live(conversation, time.monotonic())
        return None if slot is None else decode(slot.raw)

    async def update(self, conversation: str, fn: Callable[[WorkingSet], Change[R]]) -> Change[R]:
        check_conversation(conversation)
        with self._lock:
            now = time.monotonic()
            if now >= self._next_sweep:
                self._sweep(now)
            slot = self._live(conversation, now)
            current = WorkingSet() if slot is None else decode(slot.raw)
            change = checked_change(conversation, fn(current), self._capacity, time.time())
            stored = change.working_set
            self._slots[conversation] = _Slot(encode(stored), stored.updated_at, now + self._ttl_s)
        return change

    async def clear(self, conversation: str) -> bool:
        check_conversation(conversation)
        with self._lock:
            if self._live(conversation, time.monotonic()) is None:
                return False
            del self._slots[conversation]
            return True

    async def list(self, limit: int = 50, cursor: str | None = None) -> SummaryPage:
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        with self._lock:
            self._sweep(time.monotonic())
            keys = sorted((slot.updated_at, name) for name, slot in self._slots.items())
            if after is not None:
                keys = [key for key in keys if key > after]
            page = keys[:limit]
            items = [summarise(name, decode(self._slots[name].raw)) for _, name in page]
        more = len(keys) > limit
        return SummaryPage(items, encode_cursor(*page[-1]) if more else None)

    def sweep(self) -> int:
        """Drop every expired conversation now; returns how many were dropped."""
        with self._lock:
            return self._sweep(time.monotonic())

    async def aclose(self) -> None:
        with self._lock:
            self._slots.clear()

    def _live(self, conversation: str, now: float) -> _Slot | None:
        slot = self._slots.get(conversation)
        if slot is not None and now >= slot.expires:
            del self._slots[conversation]
            return None
        return slot

    def _sweep(self, now: float) -> int:
        expired = [name for name, slot in self._slots.items() if now >= slot.expires]
        for name in expired:
            del self._slots[name]
        self._next_sweep = now + self._sweep_interval_s
        return len(expired)
