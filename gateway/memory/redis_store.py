"""Working sets in Redis, shared by gateway replicas.

Layout (values are compact JSON, see `store.encode`):
- `<ns>:ws:<conversation>`: one string per conversation, expiring `ttl_s` after its last update;
- `<ns>:ws-index`: a sorted set of conversation ids scored by `updated_at`, for the admin listing.
  The conversation keys are the truth: index entries whose key has expired are dropped lazily.

Updates are optimistic (WATCH, read, apply `fn`, MULTI/EXEC, retry on conflict). Within one
process updates to a conversation are also queued behind a lock, so conflicts only arise
between processes and the retry budget is spent on real contention.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit, urlunsplit

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, WatchError

from gateway.memory.store import (
    DEFAULT_CAPACITY,
    DEFAULT_TTL_S,
    Change,
    ConflictError,
    ConversationSummary,
    MemoryUnavailableError,
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

# Index entries this long past their conversation's expiry are garbage-collected on update;
# the margin absorbs clock skew between gateway hosts.
_INDEX_SLACK_S = 60.0


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class _KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = anyio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class RedisWorkingSetStore:
    """`WorkingSetStore` on Redis. Every Redis failure surfaces as `MemoryUnavailableError`; the
    client's socket timeouts bound how long a dead or stalled server can hold a request."""

    def __init__(
        self,
        client: Redis,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        capacity: int = DEFAULT_CAPACITY,
        namespace: str = "toolgate",
        max_attempts: int = 32,
        display_url: str = "redis",
    ) -> None:
        if ttl_s <= 0 or capacity < 1 or max_attempts < 1:
            raise ValueError("ttl_s must be positive, capacity and max_attempts at least 1")
        self._client = client
        self._ttl_s = ttl_s
        self._capacity = capacity
        self._prefix = f"{namespace}:ws:"
        self._index = f"{namespace}:ws-index"
        self._max_attempts = max_attempts
        self._where = display_url
        self._locks = _KeyedLocks()
        self.conflicts = 0  # WATCH conflicts retried so far, for metrics and tests

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        capacity: int = DEFAULT_CAPACITY,
        namespace: str = "toolgate",
        max_attempts: int = 32,
        connect_timeout_s: float = 1.0,
        timeout_s: float = 2.0,
        max_connections: int = 64,
    ) -> RedisWorkingSetStore:
        """Build the client (no I/O yet). One retry rides over a restarted server's dead pooled
        connection; redis-py's default of ten with backoff would stall requests for seconds."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=connect_timeout_s + timeout_s,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(
            Redis.from_pool(pool),
            ttl_s=ttl_s,
            capacity=capacity,
            namespace=namespace,
            max_attempts=max_attempts,
            display_url=redact_url(url),
        )

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def ttl_s(self) -> float:
        return self._ttl_s

    async def get(self, conversation: str) -> WorkingSet | None:
        key = self._key(conversation)
        with self._available():
            raw = await self._client.get(key)
        return None if raw is None else decode(raw)

    async def update(self, conversation: str, fn: Callable[[WorkingSet], Change[R]]) -> Change[R]:
        key = self._key(conversation)
        async with self._locks.hold(conversation):
            for attempt in range(self._max_attempts):
                try:
                    with self._available():
                        return await self._try_update(conversation, key, fn)
                except WatchError:
                    self.conflicts += 1
                    await anyio.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise ConflictError(
            f"conversation {conversation!r} changed under {self._max_attempts} attempts to update it"
        )

    async def _try_update(
        self, conversation: str, key: str, fn: Callable[[WorkingSet], Change[R]]
    ) -> Change[R]:
        async with self._client.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            raw = await pipe.get(key)
            current = WorkingSet() if raw is None else decode(raw)
            now = time.time()
            change = checked_change(conversation, fn(current), self._capacity, now)
            pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py 8.1
            pipe.set(key, encode(change.working_set), px=max(1, round(self._ttl_s * 1000)))
            pipe.zadd(self._index, {conversation: now})
            pipe.zremrangebyscore(self._index, "-inf", now - self._ttl_s - _INDEX_SLACK_S)
            await pipe.execute()
        return change

    async def clear(self, conversation: str) -> bool:
        key = self._key(conversation)
        with self._available():
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.zrem(self._index, conversation)
                deleted, _ = await pipe.execute()
        return bool(deleted)

    async def list(self, limit: int = 50, cursor: str | None = None) -> SummaryPage:
        check_limit(limit)
        after = decode_cursor(cursor) if cursor is not None else None
        found: list[tuple[float, ConversationSummary]] = []
        stale: list[str] = []
        offset = 0
        with self._available():
            # Read one row past the page to know whether another page follows.
            while len(found) <= limit:
                batch: list[tuple[bytes, float]] = await self._client.zrange(  # type: ignore[assignment]
                    self._index,
                    after[0] if after else "-inf",
                    "+inf",
                    byscore=True,
                    offset=offset,
                    num=limit + 1,
                    withscores=True,
                )
                offset += len(batch)
                rows = [(float(score), member.decode()) for member, score in batch]
                rows = [row for row in rows if after is None or row > after]
                values = await self._client.mget([self._key(name) for _, name in rows]) if rows else []
                for (score, name), raw in zip(rows, values, strict=True):
                    if raw is None:
                        stale.append(name)
                    else:
                        found.append((score, summarise(name, decode(raw))))
                if len(batch) <= limit:
                    break
            if stale:
                await self._client.zrem(self._index, *stale)
        page = found[:limit]
        more = len(found) > limit
        next_cursor = encode_cursor(page[-1][0], page[-1][1].conversation) if more else None
        return SummaryPage([summary for _, summary in page], next_cursor)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _key(self, conversation: str) -> str:
        return self._prefix + check_conversation(conversation)

    @contextmanager
    def _available(self) -> Iterator[None]:
        """Translate connection trouble into one clear error; WatchError stays a retry signal."""
        try:
            yield
        except WatchError:
            raise
        except (RedisError, OSError) as exc:
            raise MemoryUnavailableError(
                f"conversation memory is unavailable ({self._where}): {type(exc).__name__}: {exc}"
            ) from None
