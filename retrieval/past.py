"""Past requests that used tools: per request its query vector and the tools it used.

Two views read them: Tool2Vec's nearest-query votes (the past requests most like a new one
vote for the tools they used) and the intent stage's co-usage (tools one request used
together). A request is known by a key derived from its query vector, so uses of several
tools by one request group together wherever they are recorded (another replica, a restart
replaying stored uses) and recording a use twice changes nothing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .intent_stage import CoUsage
from .usage import Vector

CAPACITY = 10_000  # requests kept (newest); the votes scan them all (~15 MB of vectors)


def request_key(vector: Vector) -> str:
    """The key of the request whose query embedding is ``vector`` (32 hex digits)."""
    data = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


class _Request:
    __slots__ = ("tools", "vector")

    def __init__(self, vector: Vector, tool_id: str) -> None:
        self.vector = vector
        self.tools: tuple[str, ...] = (tool_id,)


class PastRequests:
    """The newest ``capacity`` requests that used tools, oldest first."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.co = CoUsage()
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        # The votes' matrix and the requests of its rows, built on first use after a change.
        self._matrix: np.ndarray | None = None
        self._rows: list[_Request] = []

    def __len__(self) -> int:
        return len(self._requests)

    def knows(self, request: str, tool_id: str) -> bool:
        """Whether this use (request, tool) is already counted."""
        known = self._requests.get(request)
        return known is not None and tool_id in known.tools

    def add(self, tool_id: str, vector: Vector, request: str | None = None) -> bool:
        """One use of ``tool_id`` by the request whose query embedding is ``vector`` (its key,
        when the caller has it). False when that use was already counted."""
        key = request if request is not None else request_key(vector)
        known = self._requests.get(key)
        if known is not None:
            if tool_id in known.tools:
                return False
            self.co.add(tool_id, known.tools)
            known.tools = (*known.tools, tool_id)
            return True
        self._requests[key] = _Request(np.asarray(vector, dtype=np.float32), tool_id)
        self.co.add(tool_id, ())
        while len(self._requests) > self.capacity:
            _, old = self._requests.popitem(last=False)
            self.co.forget(old.tools)
        self._matrix = None
        return True

    def clear(self) -> None:
        self._requests.clear()
        self.co.clear()
        self._matrix = None
        self._rows = []

    def votes(self, vector: Vector, ids: Sequence[str], k: int) -> dict[str, float]:
        """The ``k`` past requests most like ``vector`` vote for the tools they used among
        ``ids``, each vote weighted by the similarity."""
        votes = dict.fromkeys(ids, 0.0)
        if not self._requests or k <= 0:
            return votes
        if self._matrix is None:
            self._rows = list(self._requests.values())
            self._matrix = np.vstack([r.vector for r in self._rows]).astype(np.float32)
        sims = self._matrix @ np.asarray(vector, dtype=np.float32)
        k = min(k, len(sims))
        for row in np.argpartition(-sims, k - 1)[:k]:
            sim = float(sims[row])
            if sim <= 0.0:
                continue
            for tool_id in self._rows[row].tools:
                if tool_id in votes:
                    votes[tool_id] += sim
        return votes
