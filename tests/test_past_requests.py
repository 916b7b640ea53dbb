"""Past requests: grouping uses by request key, idempotence, the window, and the votes."""

from __future__ import annotations

import numpy as np

from retrieval.past import PastRequests, request_key


def _unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_request_key_is_stable_and_tells_vectors_apart() -> None:
    a = _unit(1.0, 0.0, 0.5)
    assert request_key(a) == request_key(a.copy())
    assert request_key(a) == request_key(a.astype(np.float64).astype(np.float32))
    assert request_key(a) != request_key(_unit(1.0, 0.0, 0.4))
    assert len(request_key(a)) == 32


def test_uses_of_one_request_group_even_when_not_consecutive() -> None:
    past = PastRequests()
    q1, q2 = _unit(1.0, 0.0), _unit(0.0, 1.0)
    assert past.add("search", q1)
    assert past.add("weather", q2)
    assert past.add("details", q1)  # the first request again, after another one
    assert len(past) == 2
    assert past.knows(request_key(q1), "details")
    scores = np.array([[1.0, 0.5, 0.0]])  # head: search
    assert past.co.share(scores, ["search", "details", "weather"], 1).tolist() == [0.0, 1.0, 0.0]


def test_counting_a_use_twice_changes_nothing() -> None:
    past = PastRequests()
    q = _unit(1.0, 2.0)
    assert past.add("a", q)
    assert past.add("b", q, request_key(q))
    assert not past.add("b", q)
    assert not past.add("a", q, request_key(q))
    scores = np.array([[1.0, 0.0]])
    assert past.co.share(scores, ["a", "b"], 1).tolist() == [0.0, 1.0]


def test_the_oldest_requests_leave_the_window_with_their_co_usage() -> None:
    past = PastRequests(capacity=2)
    first = _unit(1.0, 0.0, 0.0)
    past.add("a", first)
    past.add("b", first)
    past.add("c", _unit(0.0, 1.0, 0.0))
    past.add("d", _unit(0.0, 0.0, 1.0))  # pushes out the first request (a, b)
    assert len(past) == 2
    assert not past.knows(request_key(first), "a")
    assert past.co.share(np.array([[1.0, 0.0]]), ["a", "b"], 1).tolist() == [0.0, 0.0]


def test_votes_come_from_the_nearest_requests() -> None:
    past = PastRequests()
    past.add("near", _unit(1.0, 0.1))
    past.add("far", _unit(-1.0, 0.2))
    past.add("other", _unit(0.9, 0.3))
    votes = past.votes(_unit(1.0, 0.0), ["near", "far", "other", "unused"], k=2)
    assert votes["near"] > votes["other"] > 0.0
    assert votes["far"] == 0.0
    assert votes["unused"] == 0.0
    past.add("late", _unit(1.0, 0.0))  # a new request reaches the next vote
    assert past.votes(_unit(1.0, 0.0), ["late"], k=1)["late"] > 0.99
    past.clear()
    assert past.votes(_unit(1.0, 0.0), ["near"], k=2) == {"near": 0.0}
    assert not past.co
