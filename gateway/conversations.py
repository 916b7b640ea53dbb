"""Each conversation's working set of tools, kept by MemTool's modes (see DESIGN.md).

Every `find_tools` is a turn. The modes differ in who adds and who removes:

- autonomous: the hits join the working set; nothing leaves unless the model calls
  `forget_tools`. At capacity, `find_tools` refuses with a message naming the oldest tools.
- workflow: the gateway prunes (idle, irrelevant, oldest over capacity) and then adds the hits.
- hybrid: the gateway prunes the same way, but only tools the model calls join the set: the
  model adds by use, the gateway removes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from .memory import CapacityError, Change, Mode, TurnRecord, WorkingSet, WorkingSetStore, with_record
from .memory.policy import Pruned, PruneRules, add_hits, forget, prune, record_call, workflow_turn

MODES: tuple[Mode, ...] = ("autonomous", "workflow", "hybrid")

logger = logging.getLogger(__name__)


class WorkingSetFull(Exception):
    """Autonomous mode at capacity: the model must forget tools before it finds more."""

    def __init__(self, count: int, capacity: int, oldest: Sequence[str], *, needed: int = 1) -> None:
        """`needed`: how many tools must go before this find's results fit."""
        self.count = count
        self.capacity = capacity
        self.needed = needed
        self.oldest = list(oldest)
        super().__init__(
            f"the working set is full ({count}/{capacity} tools): call forget_tools with at least "
            f"{needed} tools you no longer need first (least recently used: {', '.join(self.oldest)})"
        )


@dataclass(frozen=True, slots=True)
class MemoryView:
    """What a result tells the model about its working set."""

    conversation: str
    mode: Mode
    count: int
    capacity: int
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    # Tools already held that this find matched: their cards were returned earlier, so the
    # result names them instead of repeating them (see `fresh_first`).
    held: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "count": self.count,
            "capacity": self.capacity,
            "added": list(self.added),
            "removed": list(self.removed),
            "held": list(self.held),
        }


def fresh_first(ranked: Sequence[str], held: Collection[str], limit: int) -> tuple[list[str], list[str]]:
    """Split a ranking (best first) into up to `limit` names not held yet, and the held names
    ranked above the last of them (the matches the model already has).

    A conversation that searches again, e.g. for the next step of the same task, then gets the
    next-best tools instead of the cards it already holds: the limit buys new information.
    """
    fresh: list[str] = []
    matched: list[str] = []
    for name in ranked:
        if len(fresh) >= limit:
            break
        (matched if name in held else fresh).append(name)
    return fresh, matched


def _oldest(working_set: WorkingSet, n: int = 10) -> list[str]:
    """The `n` least recently active tools (a refusal lists at least as many as must go, so a
    model that forgets the list can always search again)."""
    ordered = sorted(working_set.tools.items(), key=lambda item: (item[1].last_active_turn, item[0]))
    return [name for name, _ in ordered[:n]]


class ConversationMemory:
    def __init__(
        self, store: WorkingSetStore, *, mode: Mode, rules: PruneRules, fresh_results: bool = True
    ) -> None:
        self.store = store
        self.mode = mode
        # find_tools fills its limit with tools not held yet (see `fresh_first`).
        self.fresh_results = fresh_results
        self.rules = replace(rules, capacity=min(rules.capacity, store.capacity))
        # Told when a working set gains or loses tools (dynamic listing sends list_changed).
        self.on_change: Callable[[MemoryView], Awaitable[None]] | None = None

    async def _changed(self, view: MemoryView) -> MemoryView:
        if self.on_change is not None and (view.added or view.removed):
            try:
                await self.on_change(view)
            except Exception:  # a listener must not fail the request that changed the set
                logger.exception("working-set change listener failed")
        return view

    def mode_of(self, working_set: WorkingSet) -> Mode:
        return working_set.mode if working_set.mode is not None else self.mode

    async def held(self, conversation: str) -> frozenset[str]:
        """The names in the conversation's working set (empty for a new conversation)."""
        working_set = await self.store.get(conversation)
        return frozenset(working_set.tools) if working_set is not None else frozenset()

    async def on_find(
        self,
        conversation: str,
        hits: Mapping[str, float],
        *,
        mode: Mode | None = None,
        query: str = "",
        matched: Sequence[str] = (),
    ) -> MemoryView:
        """One turn: apply the conversation's mode to this find's hits (name -> score).
        `mode` (when given) becomes the conversation's override from now on. The turn goes into
        the conversation's history with `query` (shortened) and what was added and removed.
        `matched` names the hits already held that the result names instead of showing."""
        now = time.time()
        rules = self.rules

        def turn(working_set: WorkingSet) -> Change[tuple[Mode, Pruned]]:
            if mode is not None:
                working_set = replace(working_set, mode=mode)
            chosen = self.mode_of(working_set)
            number = working_set.turn + 1
            if chosen == "workflow":
                result = workflow_turn(working_set, turn=number, now=now, hits=hits, rules=rules)
            elif chosen == "hybrid":
                # Held tools the search returns again count as active: protected from pruning
                # and refreshed; hits not held yet join only when the model calls them.
                held = {name: score for name, score in hits.items() if name in working_set.tools}
                result = prune(working_set, turn=number, rules=rules, incoming=held)
                result = replace(
                    result,
                    working_set=add_hits(result.working_set, turn=number, now=now, hits=held).working_set,
                )
            else:
                result = add_hits(working_set, turn=number, now=now, hits=hits)
                if len(result.working_set) > rules.capacity:
                    needed = len(result.working_set) - rules.capacity
                    oldest = _oldest(working_set, max(10, needed))
                    raise WorkingSetFull(len(working_set), rules.capacity, oldest, needed=needed)
            record = TurnRecord(
                turn=number,
                at=now,
                kind="find",
                query=query,
                added=result.added,
                removed=result.removed,
                reasons=tuple(result.reasons.get(name, "") for name in result.removed),
            )
            return Change(with_record(result.working_set, record), (chosen, result))

        try:
            change = await self.store.update(conversation, turn)
        except CapacityError as exc:  # only autonomous mode can grow past the capacity
            current = await self.store.get(conversation) or WorkingSet()
            needed = max(1, exc.size - exc.capacity)
            oldest = _oldest(current, max(10, needed))
            raise WorkingSetFull(len(current), exc.capacity, oldest, needed=needed) from None
        chosen, result = change.result
        still = tuple(name for name in matched if name in change.working_set.tools)
        view = MemoryView(
            conversation, chosen, len(change.working_set), rules.capacity, result.added, result.removed, still
        )
        return await self._changed(view)

    async def on_call(self, conversation: str, name: str) -> MemoryView:
        """A successful call marks the tool as in use (adding it when absent, room allowing)."""
        now = time.time()

        def called(working_set: WorkingSet) -> Change[tuple[Mode, bool]]:
            chosen = self.mode_of(working_set)
            absent = name not in working_set.tools
            if absent and len(working_set) >= self.rules.capacity:
                return Change(working_set, (chosen, False))  # full: the call ran, the set stays
            updated = record_call(working_set, name, now=now)
            if absent:  # only a call that changes the set is history worth showing
                record = TurnRecord(turn=working_set.turn, at=now, kind="call", added=(name,))
                updated = with_record(updated, record)
            return Change(updated, (chosen, absent))

        change = await self.store.update(conversation, called)
        chosen, added = change.result
        count = len(change.working_set)
        view = MemoryView(conversation, chosen, count, self.rules.capacity, (name,) if added else ())
        return await self._changed(view)

    async def forget(self, conversation: str, names: Sequence[str]) -> MemoryView:
        now = time.time()

        def drop(working_set: WorkingSet) -> Change[tuple[Mode, Pruned]]:
            result = forget(working_set, names)
            updated = result.working_set
            if result.removed:
                reasons = ("forgotten",) * len(result.removed)
                record = TurnRecord(
                    turn=working_set.turn, at=now, kind="forget", removed=result.removed, reasons=reasons
                )
                updated = with_record(updated, record)
            return Change(updated, (self.mode_of(working_set), result))

        change = await self.store.update(conversation, drop)
        chosen, result = change.result
        view = MemoryView(
            conversation, chosen, len(change.working_set), self.rules.capacity, (), result.removed
        )
        return await self._changed(view)

    async def get(self, conversation: str) -> WorkingSet | None:
        return await self.store.get(conversation)

    async def clear(self, conversation: str) -> bool:
        return await self.store.clear(conversation)
