"""One contract for both vector indexes: the embedded qdrant-edge shard (in tmp_path) and
qdrant-client's local mode (":memory:"). Real vectors from numpy with fixed seeds."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from retrieval.index import (
    HnswSettings,
    IndexedTool,
    IndexFilter,
    IndexMismatchError,
    IndexScope,
    VectorIndex,
    open_index,
    tool_payload,
)
from retrieval.index_edge import EdgeVectorIndex
from retrieval.index_qdrant import QdrantVectorIndex

# Vectors are stored as float16 (HnswSettings.float16): a unit vector's components keep
# about 3 significant digits, so stored vectors and scores match float32 to ~1e-3.
SCORE_TOL = 2e-3
VECTOR_TOL = 1e-3
DIM = 32
NAMES = ("description", "usage")
Vectors = NDArray[np.float32]
Factory = Callable[..., VectorIndex]


def unit(rows: NDArray[Any]) -> Vectors:
    rows = np.atleast_2d(rows)
    normalised: Vectors = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return normalised


def tool(
    tool_id: str, description: Vectors | None, usage: Vectors | None = None, **payload: Any
) -> IndexedTool:
    vectors = {name: v for name, v in (("description", description), ("usage", usage)) if v is not None}
    return IndexedTool(tool_id, vectors, tool_payload(payload.pop("server", "srv"), **payload))


def exact_top(query: Vectors, candidates: dict[str, Vectors], k: int) -> list[str]:
    """Ground truth: the k best cosine matches by numpy."""
    scored = sorted(candidates, key=lambda t: -float(candidates[t] @ query))
    return scored[:k]


@pytest.fixture(params=["edge", "qdrant"])
def make_index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """Opens fresh indexes of one engine; closes them all afterwards."""
    opened: list[VectorIndex] = []
    counter = itertools.count()

    def make(dim: int = DIM, names: Sequence[str] = NAMES, hnsw: HnswSettings | None = None) -> VectorIndex:
        index: VectorIndex
        if request.param == "edge":
            index = EdgeVectorIndex(
                tmp_path / f"index{next(counter)}", dim=dim, vector_names=names, hnsw=hnsw
            )
        else:
            index = QdrantVectorIndex.in_memory(dim=dim, vector_names=names)
        opened.append(index)
        return index

    yield make
    for index in opened:
        index.close()


@pytest.fixture
def index(make_index: Factory) -> VectorIndex:
    return make_index()


# -- search ------------------------------------------------------------------------------------


def test_search_orders_by_cosine(index: VectorIndex) -> None:
    rng = np.random.default_rng(1)
    vectors = unit(rng.normal(size=(60, DIM)))
    index.upsert([tool(f"t{i}", v) for i, v in enumerate(vectors)])
    query = unit(rng.normal(size=DIM))[0]
    hits = index.search("description", query, 10)
    expected = exact_top(query, {f"t{i}": v for i, v in enumerate(vectors)}, 10)
    assert [t for t, _ in hits] == expected
    for tool_id, score in hits:
        assert score == pytest.approx(float(vectors[int(tool_id[1:])] @ query), abs=SCORE_TOL)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert [t for t, _ in index.search("description", query, 10, exact=True)] == expected


def test_search_batch_matches_single_searches(index: VectorIndex) -> None:
    rng = np.random.default_rng(2)
    index.upsert([tool(f"t{i}", v) for i, v in enumerate(unit(rng.normal(size=(40, DIM))))])
    queries = unit(rng.normal(size=(5, DIM)))
    batch = index.search_batch("description", queries, 7, IndexFilter())
    assert len(batch) == 5
    for query, hits in zip(queries, batch, strict=True):
        assert [t for t, _ in hits] == [t for t, _ in index.search("description", query, 7)]
    assert index.search_batch("description", np.zeros((0, DIM), np.float32), 3) == []


def test_named_vectors_are_searched_independently(index: VectorIndex) -> None:
    rng = np.random.default_rng(3)
    d_a, u_a, d_b = unit(rng.normal(size=(3, DIM)))
    index.upsert([tool("a", d_a, u_a), tool("b", d_b)])  # b has no usage vector yet
    assert index.search("description", d_b, 1)[0][0] == "b"
    assert index.search("description", d_a, 1)[0][0] == "a"
    assert [t for t, _ in index.search("usage", d_b, 5)] == ["a"]  # b is not in the usage space
    [(found, score)] = index.search("usage", u_a, 1)
    assert found == "a"
    assert score == pytest.approx(1.0, abs=SCORE_TOL)
    assert set(index.get_vectors(["a", "b"], "usage")) == {"a"}
    assert index.count() == 2


def test_bad_vectors_are_rejected(index: VectorIndex) -> None:
    rng = np.random.default_rng(4)
    good = unit(rng.normal(size=DIM))[0]
    with pytest.raises(ValueError, match="shape"):
        index.upsert([tool("a", unit(rng.normal(size=DIM + 1))[0])])
    with pytest.raises(ValueError, match="unknown vector name"):
        index.upsert([IndexedTool("a", {"other": good}, tool_payload("s"))])
    with pytest.raises(ValueError, match="non-zero"):
        index.upsert([tool("a", np.zeros(DIM, np.float32))])
    with pytest.raises(ValueError, match="shape"):
        index.search("description", good[:-1], 3)
    with pytest.raises(ValueError, match="unknown vector name"):
        index.search("nope", good, 3)
    with pytest.raises(ValueError, match="enabled"):
        IndexedTool("a", {"description": good}, {"server": "s"})
    assert index.count() == 0


# -- filters -----------------------------------------------------------------------------------

NEAR = 150  # tools close to the query, which each filter case excludes
FAR = 30  # tools further away, which it allows
LIMIT = 5

# (case, payload of the near tools, payload of the far tools, filter)
FILTER_CASES: list[tuple[str, dict[str, Any], dict[str, Any], IndexFilter | None]] = [
    ("servers", {"server": "noisy"}, {"server": "good"}, IndexFilter(servers=frozenset({"good", "absent"}))),
    (
        "exclude_servers",
        {"server": "noisy"},
        {"server": "good"},
        IndexFilter(exclude_servers=frozenset({"noisy"})),
    ),
    ("categories", {"category": "maps"}, {"category": "mail"}, IndexFilter(categories=frozenset({"mail"}))),
    (
        "categories_none",
        {"category": None},
        {"category": "mail"},
        IndexFilter(categories=frozenset({"mail"})),
    ),
    ("read_only", {"read_only": False}, {"read_only": True}, IndexFilter(read_only=True)),
    ("read_only_unknown", {"read_only": None}, {"read_only": True}, IndexFilter(read_only=True)),
    ("writes", {"read_only": True}, {"read_only": False}, IndexFilter(read_only=False)),
    ("destructive", {"destructive": True}, {"destructive": False}, IndexFilter(exclude_destructive=True)),
    # An unknown hint is not a destructive one: only a stated True is excluded.
    (
        "destructive_unknown",
        {"destructive": True},
        {"destructive": None},
        IndexFilter(exclude_destructive=True),
    ),
    ("disabled_default", {"enabled": False}, {"enabled": True}, IndexFilter()),
    ("disabled_no_filter", {"enabled": False}, {"enabled": True}, None),
    ("tool_ids", {}, {}, IndexFilter(tool_ids=frozenset(f"far{i}" for i in range(FAR)) | {"missing"})),
    (
        "combined",
        {"server": "good", "category": "maps"},
        {"server": "good", "category": "mail", "read_only": True},
        IndexFilter(
            servers=frozenset({"good"}),
            categories=frozenset({"mail", "x"}),
            read_only=True,
            exclude_servers=frozenset({"noisy"}),
        ),
    ),
    (
        "scope_servers",
        {"server": "noisy"},
        {"server": "good"},
        IndexFilter(scope=IndexScope(servers=frozenset({"good"}))),
    ),
    (
        "scope_tools",
        {"server": "good"},
        {"server": "good"},
        IndexFilter(scope=IndexScope(tool_ids=frozenset(f"far{i}" for i in range(FAR)) | {"missing"})),
    ),
    (
        "scope_and_filters",
        {"server": "good", "read_only": False},
        {"server": "good", "read_only": True},
        IndexFilter(read_only=True, scope=IndexScope(servers=frozenset({"good"}))),
    ),
    (
        "destructive_and_servers",
        {"server": "good", "destructive": True},
        {"server": "good"},
        IndexFilter(exclude_destructive=True, exclude_servers=frozenset({"noisy"})),
    ),
]


def needle_corpus(
    near: dict[str, Any], far: dict[str, Any]
) -> tuple[Vectors, list[IndexedTool], dict[str, Vectors]]:
    """A query, NEAR tools around it with `near` payload, FAR weaker ones with `far` payload."""
    rng = np.random.default_rng(5)
    query = unit(rng.normal(size=DIM))[0]
    near_vecs = unit(query + 0.3 * rng.normal(size=(NEAR, DIM)) / np.sqrt(DIM))
    far_vecs = unit(query + 1.5 * rng.normal(size=(FAR, DIM)) / np.sqrt(DIM))
    tools = [tool(f"near{i}", v, **near) for i, v in enumerate(near_vecs)]
    tools += [tool(f"far{i}", v, **far) for i, v in enumerate(far_vecs)]
    return query, tools, {f"far{i}": v for i, v in enumerate(far_vecs)}


@pytest.mark.parametrize(("case", "near", "far", "flt"), FILTER_CASES, ids=[c[0] for c in FILTER_CASES])
def test_filter_is_applied_inside_the_query(
    index: VectorIndex, case: str, near: dict[str, Any], far: dict[str, Any], flt: IndexFilter | None
) -> None:
    query, tools, allowed = needle_corpus(near, far)
    index.upsert(tools)
    # Every near tool beats every far one, so only an engine-side filter can fill `limit`.
    unfiltered = index.search("description", query, NEAR, IndexFilter(include_disabled=True))
    assert all(t.startswith("near") for t, _ in unfiltered)
    hits = index.search("description", query, LIMIT, flt)
    assert [t for t, _ in hits] == exact_top(query, allowed, LIMIT)
    assert index.search_batch("description", query[None, :], LIMIT, flt) == [hits]
    assert index.count(flt if flt is not None else IndexFilter()) == FAR


def test_include_disabled_returns_disabled_tools(index: VectorIndex) -> None:
    query, tools, _ = needle_corpus({"enabled": False}, {"enabled": True})
    index.upsert(tools)
    hits = index.search("description", query, LIMIT, IndexFilter(include_disabled=True))
    assert len(hits) == LIMIT
    assert all(t.startswith("near") for t, _ in hits)
    assert index.count(IndexFilter(include_disabled=True)) == NEAR + FAR
    assert index.count() == NEAR + FAR  # no filter: everything stored


def test_empty_allow_lists_match_nothing(index: VectorIndex) -> None:
    query, tools, _ = needle_corpus({}, {})
    index.upsert(tools)
    for flt in (
        IndexFilter(servers=frozenset()),
        IndexFilter(tool_ids=frozenset()),
        IndexFilter(categories=frozenset()),
    ):
        assert index.search("description", query, LIMIT, flt) == []
        assert index.count(flt) == 0
    assert index.search("description", query, 0) == []


def test_scope_is_servers_or_tools(index: VectorIndex) -> None:
    """A scope grants the tools of its servers plus its named tools, and nothing near them."""
    query, tools, allowed = needle_corpus({"server": "noisy"}, {})
    half = FAR // 2
    moved = [
        IndexedTool(
            t.tool_id, t.vectors, {**t.payload, "server": "good" if int(t.tool_id[3:]) < half else "other"}
        )
        if t.tool_id.startswith("far")
        else t
        for t in tools
    ]
    index.upsert(moved)
    scope = IndexScope(servers=frozenset({"good"}), tool_ids=frozenset(f"far{i}" for i in range(half, FAR)))
    flt = IndexFilter(scope=scope)
    hits = index.search("description", query, LIMIT, flt)
    assert [t for t, _ in hits] == exact_top(query, allowed, LIMIT)
    assert index.count(flt) == FAR
    everything = index.search("description", query, NEAR + FAR, flt)
    assert {t for t, _ in everything} == set(allowed)
    # AND with the other fields: the scope never widens a filter.
    other = IndexFilter(servers=frozenset({"other", "noisy"}), scope=scope)
    assert {t for t, _ in index.search("description", query, NEAR + FAR, other)} == {
        f"far{i}" for i in range(half, FAR)
    }
    index.set_payload(["far0"], {"enabled": False})
    assert "far0" not in {t for t, _ in index.search("description", query, NEAR + FAR, flt)}
    assert index.count(flt) == FAR - 1
    for empty in (IndexScope(), IndexScope(servers=frozenset(), tool_ids=frozenset())):
        assert index.search("description", query, LIMIT, IndexFilter(scope=empty)) == []
        assert index.count(IndexFilter(scope=empty)) == 0
    unknown = IndexFilter(scope=IndexScope(servers=frozenset({"absent"}), tool_ids=frozenset({"missing"})))
    assert index.search("description", query, LIMIT, unknown) == []


# -- writes ------------------------------------------------------------------------------------


def test_upsert_replaces_a_tool_wholly(index: VectorIndex) -> None:
    rng = np.random.default_rng(6)
    d1, u1, d2 = unit(rng.normal(size=(3, DIM)))
    index.upsert([tool("a", d1, u1, server="one", category="x")])
    index.upsert([tool("a", d2, server="two")])
    assert index.count() == 1
    assert index.get_vectors(["a"], "usage") == {}
    np.testing.assert_allclose(index.get_vectors(["a"], "description")["a"], d2, atol=VECTOR_TOL)
    payload = index.get_payloads(["a"])["a"]
    assert (payload["server"], payload["category"], payload["tool_id"]) == ("two", None, "a")


def test_upsert_batches_and_ids(make_index: Factory) -> None:
    index = make_index(dim=8)
    rng = np.random.default_rng(7)
    ids = {f"tool-{i}" for i in range(1300)}  # more than one write batch and one scroll page
    index.upsert([tool(t, v) for t, v in zip(sorted(ids), unit(rng.normal(size=(1300, 8))), strict=True)])
    assert index.ids() == ids
    assert index.count() == 1300


def test_update_vectors_keeps_payload_and_other_vectors(index: VectorIndex) -> None:
    rng = np.random.default_rng(8)
    d_a, d_b, usage = unit(rng.normal(size=(3, DIM)))
    index.upsert([tool("a", d_a, server="s1", category="c", read_only=True), tool("b", d_b)])
    before = index.get_payloads(["a"])["a"]
    index.update_vectors("a", {"usage": usage})
    assert index.get_payloads(["a"])["a"] == before
    np.testing.assert_allclose(index.get_vectors(["a"], "description")["a"], d_a, atol=VECTOR_TOL)
    [(found, score)] = index.search("usage", usage, 3, IndexFilter(read_only=True))
    assert found == "a"
    assert score == pytest.approx(1.0, abs=SCORE_TOL)
    index.update_vectors("a", {"usage": d_b})  # replace again: O(1), no re-upsert
    assert index.search("usage", d_b, 1)[0][0] == "a"
    with pytest.raises(KeyError):
        index.update_vectors("missing", {"usage": usage})
    with pytest.raises(ValueError, match="shape"):
        index.update_vectors("a", {"usage": usage[:-1]})


def test_set_payload_disables(index: VectorIndex) -> None:
    query, tools, allowed = needle_corpus({"server": "noisy"}, {"server": "good"})
    index.upsert(tools)
    near_ids = [f"near{i}" for i in range(NEAR)]
    index.set_payload([*near_ids, "unknown"], {"enabled": False})
    assert [t for t, _ in index.search("description", query, LIMIT)] == exact_top(query, allowed, LIMIT)
    assert index.count(IndexFilter()) == FAR
    assert index.count() == NEAR + FAR
    assert "unknown" not in index.ids()
    payload = index.get_payloads(["near0"])["near0"]
    assert (payload["enabled"], payload["server"]) == (False, "noisy")  # merged, not replaced
    index.set_payload(near_ids, {"enabled": True})
    assert index.search("description", query, 1)[0][0].startswith("near")
    with pytest.raises(ValueError, match="tool_id"):
        index.set_payload(["near0"], {"tool_id": "x"})
    with pytest.raises(ValueError, match="enabled"):
        index.set_payload(["near0"], {"enabled": None})


def test_delete_removes_at_once(index: VectorIndex) -> None:
    query, tools, _ = needle_corpus({}, {})
    index.upsert(tools)
    best = index.search("description", query, 1)[0][0]
    index.delete([best, "never-stored"])
    assert best not in [t for t, _ in index.search("description", query, NEAR + FAR)]
    assert best not in index.ids()
    assert index.get_vectors([best], "description") == {}
    assert index.count() == NEAR + FAR - 1
    index.delete([])


def test_count_with_filters(index: VectorIndex) -> None:
    rng = np.random.default_rng(9)
    vectors = unit(rng.normal(size=(12, DIM)))
    specs: list[dict[str, Any]] = [
        {"server": "a", "category": "mail", "read_only": True},
        {"server": "a", "category": "maps", "read_only": False},
        {"server": "b", "category": "mail", "read_only": None},
        {"server": "b", "category": None, "read_only": True, "enabled": False},
    ]
    index.upsert([tool(f"t{i}", v, **specs[i % 4]) for i, v in enumerate(vectors)])
    assert index.count() == 12
    assert index.count(IndexFilter()) == 9
    assert index.count(IndexFilter(servers=frozenset({"a"}))) == 6
    assert index.count(IndexFilter(exclude_servers=frozenset({"a"}))) == 3
    assert index.count(IndexFilter(exclude_servers=frozenset({"a"}), include_disabled=True)) == 6
    assert index.count(IndexFilter(categories=frozenset({"mail"}))) == 6
    assert index.count(IndexFilter(read_only=True)) == 3
    assert index.count(IndexFilter(read_only=True, include_disabled=True)) == 6
    assert index.count(IndexFilter(read_only=False)) == 3
    assert index.count(IndexFilter(tool_ids=frozenset({"t0", "t3", "zz"}))) == 1


def test_destructive_hint_can_be_set_later(index: VectorIndex) -> None:
    query, tools, _ = needle_corpus({}, {})
    index.upsert(tools)
    flt = IndexFilter(exclude_destructive=True)
    best = index.search("description", query, 1, flt)[0][0]
    index.set_payload([best], {"destructive": True})
    assert best not in [t for t, _ in index.search("description", query, NEAR + FAR, flt)]
    assert index.count(flt) == NEAR + FAR - 1
    with pytest.raises(ValueError, match="destructive"):
        index.set_payload([best], {"destructive": "yes"})


# -- layout and persistence ----------------------------------------------------------------------


def test_layout_mismatch_is_reported(tmp_path: Path) -> None:
    EdgeVectorIndex(tmp_path / "edge", dim=DIM, vector_names=NAMES).close()
    with pytest.raises(IndexMismatchError):
        EdgeVectorIndex(tmp_path / "edge", dim=DIM * 2, vector_names=NAMES)
    with pytest.raises(IndexMismatchError):
        EdgeVectorIndex(tmp_path / "edge", dim=DIM, vector_names=("description",))
    with pytest.raises(IndexMismatchError):
        open_index(None, tmp_path / "edge", dim=DIM, vector_names=(*NAMES, "extra"))
    EdgeVectorIndex(tmp_path / "edge", dim=DIM, vector_names=NAMES).close()  # still usable

    from qdrant_client import QdrantClient

    client = QdrantClient(location=":memory:")
    QdrantVectorIndex(client, collection="tools", dim=DIM, vector_names=NAMES, owns_client=False)
    with pytest.raises(IndexMismatchError):
        QdrantVectorIndex(client, collection="tools", dim=DIM * 2, vector_names=NAMES, owns_client=False)
    with pytest.raises(IndexMismatchError):
        QdrantVectorIndex(client, collection="tools", dim=DIM, vector_names=("usage",), owns_client=False)
    client.close()


def test_edge_index_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "edge"
    query, tools, allowed = needle_corpus({"server": "noisy"}, {"server": "good"})
    first = open_index(None, path, dim=DIM, vector_names=NAMES)
    assert isinstance(first, EdgeVectorIndex)
    first.upsert(tools[:100])
    first.optimize()
    first.upsert(tools[100:])  # after optimize: lives only in the WAL and appendable segment
    first.update_vectors("far0", {"usage": query})
    first.set_payload(["near0"], {"enabled": False})
    expected = first.search("description", query, LIMIT, IndexFilter(servers=frozenset({"good"})))
    first.close()
    first.close()  # idempotent

    again = open_index(None, path, dim=DIM, vector_names=NAMES)
    try:
        assert again.count() == NEAR + FAR
        assert again.ids() == {t.tool_id for t in tools}
        assert again.search("description", query, LIMIT, IndexFilter(servers=frozenset({"good"}))) == expected
        assert [t for t, _ in expected] == exact_top(query, allowed, LIMIT)
        assert again.search("usage", query, 1)[0][0] == "far0"
        assert again.get_payloads(["near0"])["near0"]["enabled"] is False
    finally:
        again.close()


# -- HNSW recall -------------------------------------------------------------------------------


def embedding_like(rng: np.random.Generator, n: int, dim: int, topics: int) -> tuple[Vectors, Vectors]:
    """Topical data in a low-rank subspace with a shared offset, like sentence embeddings;
    returns n points and 100 queries drawn from the same topics."""
    latent = 64
    basis = np.linalg.qr(rng.normal(size=(dim, latent)))[0]
    centres = rng.normal(size=(topics, latent))
    offset = rng.normal(size=dim)
    offset *= 0.35 * np.sqrt(latent) / np.linalg.norm(offset)

    def draw(k: int) -> Vectors:
        z = centres[rng.integers(0, topics, k)] + 1.2 * rng.normal(size=(k, latent))
        return unit(z @ basis.T + 0.5 * np.sqrt(latent / dim) * rng.normal(size=(k, dim)) + offset)

    return draw(n), draw(100)


def recall_at_10(
    index: VectorIndex, queries: Vectors, truth: list[list[str]], flt: IndexFilter | None
) -> float:
    found = index.search_batch("description", queries, 10, flt)
    return float(np.mean([len({t for t, _ in f} & set(g)) / 10 for f, g in zip(found, truth, strict=True)]))


def test_hnsw_recall_against_exact_search(make_index: Factory) -> None:
    dim = 384
    rng = np.random.default_rng(10)
    uniform = unit(rng.normal(size=(2000, dim)))
    clustered, clustered_queries = embedding_like(rng, 3000, dim, topics=60)
    vectors = np.vstack([uniform, clustered])
    queries = np.vstack([unit(rng.normal(size=(50, dim))), clustered_queries])
    # Low thresholds so the edge engine builds HNSW over this small set and searches it.
    index = make_index(dim=dim, hnsw=HnswSettings(full_scan_threshold_kb=10, indexing_threshold_kb=10))
    index.upsert([tool(f"t{i}", v, server=f"s{i % 20}") for i, v in enumerate(vectors)])
    index.optimize()
    if isinstance(index, EdgeVectorIndex):
        assert index.shard.info().indexed_vectors_count >= len(vectors)
    else:
        # Local mode is exact and evaluates filters in Python (~0.1 s a query here): sample.
        queries = queries[::15]
    ids = [f"t{i}" for i in range(len(vectors))]
    for flt in (None, IndexFilter(exclude_servers=frozenset(f"s{i}" for i in range(15)))):
        exact = [
            [t for t, _ in hits] for hits in index.search_batch("description", queries, 10, flt, exact=True)
        ]
        allowed = [i for i, t in enumerate(ids) if flt is None or f"s{i % 20}" not in flt.exclude_servers]
        truth = [[ids[allowed[j]] for j in np.argsort(-(vectors[allowed] @ q))[:10]] for q in queries]
        # float16 storage may swap near-ties at rank 10 (random 384-dim vectors sit close).
        overlap = np.mean([len(set(e) & set(t)) / 10 for e, t in zip(exact, truth, strict=True)])
        assert overlap >= 0.995
        assert recall_at_10(index, queries, truth, flt) >= 0.99
