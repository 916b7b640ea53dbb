"""Conversation working-set stores: one suite for the in-process and the Redis implementation,
plus Redis-only cases (key layout, cross-client and cross-process atomicity, outages)."""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from collections.abc import Callable

import anyio
import pytest
import redis

from gateway.memory import (
    HISTORY_LIMIT,
    CapacityError,
    Change,
    ConflictError,
    InvalidConversationError,
    InvalidCursorError,
    LocalWorkingSetStore,
    MemoryUnavailableError,
    RedisWorkingSetStore,
    ToolEntry,
    TurnRecord,
    WorkingSet,
    WorkingSetStore,
    with_record,
)
from gateway.memory.store import HISTORY_QUERY_CHARS, decode, encode
from tests.memory_fixtures import PrivateRedis, StoreFactory
from tests.support import PYTHON, ROOT, free_port

pytestmark = pytest.mark.anyio


def entry(turn: int = 1, relevance: float = 0.5, at: float = 1000.0) -> ToolEntry:
    return ToolEntry(added_at=at, added_turn=turn, last_relevance=relevance)


def add_tools(*names: str) -> Callable[[WorkingSet], Change[int]]:
    """An update that adds tools and bumps the turn; its result is the new size."""

    def apply(working_set: WorkingSet) -> Change[int]:
        turn = working_set.turn + 1
        tools = {**working_set.tools, **{name: entry(turn) for name in names}}
        return Change(dataclasses.replace(working_set, tools=tools, turn=turn), len(tools))

    return apply


async def gone(store: WorkingSetStore, conversation: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Wait (bounded) until the conversation has expired."""
    with anyio.fail_after(timeout):
        while await store.get(conversation) is not None:  # noqa: ASYNC110 - expiry has no event
            await anyio.sleep(0.05)


# --- the shared suite -------------------------------------------------------------------------


async def test_missing_conversation_reads_as_none(make_store: StoreFactory) -> None:
    store = make_store()
    assert await store.get("nobody") is None
    assert await store.clear("nobody") is False


async def test_update_then_get_round_trips_every_field(make_store: StoreFactory) -> None:
    store = make_store()
    full = ToolEntry(
        added_at=1700000000.125,
        added_turn=2,
        last_relevance=0.8125,
        last_returned_at=1700000001.5,
        last_returned_turn=3,
        last_called_at=1700000002.75,
        last_called_turn=3,
    )
    before = time.time()

    def apply(working_set: WorkingSet) -> Change[str]:
        assert working_set == WorkingSet()  # a new conversation starts empty
        tools = {"srv__a": full, "srv__b": entry(1)}
        return Change(WorkingSet(tools=tools, turn=3, mode="workflow"), "ok")

    change = await store.update("c1", apply)
    assert change.result == "ok"
    assert before <= change.working_set.updated_at <= time.time()
    stored = await store.get("c1")
    assert stored == change.working_set
    assert stored is not None
    assert stored.tools["srv__a"] == full
    assert (stored.turn, stored.mode, len(stored)) == (3, "workflow", 2)


async def test_turn_history_round_trips_and_stays_bounded(make_store: StoreFactory) -> None:
    store = make_store()
    first = TurnRecord(
        turn=1,
        at=1700000000.5,
        kind="find",
        query="ünïcode query " + "x" * 400,
        added=("srv__a", "srv__b"),
        removed=("srv__old",),
        reasons=("idle",),
    )

    def record(working_set: WorkingSet) -> Change[None]:
        turn = working_set.turn + 1
        entry_ = TurnRecord(
            turn=turn, at=1700000000.0 + turn, kind="forget", removed=("x",), reasons=("forgotten",)
        )
        return Change(with_record(dataclasses.replace(working_set, turn=turn), entry_), None)

    change = await store.update("c", lambda ws: Change(with_record(ws, first), None))
    stored = await store.get("c")
    assert stored == change.working_set
    assert stored is not None
    (kept,) = stored.history
    assert len(kept.query) == HISTORY_QUERY_CHARS
    assert kept.query.startswith("ünïcode query x")
    assert kept.query.endswith("…")
    assert (kept.kind, kept.added, kept.removed, kept.reasons) == (
        "find",
        ("srv__a", "srv__b"),
        ("srv__old",),
        ("idle",),
    )
    for _ in range(HISTORY_LIMIT + 5):
        await store.update("c", record)
    stored = await store.get("c")
    assert stored is not None
    assert len(stored.history) == HISTORY_LIMIT  # the oldest records are dropped
    assert [r.turn for r in stored.history] == list(range(6, HISTORY_LIMIT + 6))
    # The store enforces the bound too, whatever an update function hands it.
    many = tuple(TurnRecord(turn=i, at=0.0, kind="find") for i in range(HISTORY_LIMIT * 2))
    await store.update("d", lambda ws: Change(dataclasses.replace(ws, history=many), None))
    stored = await store.get("d")
    assert stored is not None
    assert stored.history == many[-HISTORY_LIMIT:]


async def test_working_sets_stored_before_the_history_still_read(make_store: StoreFactory) -> None:
    """A document written by a gateway without turn history (no "h" key) reads as an empty
    history, and an update keeps its tools."""
    old = {
        "v": 1,
        "turn": 4,
        "mode": None,
        "at": 1700000000.0,
        "tools": {"srv__a": [1.0, 1, 0.5, None, None, None, None]},
    }
    raw = json.dumps(old).encode()
    decoded = decode(raw)
    assert (decoded.turn, list(decoded.tools), decoded.history) == (4, ["srv__a"], ())
    assert b'"h"' not in encode(decoded)  # an empty history adds nothing to the document
    store = make_store()

    def seed(working_set: WorkingSet) -> Change[None]:
        return Change(decoded, None)

    await store.update("legacy", seed)
    stored = await store.get("legacy")
    assert stored is not None
    assert (stored.turn, stored.history) == (4, ())


async def test_update_sees_the_previous_state(make_store: StoreFactory) -> None:
    store = make_store()
    assert (await store.update("c", add_tools("a"))).result == 1
    assert (await store.update("c", add_tools("b", "a"))).result == 2
    stored = await store.get("c")
    assert stored is not None
    assert sorted(stored.tools) == ["a", "b"]
    assert stored.turn == 2


async def test_a_failing_update_writes_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    await store.update("c", add_tools("a"))

    def broken(working_set: WorkingSet) -> Change[None]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await store.update("c", broken)
    with pytest.raises(ValueError, match="mode"):
        await store.update("c", lambda ws: Change(dataclasses.replace(ws, mode="chaos"), None))  # type: ignore[arg-type]
    stored = await store.get("c")
    assert stored is not None
    assert (list(stored.tools), stored.turn, stored.mode) == (["a"], 1, None)


async def test_capacity_is_refused_and_nothing_written(make_store: StoreFactory) -> None:
    store = make_store(capacity=3)
    await store.update("c", add_tools("a", "b"))
    with pytest.raises(CapacityError) as caught:
        await store.update("c", add_tools("x", "y"))
    assert (caught.value.size, caught.value.capacity) == (4, 3)
    assert "capacity of 3" in str(caught.value)
    stored = await store.get("c")
    assert stored is not None
    assert sorted(stored.tools) == ["a", "b"]
    assert (await store.update("c", add_tools("z"))).result == 3


async def test_conversation_ids_are_validated(make_store: StoreFactory) -> None:
    store = make_store()
    odd = "ünï cödé */{tag}?[x] \\ 'quote\" ; DEL *"
    await store.update(odd, add_tools("a"))
    await store.update("x" * 128, add_tools("a"))
    assert await store.get(odd) is not None
    assert await store.get("x" * 128) is not None
    for bad in ("", "x" * 129, "line\nbreak", "nul\x00"):
        with pytest.raises(InvalidConversationError):
            await store.update(bad, add_tools("a"))
        with pytest.raises(InvalidConversationError):
            await store.get(bad)


async def test_concurrent_updates_lose_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    conversations, updates = 200, 5

    async def bump(conversation: str) -> None:
        await store.update(conversation, lambda ws: Change(dataclasses.replace(ws, turn=ws.turn + 1), None))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for index in range(conversations):
                for _ in range(updates):
                    group.start_soon(bump, f"conv-{index}")
    for index in range(conversations):
        stored = await store.get(f"conv-{index}")
        assert stored is not None
        assert stored.turn == updates


async def test_capacity_never_exceeded_under_concurrency(make_store: StoreFactory) -> None:
    capacity, conversations, updates = 8, 200, 10
    store = make_store(capacity=capacity)
    refused: list[str] = []
    seen_sizes: list[int] = []

    def grow(working_set: WorkingSet) -> Change[int]:
        seen_sizes.append(len(working_set))
        return add_tools(f"tool-{working_set.turn}")(working_set)

    async def add(conversation: str) -> None:
        try:
            await store.update(conversation, grow)
        except CapacityError:
            refused.append(conversation)

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for index in range(conversations):
                for _ in range(updates):
                    group.start_soon(add, f"conv-{index}")
    assert max(seen_sizes) <= capacity
    assert len(refused) == conversations * (updates - capacity)
    for index in range(conversations):
        stored = await store.get(f"conv-{index}")
        assert stored is not None
        assert (len(stored), stored.turn) == (capacity, capacity)  # every accepted update counted


async def test_idle_conversations_expire(make_store: StoreFactory) -> None:
    store = make_store(ttl_s=0.4)
    await store.update("short", add_tools("a"))
    assert await store.get("short") is not None
    await gone(store, "short")
    assert (await store.list()).items == []
    # An expired conversation starts again from nothing.
    assert (await store.update("short", add_tools("b"))).working_set.turn == 1


async def test_each_update_restarts_the_idle_clock(make_store: StoreFactory) -> None:
    ttl = 1.5
    store = make_store(ttl_s=ttl)
    await store.update("kept", add_tools("a"))
    await store.update("dropped", add_tools("a"))
    for _ in range(3):  # 3 x 0.6 s: well past one TTL in all, but never idle for one
        await anyio.sleep(ttl * 0.4)
        await store.update("kept", add_tools("a"))
    await gone(store, "dropped", timeout=ttl * 4)
    stored = await store.get("kept")
    assert stored is not None
    assert stored.turn == 4


async def test_clear(make_store: StoreFactory) -> None:
    store = make_store()
    await store.update("a", add_tools("x"))
    await store.update("b", add_tools("x"))
    assert await store.clear("a") is True
    assert await store.clear("a") is False
    assert await store.get("a") is None
    assert await store.get("b") is not None
    assert [item.conversation for item in (await store.list()).items] == ["b"]


async def test_list_pages_through_every_conversation_once(make_store: StoreFactory) -> None:
    store = make_store()
    names = [f"conv-{index:02d}" for index in range(23)]
    for name in names:
        await store.update(name, add_tools("a", "b"))
    await store.update(names[0], lambda ws: Change(dataclasses.replace(ws, mode="hybrid"), None))
    pages, cursor = [], None
    while True:
        page = await store.list(limit=5, cursor=cursor)
        pages.append(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [len(items) for items in pages] == [5, 5, 5, 5, 3]
    listed = [item.conversation for items in pages for item in items]
    # Least recently updated first: conv-00 was touched last.
    assert listed == [*names[1:], names[0]]
    last = pages[-1][-1]
    assert (last.tools, last.turn, last.mode) == (2, 1, "hybrid")
    assert [item.conversation for item in (await store.list(limit=1000)).items] == listed
    with pytest.raises(InvalidCursorError):
        await store.list(cursor="not-a-cursor")
    with pytest.raises(ValueError, match="limit"):
        await store.list(limit=0)


# --- implementation specifics -----------------------------------------------------------------


async def test_local_sweep_drops_expired_slots() -> None:
    store = LocalWorkingSetStore(ttl_s=0.2)
    for index in range(5):
        await store.update(f"c{index}", add_tools("a"))
    assert len(store) == 5
    with anyio.fail_after(5):
        while store.sweep() == 0:  # noqa: ASYNC110 - expiry has no event
            await anyio.sleep(0.05)
    assert len(store) == 0


async def test_redis_layout_is_namespaced_compact_json_with_ttl(redis_url: str, namespace: str) -> None:
    store = RedisWorkingSetStore.from_url(redis_url, namespace=namespace, ttl_s=300)
    try:
        await store.update("c/1", add_tools("srv__tool"))
    finally:
        await store.aclose()
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.get(f"{namespace}:ws:c/1")
        assert raw is not None
        assert b" " not in raw
        document = json.loads(raw)
        assert (document["v"], document["turn"], list(document["tools"])) == (1, 1, ["srv__tool"])
        assert "h" not in document  # no history was recorded: the layout is unchanged
        assert 0 < client.pttl(f"{namespace}:ws:c/1") <= 300_000
        assert client.zrange(f"{namespace}:ws-index", 0, -1) == [b"c/1"]
    finally:
        client.close()


async def test_two_clients_share_conversations_without_lost_updates(redis_url: str, namespace: str) -> None:
    """Separate clients have separate in-process locks: only WATCH keeps them apart."""
    stores = [RedisWorkingSetStore.from_url(redis_url, namespace=namespace) for _ in range(2)]
    conversations, updates = 50, 10
    try:
        with anyio.fail_after(120):
            async with anyio.create_task_group() as group:
                for index in range(conversations):
                    for step in range(updates):
                        group.start_soon(stores[step % 2].update, f"c{index}", add_tools(f"t{step}"))
        for index in range(conversations):
            stored = await stores[0].get(f"c{index}")
            assert stored is not None
            assert (stored.turn, len(stored)) == (updates, updates)
    finally:
        for store in stores:
            await store.aclose()


async def test_endless_conflicts_end_in_conflict_error(redis_url: str, namespace: str) -> None:
    store = RedisWorkingSetStore.from_url(redis_url, namespace=namespace, max_attempts=3)
    rival = redis.Redis.from_url(redis_url)
    calls = 0

    def contested(working_set: WorkingSet) -> Change[None]:
        nonlocal calls
        calls += 1
        rival.set(f"{namespace}:ws:hot", encode(WorkingSet(turn=calls)))  # lands between WATCH and EXEC
        return Change(working_set, None)

    try:
        with pytest.raises(ConflictError, match="3 attempts"):
            await store.update("hot", contested)
        assert (calls, store.conflicts) == (3, 3)
    finally:
        rival.close()
        await store.aclose()


async def test_cross_process_updates_add_up(redis_url: str, namespace: str) -> None:
    """Two gateway-like processes update the same 200 conversations at once."""
    conversations, rounds = 200, 8
    workers = []
    for name in ("A", "B"):
        args = [
            PYTHON,
            "-m",
            "tests.memory_worker",
            redis_url,
            namespace,
            name,
            str(conversations),
            str(rounds),
        ]
        workers.append(await anyio.open_process(args, cwd=ROOT))
    try:
        with anyio.fail_after(180):
            for worker in workers:
                assert (await read_line(worker)) == "READY"
            for worker in workers:
                assert worker.stdin is not None
                await worker.stdin.send(b"go\n")
            outputs = [await read_line(worker) for worker in workers]
            for worker in workers:
                assert await worker.wait() == 0
    finally:
        for worker in workers:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    assert all(line.startswith("DONE ") for line in outputs)
    print("WATCH conflicts retried per worker:", [line.split()[1] for line in outputs])
    store = RedisWorkingSetStore.from_url(redis_url, namespace=namespace)
    interleaved = 0
    try:
        for index in range(conversations):
            stored = await store.get(f"conv-{index}")
            assert stored is not None
            assert stored.turn == 2 * rounds
            expected = {f"{worker}-{step}" for worker in "AB" for step in range(rounds)}
            assert set(stored.tools) == expected
            # Turn numbers record the order of writes; A's and B's mixed means they overlapped.
            order = sorted(stored.tools, key=lambda name: stored.tools[name].added_turn)
            interleaved += len({name[0] for name in order[:rounds]}) == 2
    finally:
        await store.aclose()
    assert interleaved > 0, "the two workers never overlapped, so the test proved nothing"


async def read_line(process: anyio.abc.Process) -> str:
    assert process.stdout is not None
    data = b""
    while not data.endswith(b"\n"):
        data += await process.stdout.receive(1)
    return data.decode().strip()


# --- Redis outages, on a private server this test starts and stops ----------------------------


async def test_unreachable_redis_fails_fast_with_a_clear_error() -> None:
    url = f"redis://:{PrivateRedis.PASSWORD}@127.0.0.1:{free_port()}/0"
    store = RedisWorkingSetStore.from_url(url)
    try:
        with anyio.fail_after(10):
            for attempt in (
                store.get("c"),
                store.update("c", add_tools("a")),
                store.clear("c"),
                store.list(),
            ):
                with pytest.raises(MemoryUnavailableError) as caught:
                    await attempt
                assert PrivateRedis.PASSWORD not in str(caught.value)
                assert "127.0.0.1" in str(caught.value)
    finally:
        await store.aclose()


async def test_redis_restart_mid_conversation(private_redis: PrivateRedis) -> None:
    store = RedisWorkingSetStore.from_url(private_redis.url)
    try:
        await store.update("c", add_tools("a"))
        private_redis.stop()
        with anyio.fail_after(10):
            with pytest.raises(MemoryUnavailableError) as caught:
                await store.update("c", add_tools("b"))
            assert private_redis.PASSWORD not in str(caught.value)
            with pytest.raises(MemoryUnavailableError):
                await store.get("c")
        private_redis.start()
        # The same store reconnects by itself; the server kept nothing, so the state restarts.
        with anyio.fail_after(10):
            change = await store.update("c", add_tools("b"))
        assert (sorted(change.working_set.tools), change.working_set.turn) == (["b"], 1)
        assert await store.get("c") == change.working_set
    finally:
        await store.aclose()


async def test_a_stalled_redis_times_out_instead_of_hanging(private_redis: PrivateRedis) -> None:
    store = RedisWorkingSetStore.from_url(private_redis.url, connect_timeout_s=0.5, timeout_s=0.5)
    assert private_redis.process is not None
    try:
        await store.update("c", add_tools("a"))
        private_redis.process.send_signal(signal.SIGSTOP)  # alive but silent: only timeouts help
        try:
            started = time.monotonic()
            with anyio.fail_after(10):
                with pytest.raises(MemoryUnavailableError, match="Timeout"):
                    await store.update("c", add_tools("b"))
            assert time.monotonic() - started < 5
        finally:
            private_redis.process.send_signal(signal.SIGCONT)
        with anyio.fail_after(10):
            assert (await store.update("c", add_tools("b"))).working_set.turn == 2
    finally:
        await store.aclose()
