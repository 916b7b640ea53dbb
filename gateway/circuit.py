"""A circuit breaker per upstream server: stop calling a server that keeps failing.

closed → (N consecutive failures) → open → (cool-down passes) → half-open: one trial call goes
through while every other call still fails fast → the trial succeeds: closed; it fails: open
again with a fresh cool-down.

Only the transport counts: a server that cannot be reached, times out or drops the connection
fails; a server that answers, even with an error, succeeds. State lives in this process: each
gateway replica learns about a broken upstream on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

CircuitState = Literal["closed", "open", "half_open"]


@dataclass(frozen=True, slots=True)
class CircuitSnapshot:
    """What a breaker looks like now. `opened_at` is wall-clock epoch seconds; `retry_in_s` is
    how long until a trial call may go through (0 once half-open; None when closed)."""

    state: CircuitState
    consecutive_failures: int
    opened_at: float | None
    retry_in_s: float | None
    last_error: str | None


class CircuitOpenError(Exception):
    """Raised by `CircuitBreaker.admit` when calls must fail fast."""

    def __init__(self, snapshot: CircuitSnapshot, *, trial_running: bool) -> None:
        super().__init__(f"circuit {snapshot.state}")
        self.snapshot = snapshot
        self.trial_running = trial_running


@dataclass(frozen=True, slots=True)
class Ticket:
    """One admitted call. Its outcome counts only while the breaker is still in the period that
    admitted it: a call started before the circuit opened cannot close or re-open it later."""

    generation: int
    trial: bool


class CircuitBreaker:
    """The breaker of one upstream. Not thread-safe; meant for one event loop."""

    def __init__(
        self,
        *,
        failures_to_open: int = 5,
        cooldown_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if failures_to_open < 1 or cooldown_s <= 0:
            raise ValueError("failures_to_open must be at least 1 and cooldown_s positive")
        self._threshold = failures_to_open
        self._cooldown = cooldown_s
        self._clock = clock
        self._wall = wall_clock
        self._failures = 0
        self._open_since: float | None = None  # on `clock`; None while closed
        self._opened_at: float | None = None  # on `wall_clock`, for people
        self._trial_running = False
        self._generation = 0
        self._last_error: str | None = None

    # -- the call path ---------------------------------------------------------------------------

    def admit(self) -> Ticket:
        """Let a call through, or raise `CircuitOpenError` at once. While open, the first call
        after the cool-down becomes the trial; calls meanwhile fail fast."""
        if self._open_since is None:
            return Ticket(self._generation, trial=False)
        if self._trial_running or self._remaining() > 0:
            raise CircuitOpenError(self.snapshot(), trial_running=self._trial_running)
        self._trial_running = True
        return Ticket(self._generation, trial=True)

    def check(self, ticket: Ticket) -> None:
        """Raise `CircuitOpenError` if the circuit opened after `ticket` was admitted (e.g. while
        the call waited its turn to connect), so that a queue of calls does not keep retrying."""
        if ticket.generation != self._generation and self._open_since is not None:
            raise CircuitOpenError(self.snapshot(), trial_running=self._trial_running)

    def succeeded(self, ticket: Ticket) -> None:
        """The server answered (a result, or an error it chose to send)."""
        if not self._current(ticket):
            return
        self._failures = 0
        if ticket.trial or self._open_since is not None:
            self._close()

    def failed(self, ticket: Ticket, error: str) -> None:
        """The server could not be reached or the transport broke."""
        if not self._current(ticket):
            return
        self._failures += 1
        self._last_error = error
        if ticket.trial or self._failures >= self._threshold:
            self._open()

    def attempt(self) -> Attempt:
        """`admit` wrapped in an `Attempt` that settles this breaker once."""
        return Attempt(self, self.admit())

    def abandoned(self, ticket: Ticket) -> None:
        """The call ended with no verdict (cancelled): free the trial slot for the next call."""
        if ticket.trial and self._current(ticket):
            self._trial_running = False

    # -- operators -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Close the circuit now (an operator fixed the server); calls in flight no longer count."""
        self._close()
        self._failures = 0
        self._last_error = None

    def snapshot(self) -> CircuitSnapshot:
        """The current state, for the admin API, metrics and error messages."""
        if self._open_since is None:
            return CircuitSnapshot("closed", self._failures, None, None, self._last_error)
        remaining = self._remaining()
        state: CircuitState = "open" if remaining > 0 and not self._trial_running else "half_open"
        return CircuitSnapshot(state, self._failures, self._opened_at, remaining, self._last_error)

    # -- internals -------------------------------------------------------------------------------

    def _current(self, ticket: Ticket) -> bool:
        return ticket.generation == self._generation

    def _remaining(self) -> float:
        assert self._open_since is not None
        return max(0.0, self._open_since + self._cooldown - self._clock())

    def _open(self) -> None:
        self._open_since = self._clock()
        self._opened_at = self._wall()
        self._trial_running = False
        self._generation += 1

    def _close(self) -> None:
        self._open_since = None
        self._opened_at = None
        self._trial_running = False
        self._generation += 1


@dataclass
class Attempt:
    """One admitted call; whichever verdict comes first settles the breaker, later ones do not."""

    breaker: CircuitBreaker
    ticket: Ticket
    settled: bool = False

    def check(self) -> None:
        """Raise `CircuitOpenError` if the circuit opened while this call waited (to connect, or
        for a concurrency slot)."""
        try:
            self.breaker.check(self.ticket)
        except CircuitOpenError:
            self.settled = True
            raise

    def answered(self) -> None:
        if not self.settled:
            self.settled = True
            self.breaker.succeeded(self.ticket)

    def failed(self, error: str) -> None:
        if not self.settled:
            self.settled = True
            self.breaker.failed(self.ticket, error)

    def finish(self) -> None:
        """End the attempt; with no verdict yet (cancelled), it frees a trial slot."""
        if not self.settled:
            self.settled = True
            self.breaker.abandoned(self.ticket)


def unavailable_message(server: str, error: CircuitOpenError) -> str:
    """What the model reads when a call fails fast: which server, why, and when it is retried."""
    snap = error.snapshot
    when = (
        "a trial call is running now"
        if error.trial_running
        else f"retrying in {math.ceil(snap.retry_in_s or 0)}s"
    )
    message = f"{server} is unavailable: {snap.consecutive_failures} consecutive failures; {when}"
    return f"{message} (last error: {snap.last_error})" if snap.last_error else message
