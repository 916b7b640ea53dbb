"""Live usage learning, one contract for both learners: in process, and Redis (shared by
replicas, so a find on one gateway and the call on another still count)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import anyio
import numpy as np
import pytest

from gateway.learning import Learner, LearnerUnavailableError, LocalUsageLearner, RedisUsageLearner
from tests.support import free_port

pytestmark = pytest.mark.anyio
LearnerFactory = Callable[..., Learner]


def unit(*values: float) -> np.ndarray:
    vector = np.zeros(8, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


@pytest.fixture(params=["local", "redis"])
async def make_learner(request: pytest.FixtureRequest) -> AsyncIterator[LearnerFactory]:
    made: list[Learner] = []
    namespace = f"toolgate-test-{uuid.uuid4().hex[:8]}"

    def make(**options: int | float) -> Learner:
        learner: Learner
        if request.param == "local":
            learner = LocalUsageLearner(**options)  # type: ignore[arg-type]
        else:
            url = request.getfixturevalue("redis_url")
            learner = RedisUsageLearner.from_url(url, namespace=namespace, **options)
        made.append(learner)
        return learner

    yield make
    for learner in made:
        await learner.aclose()


async def test_only_offered_tools_count_once_per_find_up_to_the_cap(make_learner: LearnerFactory) -> None:
    learner = make_learner(max_uses=2)
    await learner.found("c1", unit(1, 0), ["t1", "t2", "t3"])
    assert await learner.used("c1", "t9") is None  # never offered
    assert await learner.used("c2", "t1") is None  # another conversation
    got = await learner.used("c1", "t1")
    assert got is not None
    np.testing.assert_allclose(got, unit(1, 0), rtol=1e-6)
    assert await learner.used("c1", "t1") is None  # counted once per find
    assert await learner.used("c1", "t2") is not None
    assert await learner.used("c1", "t3") is None  # cap reached


async def test_the_most_recent_find_that_offered_the_tool_gives_the_query(
    make_learner: LearnerFactory,
) -> None:
    learner = make_learner(max_uses=10)
    await learner.found("c", unit(1, 0), ["a", "b"])
    await learner.found("c", unit(0, 1), ["b"])
    np.testing.assert_allclose(await learner.used("c", "b"), unit(0, 1), rtol=1e-6)  # type: ignore[arg-type]
    np.testing.assert_allclose(await learner.used("c", "a"), unit(1, 0), rtol=1e-6)  # type: ignore[arg-type]
    # the newest find that offered b decides, and it has counted: an older find does not count b again
    assert await learner.used("c", "b") is None


async def test_only_recent_finds_are_kept(make_learner: LearnerFactory) -> None:
    learner = make_learner(max_uses=100, finds_kept=2)
    await learner.found("c", unit(1), ["old"])
    await learner.found("c", unit(1), ["x"])
    await learner.found("c", unit(1), ["y"])
    assert await learner.used("c", "old") is None
    assert await learner.used("c", "y") is not None


async def test_concurrent_calls_never_pass_the_cap(make_learner: LearnerFactory) -> None:
    learner = make_learner(max_uses=5)
    tools = [f"t{i}" for i in range(40)]
    await learner.found("busy", unit(1, 1), tools)
    counted: list[str] = []

    async def call(tool: str) -> None:
        if await learner.used("busy", tool) is not None:
            counted.append(tool)

    async with anyio.create_task_group() as group:
        for tool in tools:
            group.start_soon(call, tool)
    assert len(counted) == 5


async def test_two_redis_learners_share_one_record(redis_url: str) -> None:
    """Replicas: the find lands on one gateway, the call on the other."""
    namespace = f"toolgate-test-{uuid.uuid4().hex[:8]}"
    one = RedisUsageLearner.from_url(redis_url, namespace=namespace, max_uses=3)
    two = RedisUsageLearner.from_url(redis_url, namespace=namespace, max_uses=3)
    try:
        await one.found("shared", unit(0, 0, 1), ["tool"])
        assert await two.used("shared", "tool") is not None
        assert await one.used("shared", "tool") is None  # the pair already counted, on the other
    finally:
        await one.aclose()
        await two.aclose()


async def test_redis_down_is_a_clear_error() -> None:
    learner = RedisUsageLearner.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(LearnerUnavailableError, match="unavailable"):
            await learner.found("c", unit(1), ["t"])
        with pytest.raises(LearnerUnavailableError):
            await learner.used("c", "t")
    finally:
        await learner.aclose()
