"""Deterministic working-set rules (MemTool's workflow mode, without a language model).

Pure functions over `WorkingSet`: no clock, no I/O, so they can run inside `store.update` (which
may retry them) and be unit-tested rule by rule. Workflow mode runs `workflow_turn` on every
query; hybrid mode prunes the same way while the model decides when to search; autonomous mode
only uses `add_hits`, `record_call` and `forget`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from gateway.memory.store import DEFAULT_CAPACITY, ToolEntry, WorkingSet

Reason = Literal["idle", "irrelevant", "capacity"]


@dataclass(frozen=True, slots=True)
class PruneRules:
    """`idle_turns`: a tool survives this many turns in which it is neither returned nor called,
    and is dropped on the next one (0 keeps only what the current turn touches).
    `min_relevance`: drop a tool untouched this turn whose last relevance is below it (None: off;
    the scale is the retrieval score's). `capacity`: the most tools kept, new hits included."""

    idle_turns: int = 3
    min_relevance: float | None = None
    capacity: int = DEFAULT_CAPACITY

    def __post_init__(self) -> None:
        if self.idle_turns < 0 or self.capacity < 1:
            raise ValueError("idle_turns must be >= 0 and capacity >= 1")


@dataclass(frozen=True, slots=True)
class Pruned:
    """The new working set, the names removed (in rule order: idle, irrelevant, capacity) and
    added, and why each was removed."""

    working_set: WorkingSet
    removed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    reasons: Mapping[str, Reason] = field(default_factory=dict)


def _ranked(hits: Mapping[str, float]) -> list[str]:
    """Best first; ties by name so the order never depends on dict order."""
    return sorted(hits, key=lambda name: (-hits[name], name))


def _age_key(item: tuple[str, ToolEntry]) -> tuple[int, float, int, float, str]:
    name, entry = item
    return (entry.last_active_turn, entry.last_active_at, entry.added_turn, entry.added_at, name)


def _returned(entry: ToolEntry, *, turn: int, now: float, relevance: float) -> ToolEntry:
    return dataclasses.replace(entry, last_relevance=relevance, last_returned_at=now, last_returned_turn=turn)


def _new(*, turn: int, now: float, relevance: float) -> ToolEntry:
    return ToolEntry(
        added_at=now, added_turn=turn, last_relevance=relevance, last_returned_at=now, last_returned_turn=turn
    )


def prune(
    working_set: WorkingSet,
    *,
    turn: int,
    rules: PruneRules,
    relevance: Mapping[str, float] | None = None,
    incoming: Mapping[str, float] | None = None,
) -> Pruned:
    """Apply the rules for `turn`. `relevance` re-scores tools already held against the recent
    queries (others keep their last score); tools in `incoming` (this turn's hits) are exempt,
    and room is made for them, least recently active first."""
    relevance = relevance or {}
    incoming = incoming or {}
    tools = {
        name: dataclasses.replace(entry, last_relevance=relevance[name]) if name in relevance else entry
        for name, entry in working_set.tools.items()
    }
    reasons: dict[str, Reason] = {}
    protected = set(_ranked(incoming)[: rules.capacity])

    def untouched(name: str) -> bool:
        return name not in protected and tools[name].last_active_turn < turn

    for name in sorted(tools):
        if untouched(name) and turn - tools[name].last_active_turn > rules.idle_turns:
            reasons[name] = "idle"
    threshold = rules.min_relevance
    for name in sorted(tools):
        below = threshold is not None and tools[name].last_relevance < threshold
        if below and name not in reasons and untouched(name):
            reasons[name] = "irrelevant"

    survivors = [(name, entry) for name, entry in tools.items() if name not in reasons]
    arriving = len(protected - set(tools))
    excess = len(survivors) + arriving - rules.capacity
    for name, _ in sorted((item for item in survivors if item[0] not in protected), key=_age_key):
        if excess <= 0:
            break
        reasons[name] = "capacity"
        excess -= 1

    kept = {name: entry for name, entry in tools.items() if name not in reasons}
    order = {"idle": 0, "irrelevant": 1, "capacity": 2}
    removed = tuple(sorted(reasons, key=lambda name: order[reasons[name]]))
    return Pruned(dataclasses.replace(working_set, tools=kept, turn=turn), removed, (), reasons)


def add_hits(working_set: WorkingSet, *, turn: int, now: float, hits: Mapping[str, float]) -> Pruned:
    """Add this turn's hits (best first) and mark held ones as returned. Nothing is removed; the
    store refuses a result over its capacity (autonomous mode asks the model to forget first)."""
    tools = dict(working_set.tools)
    added = []
    for name in _ranked(hits):
        if name in tools:
            tools[name] = _returned(tools[name], turn=turn, now=now, relevance=hits[name])
        else:
            tools[name] = _new(turn=turn, now=now, relevance=hits[name])
            added.append(name)
    return Pruned(dataclasses.replace(working_set, tools=tools, turn=turn), (), tuple(added))


def workflow_turn(
    working_set: WorkingSet,
    *,
    turn: int,
    now: float,
    hits: Mapping[str, float],
    rules: PruneRules,
    relevance: Mapping[str, float] | None = None,
) -> Pruned:
    """One workflow-mode turn: prune (idle, irrelevant, oldest over capacity), then add the hits.
    If the hits alone exceed the capacity, only the best `capacity` of them are kept."""
    best = {name: hits[name] for name in _ranked(hits)[: rules.capacity]}
    pruned = prune(working_set, turn=turn, rules=rules, relevance=relevance, incoming=best)
    grown = add_hits(pruned.working_set, turn=turn, now=now, hits=best)
    return Pruned(grown.working_set, pruned.removed, grown.added, pruned.reasons)


def record_call(working_set: WorkingSet, name: str, *, now: float, relevance: float = 1.0) -> WorkingSet:
    """Mark `name` as called in the current turn, adding it if the model called it unseen (it is
    in use, so it belongs in the set; `relevance` is its score until the next query)."""
    turn = working_set.turn
    entry = working_set.tools.get(name) or ToolEntry(added_at=now, added_turn=turn, last_relevance=relevance)
    called = dataclasses.replace(entry, last_called_at=now, last_called_turn=turn)
    return dataclasses.replace(working_set, tools={**working_set.tools, name: called})


def forget(working_set: WorkingSet, names: Iterable[str]) -> Pruned:
    """Remove the named tools (autonomous mode's `forget_tools`); unknown names are ignored."""
    drop = [name for name in dict.fromkeys(names) if name in working_set.tools]
    kept = {name: entry for name, entry in working_set.tools.items() if name not in drop}
    return Pruned(dataclasses.replace(working_set, tools=kept), tuple(drop))
