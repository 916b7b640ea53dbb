"""Live usage learning: a successful `call_tool` after a `find_tools` that returned that tool,
in the same conversation, counts that query as a use of the tool (Tool2Vec, online).

Guards: only successful calls count; each (query, tool) pair counts once; a conversation
contributes at most `max_uses` uses, so one client cannot drag a tool's vector wherever it
likes; memory is bounded (recent finds per conversation, conversations by LRU).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from retrieval.usage import Vector


@dataclass
class _Find:
    vector: Vector
    tools: frozenset[str]
    at: float
    counted: set[str] = field(default_factory=set)


@dataclass
class _Conversation:
    finds: deque[_Find]
    uses: int = 0


class UsageLearner:
    def __init__(
        self,
        *,
        max_uses: int = 20,
        finds_kept: int = 8,
        max_conversations: int = 10_000,
        window_s: float = 3600.0,
    ) -> None:
        self._max_uses = max_uses
        self._finds_kept = finds_kept
        self._max_conversations = max_conversations
        self._window_s = window_s
        self._conversations: OrderedDict[str, _Conversation] = OrderedDict()

    def found(self, conversation: str, vector: Vector, tools: list[str]) -> None:
        """Remember what a find_tools call in this conversation returned."""
        state = self._conversations.get(conversation)
        if state is None:
            state = _Conversation(finds=deque(maxlen=self._finds_kept))
            self._conversations[conversation] = state
            while len(self._conversations) > self._max_conversations:
                self._conversations.popitem(last=False)
        else:
            self._conversations.move_to_end(conversation)
        state.finds.append(_Find(vector=vector, tools=frozenset(tools), at=time.monotonic()))

    def used(self, conversation: str, tool: str) -> Vector | None:
        """A successful call: the query vector to learn from, or None when the call does not
        count (no recent find returned the tool, already counted, or the cap is reached)."""
        state = self._conversations.get(conversation)
        if state is None or state.uses >= self._max_uses:
            return None
        now = time.monotonic()
        for find in reversed(state.finds):  # the most recent find that offered the tool
            if tool in find.tools and now - find.at <= self._window_s:
                if tool in find.counted:
                    return None
                find.counted.add(tool)
                state.uses += 1
                return find.vector
        return None
