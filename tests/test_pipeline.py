"""The retrieval pipeline on a small real corpus (a ToolBench slice) with the real embedder
(ONNX int8 export of all-MiniLM-L6-v2) and the embedded Qdrant index."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from retrieval import pipeline as pipeline_module
from retrieval.corpus import Corpus, QuerySet, load_toolbench
from retrieval.embedder import OnnxEmbedder, load_onnx
from retrieval.evaluate import EvalOptions, evaluate, holdout_split, records_of
from retrieval.fusion import adaptive_cut
from retrieval.index import IndexFilter, open_index
from retrieval.pipeline import VECTOR_NAMES, Hit, RetrievalSettings, Retriever, embedding_text
from tests.support import shared_data


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> OnnxEmbedder:
    return load_onnx(quantize=True, cache_dir=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def slice_() -> tuple[Corpus, QuerySet]:
    """40 real queries, every tool they need, and 160 other tools as distractors."""
    corpus, queries = load_toolbench(shared_data())
    chosen = queries.queries[:40]
    needed = {tool for query in chosen for tool in query.relevant}
    tools = [t for t in corpus.tools if t.tool_id in needed]
    tools += [t for t in corpus.tools if t.tool_id not in needed][:160]
    return (
        Corpus(tools=tuple(tools), categories=corpus.categories, flaws=corpus.flaws),
        QuerySet(queries=tuple(chosen), flaws=queries.flaws),
    )


def _retriever(embedder: OnnxEmbedder, path: Path) -> Retriever:
    return Retriever(embedder, open_index(None, path, dim=embedder.dim, vector_names=VECTOR_NAMES))


def test_finds_the_tools_a_query_needs(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, queries = slice_
    retriever = _retriever(embedder, tmp_path / "index")
    assert retriever.upsert(records_of(corpus)) == len(corpus.tools)
    assert retriever.upsert(records_of(corpus)) == 0  # unchanged versions are not re-embedded
    recalls = []
    for query in queries.queries:
        ranked = [hit.tool_id for hit in retriever.search(query.text, 10)]
        recalls.append(len(set(ranked) & set(query.relevant)) / len(query.relevant))
        assert len(ranked) == 10
    # BM25 alone reaches ~0.80 Recall@10 on the full corpus; a 200-tool slice is easier.
    assert float(np.mean(recalls)) > 0.8

    hit = retriever.search(queries.queries[0].text, 1)[0]
    assert set(hit.stages) >= {"dense", "lexical", "fused", "server"}
    assert hit.why


def test_removed_tools_disappear_and_filters_apply_inside(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, queries = slice_
    retriever = _retriever(embedder, tmp_path / "index")
    retriever.upsert(records_of(corpus))
    query = queries.queries[0]
    best = retriever.search(query.text, 1)[0].tool_id
    retriever.remove([best])
    assert best not in [h.tool_id for h in retriever.search(query.text, 20)]

    server = corpus.tools[0].server
    hits = retriever.search(query.text, 5, IndexFilter(servers=frozenset([server])))
    assert hits
    assert all(retriever.record(h.tool_id).text.server == server for h in hits)  # type: ignore[union-attr]


def test_usage_moves_a_tool_toward_its_queries(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, _ = slice_
    retriever = _retriever(embedder, tmp_path / "index")
    retriever.upsert(records_of(corpus))
    target = corpus.tools[-1].tool_id  # a distractor no query needs
    phrasing = "please jot this down in my personal scrapbook"
    vector = retriever.embed_query(phrasing)
    before = {h.tool_id: h.stages["dense"] for h in retriever.search(phrasing, 200)}.get(target, 0.0)
    for _ in range(5):
        assert retriever.record_use(target, vector) is not None
    after = {h.tool_id: h.stages["dense"] for h in retriever.search(phrasing, 200)}[target]
    assert after > before + 0.1
    assert retriever.record_use("no/such tool", vector) is None


@pytest.mark.parametrize("page", [1000, 7])
def test_a_reopened_index_is_adopted_without_re_embedding(
    embedder: OnnxEmbedder,
    slice_: tuple[Corpus, QuerySet],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    page: int,
) -> None:
    """Adopted a page of tools at a time (7: many pages, one ending short); changed tools come
    back as missing, whichever page they are on."""
    monkeypatch.setattr(pipeline_module, "_ADOPT_PAGE", page)
    corpus, queries = slice_
    first = _retriever(embedder, tmp_path / "index")
    first.upsert(records_of(corpus))
    expected = [h.tool_id for h in first.search(queries.queries[1].text, 5)]
    first.index.close()

    second = _retriever(embedder, tmp_path / "index")
    records = records_of(corpus)
    changed = {records[3].tool_id, records[-1].tool_id}
    records = [dataclasses.replace(r, version="2") if r.tool_id in changed else r for r in records]
    missing = second.adopt(records)
    assert {r.tool_id for r in missing} == changed
    assert len(second) == len(records) - len(changed)
    second.upsert(missing)
    assert [h.tool_id for h in second.search(queries.queries[1].text, 5)] == expected


def test_evaluate_reports_the_readme_metrics_with_folds(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, queries = slice_
    report = evaluate(corpus, queries, _retriever(embedder, tmp_path / "index"), EvalOptions(folds=4))
    for key in (
        "recall@5",
        "ndcg@10",
        "completeness@10",
        "latency_ms",
        "tools",
        "queries",
        "groups",
        "floor_ms",
    ):
        assert key in report
    assert report["queries"] == len(queries.queries)
    assert report["folds"] == 4
    assert 0.0 < report["recall@5"] <= 1.0


def test_indexing_embeds_by_length_in_few_calls(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    """Build speed: pending tools come shortest first and each encode call carries several
    batches plus the new servers' texts (no separate small server calls)."""
    calls: list[int] = []

    class Counting:
        model_id = embedder.model_id
        dim = embedder.dim

        def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
            calls.append(len(texts))
            return embedder.encode(texts, batch_size=batch_size)

        def token_counts(self, texts: Sequence[str]) -> list[int]:
            return embedder.token_counts(texts)

        def release_memory(self) -> None:
            embedder.release_memory()

    corpus, _ = slice_
    retriever = Retriever(
        Counting(), open_index(None, tmp_path / "index", dim=embedder.dim, vector_names=VECTOR_NAMES)
    )
    records = records_of(corpus)
    pending = retriever.pending(records)
    assert {r.tool_id for r in pending} == {r.tool_id for r in records}
    # In model tokens, not characters: character order and token order differ on real texts.
    lengths = embedder.token_counts([embedding_text(r.text) for r in pending])
    assert lengths == sorted(lengths)
    by_chars = sorted(records, key=lambda r: len(embedding_text(r.text)))
    assert embedder.token_counts([embedding_text(r.text) for r in by_chars]) != sorted(lengths)
    assert retriever.upsert(records) == len(records)
    described = len({t.server for t in corpus.tools if t.server_description})
    assert calls == [len(records) + described]  # 200 tools fit one chunk: one call


def test_adaptive_cut_returns_fewer_tools_for_a_narrow_query(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, queries = slice_
    retriever = _retriever(embedder, tmp_path / "index")
    retriever.upsert(records_of(corpus))
    narrow = "Transfermarkt search"  # one tool's exact name
    full = retriever.search(narrow, 10)
    cut = retriever.search(narrow, 10, adaptive=True)
    assert 1 <= len(cut) < len(full) == 10
    assert cut[0].tool_id == full[0].tool_id == "TheClique/Transfermarkt search"
    for query in queries.queries:
        full = retriever.search(query.text, 10)
        cut = retriever.search(query.text, 10, adaptive=True)
        assert 1 <= len(cut) <= 10
        assert [h.tool_id for h in cut] == [h.tool_id for h in full[: len(cut)]]  # a prefix: top kept


def test_adaptive_cut_rule() -> None:
    ranked = [("a", 3.0), ("b", 2.9), ("c", 1.0), ("d", 0.9), ("e", 0.8)]
    assert [i for i, _ in adaptive_cut(ranked, 0.2, 0.6)] == ["a", "b"]  # drop 1.9 >= 0.2 * 2.2
    even = [("a", 1.0), ("b", 0.9), ("c", 0.8), ("d", 0.7)]
    assert adaptive_cut(even, 0.5, 0.6) == even  # no clear gap: everything
    assert adaptive_cut([("a", 1.0), ("b", 0.0)], 0.1) == [("a", 1.0), ("b", 0.0)]
    flat = [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    assert adaptive_cut(flat, 0.1) == flat
    assert adaptive_cut([("a", 5.0), ("b", 1.0), ("c", 0.9)], 0.2, 0.6) == [("a", 5.0)]
    # A big drop among hits close to the top does not cut them.
    close = [("a", 10.0), ("b", 7.0), ("c", 6.5), ("d", 1.0), ("e", 0.5)]
    assert [i for i, _ in adaptive_cut(close, 0.2, 0.6)] == ["a", "b", "c"]


def test_past_queries_vote_for_the_tools_they_used(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, _ = slice_
    retriever = _retriever(embedder, tmp_path / "index")
    retriever.upsert(records_of(corpus))
    retriever.settings = dataclasses.replace(retriever.settings, refine_votes=2.0)
    target = corpus.tools[-1].tool_id  # a distractor no query needs
    past = "please jot this down in my personal scrapbook"
    now = "jot this down in my scrapbook please"
    rank_before = [h.tool_id for h in retriever.search(now, 64)]
    retriever.record_use(target, retriever.embed_query(past))
    rank_after = [h.tool_id for h in retriever.search(now, 64)]
    assert target in rank_after
    assert target not in rank_before[:3]
    assert rank_after.index(target) < 3
    retriever.reset_usage()
    assert [h.tool_id for h in retriever.search(now, 64)] == rank_before


def test_evaluate_reuses_a_built_index_for_other_settings(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, queries = slice_
    retriever = _retriever(embedder, tmp_path / "index")
    first = evaluate(corpus, queries, retriever, EvalOptions(embed_sample=64))
    assert first["index"]["build_vs_embedder"] > 0
    assert set(first["index"]["phases_s"]) == {"upsert", "optimize"}
    plain = RetrievalSettings(refine=False)
    second = evaluate(corpus, queries, retriever, EvalOptions(build=False, settings=plain, adaptive=True))
    assert "index" not in second
    assert second["settings"]["refine"] is False
    assert 1.0 <= second["returned_mean"] <= 20.0
    assert len(retriever) == len(corpus.tools)


def test_holdout_split_is_fixed_and_disjoint(slice_: tuple[Corpus, QuerySet]) -> None:
    _, queries = slice_
    tune, held = holdout_split(queries.queries, 0.4, 13)
    assert len(tune) == 16
    assert {q.id for q in tune}.isdisjoint(q.id for q in held)
    assert len(tune) + len(held) == len(queries.queries)
    assert holdout_split(queries.queries, 0.4, 13) == (tune, held)


def test_prepared_queries_without_intent_search_as_before(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, queries = slice_
    retriever = _retriever(embedder, tmp_path / "index")
    retriever.upsert(records_of(corpus))
    for query in queries.queries[:10]:
        prepared = retriever.prepare(query.text)
        assert np.array_equal(prepared.vector, retriever.embed_query(query.text))
        expected = retriever.search_with_vector(query.text, prepared.vector, 10)
        assert retriever.search_prepared(prepared, 10) == expected
        assert retriever.search(query.text, 10, intent=False) == expected
    assert Hit("a/b", 1.0).sub_intent is None


def test_destructive_tools_are_filtered_inside_both_lists(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, _ = slice_
    retriever = _retriever(embedder, tmp_path / "index")
    records = records_of(corpus)
    target = next(r for r in records if r.tool_id == "TheClique/Transfermarkt search")
    retriever.upsert([dataclasses.replace(r, destructive=True) if r == target else r for r in records])
    narrow = "Transfermarkt search"  # the tool's exact name: first by meaning and by words
    assert retriever.search(narrow, 1)[0].tool_id == target.tool_id
    flt = IndexFilter(exclude_destructive=True)
    hits = retriever.search(narrow, 10, flt)
    assert target.tool_id not in [h.tool_id for h in hits]
    assert len(hits) == 10


@pytest.mark.parametrize(
    ("widths", "groups"),
    [
        ([9, 5, 9], [[1, 0, 2]]),  # similar widths: one run
        ([7, 8, 26], [[0, 1], [2]]),  # padding 7 and 8 to 26 costs more than a second run
        ([5, 40, 6, 41], [[0, 2], [1, 3]]),
        ([30], [[0]]),
        ([], []),
    ],
)
def test_spans_are_embedded_in_the_cheapest_runs(widths: list[int], groups: list[list[int]]) -> None:
    assert pipeline_module._run_groups(widths) == groups


def test_span_vectors_come_back_in_span_order() -> None:
    class Recording:
        dim = 2

        def token_counts(self, texts: Sequence[str]) -> list[int]:
            return [len(t) for t in texts]

        def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
            assert batch_size == len(texts)
            return np.array([[len(t), 1.0] for t in texts], np.float32)

    retriever = Retriever.__new__(Retriever)
    retriever.embedder = Recording()  # type: ignore[assignment]
    spans = ["a" * 30, "bb", "c" * 29, "ddd"]
    vectors = retriever._embed_spans(spans)
    assert vectors[:, 0].tolist() == [30, 2, 29, 3]
