"""The offline working-set replay of bench/memory_policies.py on hand-made rankings: the rules
it runs are the gateway's own, so these pin what each refresh rule does to a long task."""

from __future__ import annotations

from bench.memory_policies import Rankings, simulate
from bench.memory_replay import Turn

TOOLS = [f"t{i}" for i in range(6)]
# One task whose ranking lists exactly its six tools, in the order the steps need them.
RANKINGS = Rankings(
    exposed={f"id{i}": name for i, name in enumerate(TOOLS)},
    ranked={"q": [(n, 1.0 - i / 10) for i, n in enumerate(TOOLS)]},
)
TASK = [Turn("q", "the task", f"id{i}", "task", i) for i in range(6)]


def test_refreshing_every_held_match_keeps_a_long_task_whole() -> None:
    """Limit 1, idle 1: each step brings the next tool. When only the plain top 1 counts as
    returned again, the tools stepped past age out, come back as the fresh card, and push
    the needed one out of the result (steps 5 and 6 miss)."""
    kept = simulate([TASK], RANKINGS, limit=1, capacity=10, idle_turns=1, refresh="above_fresh")
    assert kept["hit_rate"] == 1.0
    assert kept["memory_misses"] == 0
    aged = simulate([TASK], RANKINGS, limit=1, capacity=10, idle_turns=1, refresh="top_limit")
    assert aged["misses"] == 2
    assert aged["hit_rate"] < kept["hit_rate"]


def test_the_capacity_bounds_the_working_set() -> None:
    for refresh in ("above_fresh", "top_limit"):
        found = simulate([TASK, TASK], RANKINGS, limit=2, capacity=3, idle_turns=5, refresh=refresh)
        assert found["working_set_peak"] <= 3
        assert found["turns"] == 12
