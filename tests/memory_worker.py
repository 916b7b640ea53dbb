"""A second gateway-like process for the cross-process memory test.

    python -m tests.memory_worker URL NAMESPACE WORKER CONVERSATIONS ROUNDS

Prints `READY`, waits for a line on stdin (so both workers start together), then for each round
updates every conversation concurrently: turn + 1 and one new tool `<WORKER>-<round>`. Prints
`DONE <conflicts>`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable

import anyio

from gateway.memory import Change, RedisWorkingSetStore, ToolEntry, WorkingSet


def bump(name: str, now: float) -> Callable[[WorkingSet], Change[None]]:
    def apply(working_set: WorkingSet) -> Change[None]:
        turn = working_set.turn + 1
        entry = ToolEntry(added_at=now, added_turn=turn, last_relevance=1.0)
        return Change(
            dataclasses.replace(working_set, turn=turn, tools={**working_set.tools, name: entry}), None
        )

    return apply


async def main(url: str, namespace: str, worker: str, conversations: int, rounds: int) -> None:
    store = RedisWorkingSetStore.from_url(url, namespace=namespace, timeout_s=10.0)
    print("READY", flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)
    try:
        for round_ in range(rounds):
            name = f"{worker}-{round_}"
            async with anyio.create_task_group() as group:
                for index in range(conversations):
                    group.start_soon(store.update, f"conv-{index}", bump(name, time.time()))
    finally:
        await store.aclose()
    print(f"DONE {store.conflicts}", flush=True)


if __name__ == "__main__":
    url, namespace, worker, conversations, rounds = sys.argv[1:6]
    anyio.run(main, url, namespace, worker, int(conversations), int(rounds))
