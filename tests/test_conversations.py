"""The working-set modes on both stores (process memory and the machine's Redis)."""

from __future__ import annotations

import anyio
import pytest

from gateway.conversations import ConversationMemory, WorkingSetFull, fresh_first
from gateway.memory.policy import PruneRules
from tests.memory_fixtures import StoreFactory

pytestmark = pytest.mark.anyio


def hits(*names: str) -> dict[str, float]:
    return {name: 1.0 - i / 100 for i, name in enumerate(names)}


async def test_workflow_prunes_idle_tools_and_adds_hits(make_store: StoreFactory) -> None:
    memory = ConversationMemory(make_store(), mode="workflow", rules=PruneRules(idle_turns=1, capacity=8))
    first = await memory.on_find("c1", hits("a", "b"))
    assert (first.mode, first.count, first.added, first.removed) == ("workflow", 2, ("a", "b"), ())
    await memory.on_call("c1", "a")  # called in turn 1
    second = await memory.on_find("c1", hits("c"))
    assert second.added == ("c",)
    assert second.removed == ()  # one quiet turn is allowed
    third = await memory.on_find("c1", hits("d"))
    assert set(third.removed) == {"a", "b"}  # idle for two turns now
    working_set = await memory.get("c1")
    assert working_set is not None
    assert set(working_set.tools) == {"c", "d"}


async def test_workflow_never_exceeds_capacity(make_store: StoreFactory) -> None:
    memory = ConversationMemory(make_store(), mode="workflow", rules=PruneRules(idle_turns=100, capacity=5))
    for turn in range(6):
        view = await memory.on_find("c", hits(*(f"t{turn}_{i}" for i in range(3))))
        assert view.count <= 5
    working_set = await memory.get("c")
    assert working_set is not None
    assert set(working_set.tools) >= {"t5_0", "t5_1", "t5_2"}  # the newest hits stay


async def test_autonomous_refuses_at_capacity_until_the_model_forgets(make_store: StoreFactory) -> None:
    memory = ConversationMemory(make_store(), mode="autonomous", rules=PruneRules(capacity=4))
    await memory.on_find("c", hits("a", "b", "c"))
    with pytest.raises(WorkingSetFull) as full:
        await memory.on_find("c", hits("d", "e"))
    assert "forget_tools" in str(full.value)
    assert full.value.count == 3
    assert set(full.value.oldest) == {"a", "b", "c"}
    assert full.value.needed == 1  # 3 held + 2 new over a capacity of 4
    assert "at least 1 tools" in str(full.value)
    forgotten = await memory.forget("c", ["a", "b", "nope"])
    assert set(forgotten.removed) == {"a", "b"}
    assert forgotten.count == 1
    grown = await memory.on_find("c", hits("d", "e"))
    assert grown.count == 3
    assert grown.removed == ()


async def test_hybrid_keeps_only_what_the_model_calls(make_store: StoreFactory) -> None:
    memory = ConversationMemory(make_store(), mode="hybrid", rules=PruneRules(idle_turns=1, capacity=8))
    view = await memory.on_find("c", hits("a", "b"))
    assert view.count == 0  # found, not used
    called = await memory.on_call("c", "b")
    assert called.added == ("b",)
    assert called.count == 1
    kept = await memory.on_find("c", hits("x"))  # turn 2: one quiet turn is allowed
    assert kept.count == 1
    later = await memory.on_find("c", hits("y"))  # turn 3: idle too long, the gateway removes it
    assert later.removed == ("b",)
    assert later.count == 0


async def test_a_conversation_can_override_the_mode(make_store: StoreFactory) -> None:
    memory = ConversationMemory(make_store(), mode="workflow", rules=PruneRules(capacity=2))
    view = await memory.on_find("c", hits("a", "b"), mode="autonomous")
    assert view.mode == "autonomous"
    with pytest.raises(WorkingSetFull):
        await memory.on_find("c", hits("c"))  # the override stuck
    other = await memory.on_find("d", hits("a", "b"))
    assert other.mode == "workflow"
    assert (await memory.on_find("d", hits("c"))).count == 2


async def test_capacity_holds_under_concurrent_finds(make_store: StoreFactory) -> None:
    memory = ConversationMemory(make_store(), mode="workflow", rules=PruneRules(idle_turns=50, capacity=6))
    sizes: list[int] = []

    async def chat(conversation: str) -> None:
        for turn in range(4):
            view = await memory.on_find(conversation, hits(f"{turn}a", f"{turn}b"))
            sizes.append(view.count)

    async with anyio.create_task_group() as group:
        for i in range(50):
            group.start_soon(chat, f"conv-{i}")
    assert len(sizes) == 200
    assert max(sizes) == 6
    for i in range(50):
        working_set = await memory.get(f"conv-{i}")
        assert working_set is not None
        assert working_set.turn == 4
        assert len(working_set) == 6


async def test_hybrid_keeps_a_held_tool_that_the_search_returns_again(make_store: StoreFactory) -> None:
    memory = ConversationMemory(make_store(), mode="hybrid", rules=PruneRules(idle_turns=1, capacity=8))
    await memory.on_find("c", hits("a"))
    await memory.on_call("c", "a")  # turn 1: the model uses it
    await memory.on_find("c", hits("x"))  # turn 2: quiet
    again = await memory.on_find("c", hits("a", "y"))  # turn 3: idle too long, but returned again
    assert again.removed == ()
    assert again.count == 1
    working_set = await memory.get("c")
    assert working_set is not None
    assert working_set.tools["a"].last_returned_turn == 3


async def test_each_turn_records_what_was_added_and_removed(make_store: StoreFactory) -> None:
    memory = ConversationMemory(make_store(), mode="workflow", rules=PruneRules(idle_turns=0, capacity=8))
    await memory.on_find("c", hits("a", "b"), query="first question")
    await memory.on_find("c", hits("b", "c"), query="second question")
    await memory.on_find("c", hits("c"), query="third", mode="autonomous")
    await memory.forget("c", ["c", "missing"])
    await memory.forget("c", ["missing"])  # removes nothing: no record
    await memory.on_call("c", "z")  # a call of a tool not held adds it
    await memory.on_call("c", "z")  # held already: no record
    working_set = await memory.get("c")
    assert working_set is not None
    rows = [(r.turn, r.kind, r.query, r.added, r.removed, r.reasons) for r in working_set.history]
    assert rows == [
        (1, "find", "first question", ("a", "b"), (), ()),
        (2, "find", "second question", ("c",), ("a",), ("idle",)),
        (3, "find", "third", (), (), ()),  # autonomous: nothing is pruned
        (3, "forget", "", (), ("c",), ("forgotten",)),
        (3, "call", "", ("z",), (), ()),
    ]
    assert all(r.at > 0 for r in working_set.history)


async def test_a_refused_turn_leaves_no_history(make_store: StoreFactory) -> None:
    memory = ConversationMemory(make_store(), mode="autonomous", rules=PruneRules(capacity=2))
    await memory.on_find("c", hits("a", "b"), query="q1")
    with pytest.raises(WorkingSetFull):
        await memory.on_find("c", hits("c"), query="q2")
    working_set = await memory.get("c")
    assert working_set is not None
    assert [r.query for r in working_set.history] == ["q1"]


def test_fresh_first_skips_held_tools_and_names_the_ones_it_passed() -> None:
    ranked = ["a", "b", "c", "d", "e", "f"]
    assert fresh_first(ranked, set(), 3) == (["a", "b", "c"], [])
    assert fresh_first(ranked, {"a", "c", "f"}, 3) == (["b", "d", "e"], ["a", "c"])
    assert fresh_first(ranked, set(ranked), 2) == ([], ranked)  # all held: nothing new to show
    assert fresh_first(ranked[:2], set(), 5) == (["a", "b"], [])


async def test_a_refusal_lists_as_many_tools_as_must_go(make_store: StoreFactory) -> None:
    """A find of 15 new tools into a full set of 20 (capacity 20) must free 15: the refusal
    lists 15 names, not only the first 10, so forgetting them lets the find through."""
    memory = ConversationMemory(make_store(), mode="autonomous", rules=PruneRules(capacity=20))
    await memory.on_find("c", hits(*(f"old{i}" for i in range(20))))
    new = hits(*(f"new{i}" for i in range(15)))
    with pytest.raises(WorkingSetFull) as full:
        await memory.on_find("c", new)
    assert full.value.needed == 15
    assert len(full.value.oldest) == 15
    await memory.forget("c", full.value.oldest)
    assert (await memory.on_find("c", new)).count == 20
