"""Per-key rate limit: both bucket stores against one contract (the Redis one on the machine's
real Redis), the ASGI middleware, and the real app."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from mcp import Client
from mcp.shared.exceptions import MCPError
from starlette.types import Receive, Scope, Send

from gateway.app import create_app
from gateway.principal import Principal, attach
from gateway.ratelimit import (
    RATE_LIMITED,
    LimiterSlot,
    LocalRateLimiter,
    RateLimiter,
    RateLimitMiddleware,
    RedisRateLimiter,
)
from gateway.settings import Settings
from tests.memory_fixtures import drop_namespace
from tests.running import RunningGateway
from tests.support import free_port

pytestmark = pytest.mark.anyio

LimiterFactory = Callable[..., RateLimiter]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["local", "redis"])
async def make_limiter(
    request: pytest.FixtureRequest, namespace: str, clock: FakeClock
) -> AsyncIterator[LimiterFactory]:
    """Builds limiters of one kind on a shared clock; Redis ones share one private namespace,
    like replicas of one deployment."""
    made: list[RateLimiter] = []
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None

    def make(per_minute: int, burst: int | None = None) -> RateLimiter:
        limiter: RateLimiter
        if url is None:
            limiter = LocalRateLimiter(per_minute, burst, clock=clock)
        else:
            limiter = RedisRateLimiter.from_url(url, per_minute, burst, namespace=namespace, clock=clock)
        made.append(limiter)
        return limiter

    try:
        yield make
    finally:
        for limiter in made:
            await limiter.aclose()
        if url is not None:
            drop_namespace(url, namespace)


async def test_bucket_allows_a_burst_then_refills(make_limiter: LimiterFactory, clock: FakeClock) -> None:
    limiter = make_limiter(60, burst=3)  # one token a second
    taken = [await limiter.take("key:1") for _ in range(3)]
    assert [d.allowed for d in taken] == [True, True, True]
    assert [d.remaining for d in taken] == [2, 1, 0]
    refused = await limiter.take("key:1")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(1.0, abs=0.01)
    assert (await limiter.take("key:2")).allowed  # every key has its own bucket

    clock.now += 0.5
    refused = await limiter.take("key:1")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.5, abs=0.01)
    clock.now += 0.5
    assert (await limiter.take("key:1")).allowed
    assert not (await limiter.take("key:1")).allowed

    clock.now += 600  # idle for long: full again, but never more than the burst
    assert [(await limiter.take("key:1")).allowed for _ in range(4)] == [True, True, True, False]


async def test_default_burst_is_a_minutes_worth(make_limiter: LimiterFactory) -> None:
    limiter = make_limiter(5)
    assert [(await limiter.take("key:1")).allowed for _ in range(6)] == [True] * 5 + [False]


async def test_replicas_share_one_budget(redis_url: str, namespace: str, clock: FakeClock) -> None:
    replicas = [
        RedisRateLimiter.from_url(redis_url, 60, 4, namespace=namespace, clock=clock) for _ in range(2)
    ]
    try:
        verdicts = [(await replicas[i % 2].take("key:7")).allowed for i in range(6)]
        assert verdicts == [True, True, True, True, False, False]
        clock.now += 1
        assert (await replicas[1].take("key:7")).allowed
        assert not (await replicas[0].take("key:7")).allowed
        ttl = redis.Redis.from_url(redis_url).pttl(f"{namespace}:rl:key:7")
        assert 0 < ttl <= 5_000  # gone once the bucket would be full again (4 s) plus a second
    finally:
        for limiter in replicas:
            await limiter.aclose()
        drop_namespace(redis_url, namespace)


async def test_unreachable_redis_lets_requests_through_and_warns_once_a_minute(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RedisRateLimiter.from_url(f"redis://127.0.0.1:{free_port()}/0", 1, 1, clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="gateway.ratelimit"):
            first = await limiter.take("key:1")
            clock.now += 2  # past the short pause after a failure: Redis is asked again
            second = await limiter.take("key:1")
            clock.now += 60
            third = await limiter.take("key:1")
        assert [d.allowed for d in (first, second, third)] == [True, True, True]
        assert [d.degraded for d in (first, second, third)] == [True, True, True]
        warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 2
    finally:
        await limiter.aclose()


# -- the middleware ---------------------------------------------------------------------------------


def principal_wrapper(app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> Any:
    """Stands in for auth in front of `app`: attaches the principal named in `x-test-principal`."""

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-test-principal":
                    attach(scope, Principal(id=value.decode(), role="admin"))
        await app(scope, receive, send)

    return wrapped


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for chunk in (b"stream", b"ed"):  # a streamed body passes through untouched
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def test_middleware_refuses_with_429_and_retry_after(clock: FakeClock) -> None:
    slot = LimiterSlot(LocalRateLimiter(60, 2, clock=clock))
    app = principal_wrapper(RateLimitMiddleware(ok_app, slot, per_minute=60))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
        alice = {"x-test-principal": "key:alice"}
        assert [(await http.get("/mcp", headers=alice)).status_code for _ in range(2)] == [200, 200]
        refused = await http.get("/admin/servers", headers=alice)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.json() == {
            "detail": "rate limit of 60 requests per minute exceeded; retry in 1s",
            "retry_after_s": 1,
        }
        on_mcp = (await http.post("/mcp", headers=alice)).json()  # a JSON-RPC error for MCP clients
        assert on_mcp["error"] == {"code": RATE_LIMITED, "message": on_mcp["detail"]}
        assert on_mcp["id"] is None

        assert (await http.get("/mcp", headers={"x-test-principal": "key:bob"})).text == "streamed"
        for path in ("/healthz", "/readyz"):
            assert (await http.get(path, headers=alice)).status_code == 200
        assert (await http.get("/mcp")).status_code == 200  # no principal: nothing to key on
        clock.now += 1
        assert (await http.get("/mcp", headers=alice)).status_code == 200


async def test_middleware_without_a_running_limiter_passes_everything() -> None:
    app = principal_wrapper(RateLimitMiddleware(ok_app, LimiterSlot(), per_minute=1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        codes = [
            (await http.get("/mcp", headers={"x-test-principal": "key:1"})).status_code for _ in range(3)
        ]
    assert codes == [200, 200, 200]


# -- the real app -------------------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["local", "redis"])
async def test_the_app_limits_each_principal(
    tmp_path: Path, request: pytest.FixtureRequest, store: str
) -> None:
    """The real app and its real auth; Redis is a private server, as the app keys its default
    namespace on the bootstrap admin key."""
    redis_url = request.getfixturevalue("private_redis").url if store == "redis" else None
    admin_key = "tg_test_admin_" + uuid.uuid4().hex
    settings = Settings(
        data_dir=tmp_path / "data",
        sync_interval_s=0,
        admin_key=admin_key,
        redis_url=redis_url,
        rate_limit_per_minute=2,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
            headers = {"Authorization": f"Bearer {admin_key}"}
            codes = [(await http.get("/admin/upstreams", headers=headers)).status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            refused = await http.get("/admin/servers", headers=headers)
            assert refused.status_code == 429
            assert 1 <= int(refused.headers["retry-after"]) <= 30  # one token every 30 s
            assert refused.json()["retry_after_s"] == int(refused.headers["retry-after"])
            assert (await http.get("/admin/servers")).status_code == 401  # auth first: no key, no bucket
            assert (await http.get("/healthz", headers=headers)).status_code == 200
            assert (await http.get("/readyz", headers=headers)).status_code == 200
    if redis_url is not None:
        assert redis.Redis.from_url(redis_url).keys("toolgate:rl:*")  # the budget lived in Redis


async def _first_refusal(client: Client, tries: int = 5) -> str:
    for _ in range(tries):
        try:
            await client.list_tools()
        except MCPError as exc:
            return exc.message
    raise AssertionError(f"{tries} listings were all served")


@pytest.mark.e2e
async def test_a_running_gateway_limits_each_key(tmp_path: Path) -> None:
    """`toolgate serve` with TOOLGATE_RATE_LIMIT_PER_MINUTE, keyed on the principal real auth
    attaches; an MCP client reads the refusal as a JSON-RPC error."""
    gateway = RunningGateway(tmp_path / "gateway", {"TOOLGATE_RATE_LIMIT_PER_MINUTE": "3"})
    try:
        created = gateway.http.post("/admin/keys", json={"name": "agent", "role": "client"})
        assert created.status_code == 201, created.text
        codes = [gateway.http.get("/admin/upstreams").status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        refused = gateway.http.get("/admin/servers")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 20  # one token every 20 s
        assert refused.json()["retry_after_s"] == int(refused.headers["retry-after"])
        assert gateway.http.get("/healthz").status_code == 200

        async with gateway.client(created.json()["key"]) as client:  # its own budget of 3
            refusal = await _first_refusal(client)
        assert refusal.startswith("rate limit of 3 requests per minute exceeded; retry in")
    finally:
        assert not gateway.stop()
