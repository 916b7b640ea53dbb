"""Live usage learning: a successful `call_tool` after a `find_tools` that returned that tool,
in the same conversation, counts that query as a use of the tool (Tool2Vec, online).

Guards: only successful calls count; each (find, tool) pair counts once; a conversation
contributes at most `max_uses` uses, so one client cannot drag a tool's vector wherever it
likes; memory is bounded (recent finds per conversation; conversations by LRU in process, by
expiry in Redis).

Two backends with one contract: in process (one gateway), and Redis (replicas: the find may
land on one replica and the call on another).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from retrieval.usage import Vector


class Learner(Protocol):
    """Remembers recent finds per conversation and says which calls count as uses."""

    async def found(self, conversation: str, vector: Vector, tools: list[str]) -> None:
        """Remember what a find_tools call in this conversation returned."""

    async def used(self, conversation: str, tool: str) -> Vector | None:
        """A successful call: the query vector to learn from, or None when the call does not
        count (no recent find returned the tool, already counted, or the cap is reached)."""

    async def aclose(self) -> None: ...


class LearnerUnavailableError(Exception):
    """The shared store cannot be reached; learning is best effort, so callers log and go on."""


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


class LocalUsageLearner:
    """The learner for one gateway process."""

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

    async def found(self, conversation: str, vector: Vector, tools: list[str]) -> None:
        state = self._conversations.get(conversation)
        if state is None:
            state = _Conversation(finds=deque(maxlen=self._finds_kept))
            self._conversations[conversation] = state
            while len(self._conversations) > self._max_conversations:
                self._conversations.popitem(last=False)
        else:
            self._conversations.move_to_end(conversation)
        state.finds.append(_Find(vector=vector, tools=frozenset(tools), at=time.monotonic()))

    async def used(self, conversation: str, tool: str) -> Vector | None:
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

    async def aclose(self) -> None:
        return None


# KEYS: finds list, counted set, uses counter. ARGV: tool, now (s), window (s), max uses, ttl (s).
# Newest find first; the first one within the window that offered the tool decides. Atomic, so
# two replicas racing on one call cannot both count it, and the cap holds under concurrency.
_USED = """
local finds = redis.call('LRANGE', KEYS[1], 0, -1)
local now = tonumber(ARGV[2])
for _, raw in ipairs(finds) do
  local find = cjson.decode(raw)
  if now - find.at <= tonumber(ARGV[3]) then
    for _, name in ipairs(find.tools) do
      if name == ARGV[1] then
        if redis.call('SADD', KEYS[2], find.id .. '|' .. name) == 0 then return false end
        redis.call('EXPIRE', KEYS[2], ARGV[5])
        local uses = redis.call('INCR', KEYS[3])
        redis.call('EXPIRE', KEYS[3], ARGV[5])
        if uses > tonumber(ARGV[4]) then return false end
        return find.vector
      end
    end
  end
end
return false
"""


class RedisUsageLearner:
    """The learner shared by replicas through Redis. Keys expire `window_s` after the last
    find of a conversation; wall-clock times, so replicas' clocks should roughly agree."""

    def __init__(
        self,
        client: Redis,
        *,
        max_uses: int = 20,
        finds_kept: int = 8,
        window_s: float = 3600.0,
        namespace: str = "toolgate",
    ) -> None:
        self._client = client
        self._max_uses = max_uses
        self._finds_kept = finds_kept
        self._window_s = window_s
        self._prefix = f"{namespace}:learn:"
        self._used = client.register_script(_USED)

    @classmethod
    def from_url(cls, url: str, *, namespace: str = "toolgate", **options: int | float) -> RedisUsageLearner:
        """Build the client (no I/O yet); short timeouts, since learning must never stall a call."""
        client = Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=2.0)
        return cls(client, namespace=namespace, **options)  # type: ignore[arg-type]

    def _keys(self, conversation: str) -> list[str]:
        base = self._prefix + conversation
        return [f"{base}:finds", f"{base}:counted", f"{base}:uses"]

    async def found(self, conversation: str, vector: Vector, tools: list[str]) -> None:
        entry = json.dumps(
            {
                "id": uuid.uuid4().hex[:12],
                "at": time.time(),
                "tools": tools,
                "vector": base64.b64encode(np.asarray(vector, dtype=np.float32).tobytes()).decode(),
            }
        )
        finds, _, _ = self._keys(conversation)
        ttl = max(1, int(self._window_s))
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.lpush(finds, entry)
                pipe.ltrim(finds, 0, self._finds_kept - 1)
                pipe.expire(finds, ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise LearnerUnavailableError(f"usage learning store unavailable: {exc}") from None

    async def used(self, conversation: str, tool: str) -> Vector | None:
        args: list[str | float] = [
            tool,
            time.time(),
            self._window_s,
            self._max_uses,
            max(1, int(self._window_s)),
        ]
        try:
            found = await self._used(keys=self._keys(conversation), args=args)
        except (RedisError, OSError) as exc:
            raise LearnerUnavailableError(f"usage learning store unavailable: {exc}") from None
        if not found:
            return None
        return np.frombuffer(base64.b64decode(found), dtype=np.float32).copy()

    async def aclose(self) -> None:
        await self._client.aclose()


def open_learner(redis_url: str | None, *, max_uses: int) -> Learner:
    """Redis when a URL is given (replicas share one record of finds), process memory otherwise."""
    if redis_url:
        return RedisUsageLearner.from_url(redis_url, max_uses=max_uses)
    return LocalUsageLearner(max_uses=max_uses)
