"""Workflow-mode pruning and the other working-set rules, one rule at a time."""

from __future__ import annotations

import random

import pytest

from gateway.memory import ToolEntry, WorkingSet
from gateway.memory.policy import PruneRules, add_hits, forget, prune, record_call, workflow_turn

NOW = 5000.0


def held(
    added_turn: int,
    *,
    relevance: float = 0.9,
    returned: int | None = None,
    called: int | None = None,
    at: float | None = None,
) -> ToolEntry:
    """A held tool whose times follow its turns (turn t happened at t seconds) unless `at` says."""
    return ToolEntry(
        added_at=float(added_turn) if at is None else at,
        added_turn=added_turn,
        last_relevance=relevance,
        last_returned_at=None if returned is None else float(returned),
        last_returned_turn=returned,
        last_called_at=None if called is None else float(called),
        last_called_turn=called,
    )


def ws(turn: int, **tools: ToolEntry) -> WorkingSet:
    return WorkingSet(tools=tools, turn=turn)


# --- idle ------------------------------------------------------------------------------------


def test_idle_tools_survive_n_quiet_turns_then_leave() -> None:
    rules = PruneRules(idle_turns=2)
    state = ws(5, a=held(5))
    assert "a" in prune(state, turn=7, rules=rules).working_set.tools  # quiet in turns 6 and 7
    result = prune(state, turn=8, rules=rules)
    assert result.removed == ("a",)
    assert result.reasons == {"a": "idle"}
    assert result.working_set.tools == {}
    assert result.working_set.turn == 8


@pytest.mark.parametrize(
    ("tool", "kept"),
    [
        (held(1, returned=6), True),  # returned recently
        (held(1, called=6), True),  # called recently
        (held(1, returned=4, called=5), False),  # both too long ago
        (held(6), True),  # added recently
    ],
)
def test_idle_counts_from_the_last_add_return_or_call(tool: ToolEntry, kept: bool) -> None:
    result = prune(ws(7, a=tool), turn=8, rules=PruneRules(idle_turns=2))
    assert ("a" in result.working_set.tools) is kept


def test_zero_idle_turns_keeps_only_what_this_turn_touched() -> None:
    state = ws(4, old=held(4), called_now=held(2, called=5))
    result = prune(state, turn=5, rules=PruneRules(idle_turns=0), incoming={"hit": 0.1, "old2": 0.2})
    assert set(result.working_set.tools) == {"called_now"}
    assert result.removed == ("old",)


def test_this_turns_hits_are_never_idle() -> None:
    result = workflow_turn(
        ws(9, a=held(1)), turn=10, now=NOW, hits={"a": 0.7}, rules=PruneRules(idle_turns=1)
    )
    assert result.removed == ()
    entry = result.working_set.tools["a"]
    assert (entry.last_returned_turn, entry.last_returned_at, entry.last_relevance) == (10, NOW, 0.7)
    assert entry.added_turn == 1  # still the same tool, not re-added
    assert result.added == ()


# --- relevance -------------------------------------------------------------------------------


def test_tools_below_the_relevance_threshold_leave() -> None:
    rules = PruneRules(idle_turns=10, min_relevance=0.3)
    state = ws(3, low=held(3, relevance=0.2), high=held(3, relevance=0.8), edge=held(3, relevance=0.3))
    result = prune(state, turn=4, rules=rules)
    assert result.removed == ("low",)
    assert result.reasons == {"low": "irrelevant"}
    assert set(result.working_set.tools) == {"high", "edge"}


def test_fresh_relevance_replaces_the_stored_score() -> None:
    rules = PruneRules(idle_turns=10, min_relevance=0.3)
    state = ws(
        3, revived=held(3, relevance=0.1), faded=held(3, relevance=0.9), unscored=held(3, relevance=0.5)
    )
    result = prune(state, turn=4, rules=rules, relevance={"revived": 0.6, "faded": 0.05})
    assert result.removed == ("faded",)
    assert result.working_set.tools["revived"].last_relevance == 0.6
    assert result.working_set.tools["unscored"].last_relevance == 0.5


def test_relevance_spares_tools_touched_this_turn_and_is_off_by_default() -> None:
    state = ws(
        4, called=held(2, relevance=0.0, called=4), hit=held(2, relevance=0.0), other=held(2, relevance=0.0)
    )
    rules = PruneRules(idle_turns=10, min_relevance=0.5)
    result = prune(state, turn=4, rules=rules, incoming={"hit": 0.01})
    assert result.removed == ("other",)
    assert prune(state, turn=4, rules=PruneRules(idle_turns=10)).removed == ()


def test_a_tool_idle_and_irrelevant_is_reported_once_as_idle() -> None:
    result = prune(ws(1, a=held(1, relevance=0.0)), turn=9, rules=PruneRules(idle_turns=2, min_relevance=0.5))
    assert result.removed == ("a",)
    assert result.reasons == {"a": "idle"}


# --- capacity --------------------------------------------------------------------------------


def test_over_capacity_the_least_recently_active_leave_first() -> None:
    state = ws(
        6,
        oldest=held(1, returned=3),
        older=held(2, called=4),
        newer=held(5),
        hit=held(1),  # old, but this turn returns it again
    )
    rules = PruneRules(idle_turns=10, capacity=4)
    result = workflow_turn(state, turn=6, now=NOW, hits={"hit": 0.9, "n1": 0.8, "n2": 0.7}, rules=rules)
    assert result.removed == ("oldest", "older")
    assert result.reasons == {"oldest": "capacity", "older": "capacity"}
    assert set(result.working_set.tools) == {"newer", "hit", "n1", "n2"}
    assert result.added == ("n1", "n2")


def test_capacity_ties_break_on_time_then_name() -> None:
    state = ws(3, b=held(2, at=10.0), a=held(2, at=10.0), c=held(2, at=9.0))
    result = workflow_turn(
        state, turn=3, now=NOW, hits={"x": 1.0}, rules=PruneRules(idle_turns=10, capacity=2)
    )
    assert result.removed == ("c", "a")
    assert set(result.working_set.tools) == {"b", "x"}


def test_hits_beyond_capacity_keep_the_best() -> None:
    hits = {"d": 0.4, "a": 0.9, "c": 0.9, "b": 0.1}
    result = workflow_turn(ws(0, old=held(0)), turn=1, now=NOW, hits=hits, rules=PruneRules(capacity=2))
    assert result.added == ("a", "c")
    assert result.removed == ("old",)
    assert set(result.working_set.tools) == {"a", "c"}


# --- adding ----------------------------------------------------------------------------------


def test_new_hits_are_added_best_first_with_this_turns_marks() -> None:
    result = workflow_turn(ws(0), turn=1, now=NOW, hits={"b": 0.5, "a": 0.5, "c": 0.9}, rules=PruneRules())
    assert result.added == ("c", "a", "b")
    assert result.removed == ()
    assert result.working_set.turn == 1
    assert result.working_set.tools["c"] == ToolEntry(
        added_at=NOW, added_turn=1, last_relevance=0.9, last_returned_at=NOW, last_returned_turn=1
    )


def test_add_hits_removes_nothing() -> None:
    state = ws(1, **{f"t{index}": held(1) for index in range(5)})
    result = add_hits(state, turn=50, now=NOW, hits={"t0": 0.2, "new": 0.3})
    assert (result.removed, result.added) == ((), ("new",))
    assert len(result.working_set) == 6
    assert result.working_set.tools["t0"].last_returned_turn == 50


# --- determinism and purity ------------------------------------------------------------------


def test_same_input_same_output_whatever_the_dict_order() -> None:
    tools = {f"t{index}": held(index % 4, relevance=index / 10) for index in range(10)}
    hits = {f"h{index}": (index % 3) / 3 for index in range(6)}
    rules = PruneRules(idle_turns=2, min_relevance=0.25, capacity=8)
    results = []
    for seed in range(5):
        rng = random.Random(seed)
        shuffled_tools = dict(rng.sample(sorted(tools.items()), len(tools)))
        shuffled_hits = dict(rng.sample(sorted(hits.items()), len(hits)))
        results.append(
            workflow_turn(ws(4, **shuffled_tools), turn=5, now=NOW, hits=shuffled_hits, rules=rules)
        )
    assert all(
        (result.removed, result.added, dict(sorted(result.working_set.tools.items())))
        == (results[0].removed, results[0].added, dict(sorted(results[0].working_set.tools.items())))
        for result in results
    )


def test_inputs_are_left_untouched() -> None:
    state = ws(1, a=held(1, relevance=0.1), b=held(1))
    snapshot = dict(state.tools)
    workflow_turn(
        state, turn=9, now=NOW, hits={"c": 1.0}, relevance={"b": 0.0}, rules=PruneRules(min_relevance=0.5)
    )
    assert dict(state.tools) == snapshot
    assert state.turn == 1


def test_a_long_run_never_exceeds_capacity_and_always_holds_the_hits() -> None:
    rng = random.Random(7)
    rules = PruneRules(idle_turns=3, min_relevance=0.2, capacity=12)
    state = WorkingSet()
    removed_total = added_total = 0
    for turn in range(1, 200):
        hits = {f"tool{rng.randrange(60)}": rng.random() for _ in range(rng.randrange(1, 9))}
        relevance = {name: rng.random() for name in state.tools}
        result = workflow_turn(state, turn=turn, now=float(turn), hits=hits, rules=rules, relevance=relevance)
        state = result.working_set
        if rng.random() < 0.5 and state.tools:
            state = record_call(state, rng.choice(sorted(state.tools)), now=float(turn))
        assert len(state) <= rules.capacity
        assert set(hits) <= set(state.tools)
        assert not set(result.removed) & set(state.tools)
        removed_total += len(result.removed)
        added_total += len(result.added)
    assert added_total - removed_total == len(state)


# --- calls and forgetting --------------------------------------------------------------------


def test_record_call_marks_the_current_turn() -> None:
    state = record_call(ws(4, a=held(1)), "a", now=NOW)
    entry = state.tools["a"]
    assert (entry.last_called_turn, entry.last_called_at, entry.added_turn) == (4, NOW, 1)


def test_record_call_adds_a_tool_called_unseen() -> None:
    state = record_call(ws(4), "direct", now=NOW, relevance=0.6)
    assert state.tools["direct"] == ToolEntry(
        added_at=NOW, added_turn=4, last_relevance=0.6, last_called_at=NOW, last_called_turn=4
    )


def test_forget_removes_named_tools_and_ignores_unknown_ones() -> None:
    result = forget(ws(2, a=held(1), b=held(1), c=held(2)), ["c", "zzz", "a", "c"])
    assert result.removed == ("c", "a")
    assert set(result.working_set.tools) == {"b"}
    assert result.working_set.turn == 2


def test_rules_are_validated() -> None:
    with pytest.raises(ValueError, match="idle_turns"):
        PruneRules(idle_turns=-1)
    with pytest.raises(ValueError, match="capacity"):
        PruneRules(capacity=0)
