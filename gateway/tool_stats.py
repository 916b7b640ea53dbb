"""How often each tool is found (returned by a conversation's `find_tools`) and called.

Counts live in this process and start at zero with it: they tell an operator which tools are
returned but never used (a ranking problem) and which are used without being found (clients
that already know the name). Each gateway replica counts its own traffic.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ToolCounts:
    found: int = 0
    called: int = 0


class ToolStats:
    """Found and called counters per exposed tool name; safe to update from worker threads."""

    def __init__(self) -> None:
        self._found: Counter[str] = Counter()
        self._called: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record_found(self, names: Iterable[str]) -> None:
        """One search returned these tools (each counts once per search)."""
        with self._lock:
            self._found.update(set(names))

    def record_called(self, name: str) -> None:
        """A call of the tool succeeded."""
        with self._lock:
            self._called[name] += 1

    def counts(self, name: str) -> ToolCounts:
        with self._lock:
            return ToolCounts(self._found[name], self._called[name])

    def snapshot(self) -> dict[str, ToolCounts]:
        """Every tool seen so far."""
        with self._lock:
            names = set(self._found) | set(self._called)
            return {name: ToolCounts(self._found[name], self._called[name]) for name in names}
