"""Per-key rate limit: a token bucket per principal (API key or token subject).

A bucket holds up to `burst` requests (default: a minute's worth) and refills at
`per_minute / 60` a second; a request takes one. With Redis configured every replica draws on
the same buckets (one atomic Lua script per request; keys expire once a bucket would be full
again); otherwise the buckets live in this process. Health probes and requests without a
principal are never limited. A refused request gets 429 with `Retry-After`.

Redis being down must not take the gateway down with it: requests are let through (fail open)
and a warning is logged at most once a minute.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import FastAPI
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from .memory.redis_store import redact_url
from .principal import principal_of
from .settings import Settings

logger = logging.getLogger(__name__)

EXEMPT_PATHS = frozenset({"/healthz", "/readyz"})
# JSON-RPC code of a refused /mcp request: implementation-defined server-error range, clear of
# the SDK's -32000 (connection closed) and -32001 (timeout), which clients act upon.
RATE_LIMITED = -32029
_WARN_EVERY_S = 60.0
_REDIS_RETRY_S = 1.0  # after a Redis failure, let requests through without asking for this long


@dataclass(frozen=True, slots=True)
class Decision:
    """One request's verdict. `degraded`: the shared store was unreachable, so it was let through."""

    allowed: bool
    remaining: int
    retry_after_s: float = 0.0
    degraded: bool = False


class RateLimiter(Protocol):
    """Takes one request from a key's bucket."""

    async def take(self, key: str) -> Decision: ...

    async def aclose(self) -> None: ...


def _capacity(per_minute: int, burst: int | None) -> int:
    if per_minute < 1 or (burst is not None and burst < 1):
        raise ValueError("per_minute and burst must be at least 1")
    return burst if burst is not None else per_minute


class LocalRateLimiter:
    """Buckets in this process (one gateway replica)."""

    def __init__(
        self, per_minute: int, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = float(_capacity(per_minute, burst))
        self._per_s = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._sweep_at = 1024

    async def take(self, key: str) -> Decision:
        now = self._clock()
        tokens, at = self._buckets.get(key, (self._capacity, now))
        tokens = min(self._capacity, tokens + max(0.0, now - at) * self._per_s)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            self._sweep(now)
            return Decision(True, math.floor(tokens - 1))
        self._buckets[key] = (tokens, now)
        return Decision(False, 0, (1 - tokens) / self._per_s)

    def _sweep(self, now: float) -> None:
        # A full bucket is the same as none: forget those, so memory follows active keys only.
        if len(self._buckets) < self._sweep_at:
            return
        full_after = self._capacity / self._per_s
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < full_after}
        self._sweep_at = max(1024, 2 * len(self._buckets))

    async def aclose(self) -> None:
        self._buckets.clear()


# KEYS[1] bucket; ARGV: capacity, tokens per ms, now (ms). Returns {allowed, wait_ms, remaining}.
# The caller's clock is used so that tests can drive it; replicas' clocks agree to NTP accuracy,
# and a clock that runs behind never adds tokens.
_TAKE = """
local capacity = tonumber(ARGV[1])
local per_ms = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local bucket = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(bucket[1])
local at = tonumber(bucket[2])
if tokens == nil or at == nil then
  tokens = capacity
  at = now
end
if now > at then
  tokens = math.min(capacity, tokens + (now - at) * per_ms)
  at = now
end
local allowed = 0
local wait_ms = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait_ms = math.ceil((1 - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / per_ms) + 1000)
return {allowed, wait_ms, math.floor(tokens)}
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every replica."""

    def __init__(
        self,
        client: Redis,
        per_minute: int,
        burst: int | None = None,
        *,
        namespace: str = "toolgate",
        clock: Callable[[], float] = time.time,
        display_url: str = "redis",
    ) -> None:
        self._client = client
        self._capacity = _capacity(per_minute, burst)
        self._per_ms = per_minute / 60_000.0
        self._prefix = f"{namespace}:rl:"
        self._clock = clock
        self._where = display_url
        self._script = client.register_script(_TAKE)
        self._skip_until = -math.inf
        self._warned_at = -math.inf

    @classmethod
    def from_url(
        cls,
        url: str,
        per_minute: int,
        burst: int | None = None,
        *,
        namespace: str = "toolgate",
        clock: Callable[[], float] = time.time,
        timeout_s: float = 0.5,
    ) -> RedisRateLimiter:
        """Build the client (no I/O yet). Short timeouts: every request waits on this check."""
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=64,
            timeout=2 * timeout_s,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(
            Redis.from_pool(pool),
            per_minute,
            burst,
            namespace=namespace,
            clock=clock,
            display_url=redact_url(url),
        )

    async def take(self, key: str) -> Decision:
        now = self._clock()
        if now < self._skip_until:
            return Decision(True, self._capacity, degraded=True)
        args: list[float | int] = [self._capacity, self._per_ms, now * 1000.0]
        try:
            allowed, wait_ms, remaining = await self._script(keys=[self._prefix + key], args=args)
        except (RedisError, OSError) as exc:
            self._skip_until = now + _REDIS_RETRY_S
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                logger.warning(
                    "rate limit store %s unreachable, letting requests through: %s", self._where, exc
                )
            return Decision(True, self._capacity, degraded=True)
        return Decision(bool(allowed), int(remaining), int(wait_ms) / 1000.0)

    async def aclose(self) -> None:
        await self._client.aclose()


def open_rate_limiter(settings: Settings) -> RateLimiter:
    """The limiter the settings ask for (rate_limit_per_minute must be positive)."""
    per_minute, burst = settings.rate_limit_per_minute, settings.rate_limit_burst
    if settings.redis_url:
        return RedisRateLimiter.from_url(settings.redis_url, per_minute, burst)
    return LocalRateLimiter(per_minute, burst)


@dataclass
class LimiterSlot:
    """Where the middleware finds the limiter the lifespan built (None: not running, no limit)."""

    limiter: RateLimiter | None = None


class RateLimitMiddleware:
    """Pure ASGI, so streamed /mcp responses pass through untouched."""

    def __init__(self, app: ASGIApp, slot: LimiterSlot, per_minute: int) -> None:
        self.app = app
        self.slot = slot
        self.per_minute = per_minute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limiter = self.slot.limiter
        if limiter is None or scope["type"] != "http" or scope["path"] in EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        principal = principal_of(scope)
        if principal is None:  # auth let it through without an identity: nothing to key on
            await self.app(scope, receive, send)
            return
        decision = await limiter.take(principal.id)
        if decision.allowed:
            await self.app(scope, receive, send)
            return
        retry = max(1, math.ceil(decision.retry_after_s))
        detail = f"rate limit of {self.per_minute} requests per minute exceeded; retry in {retry}s"
        body: dict[str, Any] = {"detail": detail, "retry_after_s": retry}
        if scope["path"].startswith("/mcp"):
            # MCP clients surface a JSON-RPC error body; a bare status reads as a broken server.
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": RATE_LIMITED, "message": detail}, **body}
        await JSONResponse(body, status_code=429, headers={"Retry-After": str(retry)})(scope, receive, send)


def _lifespan_hook(
    settings: Settings, slot: LimiterSlot
) -> Callable[[FastAPI, Any], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def hook(_app: FastAPI, _service: Any) -> AsyncIterator[None]:
        limiter = open_rate_limiter(settings)
        slot.limiter = limiter
        try:
            yield
        finally:
            slot.limiter = None
            await limiter.aclose()

    return hook


def install_rate_limit(app: FastAPI, settings: Settings) -> None:
    """Limit requests per API key or token when `rate_limit_per_minute` is set. Install it
    before auth (so it runs after auth has attached the principal)."""
    if settings.rate_limit_per_minute <= 0:
        return
    slot = LimiterSlot()
    app.add_middleware(RateLimitMiddleware, slot=slot, per_minute=settings.rate_limit_per_minute)
    app.state.lifespan_hooks.append(_lifespan_hook(settings, slot))
