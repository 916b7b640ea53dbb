"""The learning queue: batches, a bounded backlog, and no queued use lost on shutdown. The
recorder here is a list (the queue's own logic); the catalog's `record_uses` is exercised end to
end by the usage tests that run a real gateway."""

from __future__ import annotations

import anyio
import numpy as np
import pytest

from gateway.learning_queue import LearningQueue, Use

pytestmark = pytest.mark.anyio


class ListRecorder:
    def __init__(self) -> None:
        self.batches: list[list[Use]] = []
        self.gate = anyio.Event()
        self.fail = False

    async def record_uses(self, uses: list[Use]) -> int:
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("database down")
        self.batches.append(uses)
        return len(uses)


def vec() -> np.ndarray:
    return np.ones(4, dtype=np.float32)


async def test_uses_queued_while_one_batch_records_go_together() -> None:
    recorder = ListRecorder()
    queue = LearningQueue(recorder, capacity=100, batch=50)
    async with anyio.create_task_group() as group:
        group.start_soon(queue.run)
        queue.submit("a", vec())
        with anyio.fail_after(5):
            while queue.pending():  # noqa: ASYNC110 - the runner takes it without an event to wait on
                await anyio.sleep(0.01)
        for name in "bcd":  # arrive while the first batch is still being recorded
            queue.submit(name, vec())
        recorder.gate.set()
        with anyio.fail_after(5):
            while queue.recorded < 4:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
    assert [[name for name, _ in batch] for batch in recorder.batches] == [["a"], ["b", "c", "d"]]


async def test_a_full_queue_drops_and_counts() -> None:
    queue = LearningQueue(ListRecorder(), capacity=2)
    assert [queue.submit(n, vec()) for n in "abc"] == [True, True, False]
    assert queue.dropped == 1


async def test_shutdown_records_what_is_still_queued() -> None:
    recorder = ListRecorder()
    recorder.gate.set()
    queue = LearningQueue(recorder, capacity=100, batch=10)
    for i in range(25):
        queue.submit(f"t{i}", vec())
    with anyio.CancelScope() as scope:
        scope.cancel()  # cancelled before it ever ran: the finally block still drains
        await queue.run()
    assert queue.recorded == 25
    assert sum(len(batch) for batch in recorder.batches) == 25


async def test_a_failing_recorder_is_counted_and_the_queue_goes_on() -> None:
    recorder = ListRecorder()
    recorder.gate.set()
    recorder.fail = True
    queue = LearningQueue(recorder, capacity=10)
    async with anyio.create_task_group() as group:
        group.start_soon(queue.run)
        queue.submit("a", vec())
        with anyio.fail_after(5):
            while queue.failed < 1:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        recorder.fail = False
        queue.submit("b", vec())
        with anyio.fail_after(5):
            while queue.recorded < 1:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()
