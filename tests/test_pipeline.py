"""The retrieval pipeline on a small real corpus (a ToolBench slice) with the real embedder
(ONNX int8 export of all-MiniLM-L6-v2) and the embedded Qdrant index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.corpus import Corpus, QuerySet, load_toolbench
from retrieval.embedder import OnnxEmbedder, load_onnx
from retrieval.evaluate import EvalOptions, evaluate, records_of
from retrieval.index import IndexFilter, open_index
from retrieval.pipeline import VECTOR_NAMES, Retriever
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


def test_a_reopened_index_is_adopted_without_re_embedding(
    embedder: OnnxEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path: Path
) -> None:
    corpus, queries = slice_
    first = _retriever(embedder, tmp_path / "index")
    first.upsert(records_of(corpus))
    expected = [h.tool_id for h in first.search(queries.queries[1].text, 5)]
    first.index.close()

    second = _retriever(embedder, tmp_path / "index")
    missing = second.adopt(records_of(corpus))
    assert missing == []
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
