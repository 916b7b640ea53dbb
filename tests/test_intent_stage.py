"""The intent stage on a small real corpus (a ToolBench slice) with the real embedder (ONNX int8
export of all-MiniLM-L6-v2) and the embedded Qdrant index: preparing a request (one encode
call), subspace fusion, the merge that serves every sub-intent, annotation-aware filtering, and
the catalog state the built-in parser reads."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from retrieval.corpus import Corpus, QuerySet, load_toolbench
from retrieval.embedder import OnnxEmbedder, load_onnx
from retrieval.evaluate import records_of
from retrieval.index import IndexFilter, open_index
from retrieval.intent import Intent, SubIntent
from retrieval.intent_stage import (
    CoUsage,
    IntentCatalog,
    ToolFields,
    action_score,
    cohere,
    fuse,
    merge,
    reads_only,
    subspace_scores,
    tool_fields,
)
from retrieval.metrics import recall_at
from retrieval.pipeline import (
    DESCRIPTION,
    VECTOR_NAMES,
    Hit,
    RetrievalSettings,
    Retriever,
    ToolRecord,
    intent_weights,
)
from retrieval.text import dense_query
from tests.support import shared_data

# A real compound request (G2_category:13795): the QR-code part drowns the "random word" part
# in the whole request's ranking.
QR_AND_WORD = (
    "I'm planning a surprise anniversary party for my parents and I need some ideas for decorations. "
    "Generate a QR code with a random sentence that can be used as a party theme and provide me with "
    "a random word that represents love."
)
CROWDING_SERVERS = {
    "Easy QR Code",
    "free QR Code Generator",
    "QR Code Generator_v14",
    "QR Code Wizard",
    "Image QR code generator",
    "QR Code Generator API_v6",
    "QR Code - Dynamic and Static",
    "QR code generator with multiple datatypes ",
    "Jibber Jabber",
    "Random Words",
    "Random Ukrainian Word",
}


class CountingEmbedder:
    """The real embedder, counting encode calls."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dim = inner.dim
        self.calls: list[int] = []

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        self.calls.append(len(texts))
        return self.inner.encode(texts, batch_size=batch_size)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self.inner.token_counts(texts)

    def release_memory(self) -> None:
        self.inner.release_memory()


@pytest.fixture(scope="module")
def slice_() -> tuple[Corpus, QuerySet]:
    """40 G2 requests (several tools, several servers each) and every tool they need, the
    QR-code and random-word servers, and 150 other tools."""
    corpus, queries = load_toolbench(shared_data())
    chosen = [q for q in queries.queries if q.group is not None and q.group.startswith("G2")][:40]
    needed = {tool for query in chosen for tool in query.relevant}
    tools = [t for t in corpus.tools if t.tool_id in needed or t.server in CROWDING_SERVERS]
    tools += [t for t in corpus.tools if t not in tools][:150]
    return (
        Corpus(tools=tuple(tools), categories=corpus.categories, flaws=corpus.flaws),
        QuerySet(queries=tuple(chosen), flaws=queries.flaws),
    )


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> CountingEmbedder:
    return CountingEmbedder(load_onnx(quantize=True, cache_dir=tmp_path_factory.mktemp("models")))


@pytest.fixture(scope="module")
def retriever(
    embedder: CountingEmbedder, slice_: tuple[Corpus, QuerySet], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Retriever]:
    path = tmp_path_factory.mktemp("index") / "index"
    index = open_index(None, path, dim=embedder.dim, vector_names=VECTOR_NAMES)
    found = Retriever(embedder, index)
    found.upsert(records_of(slice_[0]))
    yield found
    index.close()


def _ids(hits: Sequence[Hit]) -> list[str]:
    return [hit.tool_id for hit in hits]


def test_prepare_embeds_only_the_spans_and_averages_them_for_the_request(
    retriever: Retriever, embedder: CountingEmbedder
) -> None:
    embedder.calls.clear()
    prepared = retriever.prepare(QR_AND_WORD, intent=True)
    assert prepared.intent is not None
    assert prepared.span_vectors is not None
    subs = prepared.intent.sub_intents
    assert len(subs) == 3
    assert embedder.calls == [len(subs)]  # one call, the spans only: no run for the whole request
    assert prepared.span_vectors.shape == (len(subs), embedder.dim)
    # The request's vector is the unit-length, length-weighted mean of its spans' vectors,
    # close to the request's own embedding (usage learning reads it).
    spans = [dense_query(s.span) for s in subs]
    weights = np.array([len(s) for s in spans], dtype=np.float32)
    expected = weights @ prepared.span_vectors
    np.testing.assert_allclose(prepared.vector, expected / np.linalg.norm(expected), atol=1e-6)
    assert abs(float(np.linalg.norm(prepared.vector)) - 1.0) < 1e-5
    own = retriever.embed_query(QR_AND_WORD)
    assert float(own @ prepared.vector) > 0.8
    assert 0.0 < prepared.parse_s < 0.05
    # Domain hints come from the server and category centroids of the catalog.
    assert subs[1].domains
    assert any("QR" in label for label, _ in subs[1].domains)
    assert all(label.startswith(("server:", "category:")) for s in subs for label, _ in s.domains)

    plain = retriever.prepare(QR_AND_WORD)
    assert plain.intent is None
    assert plain.span_vectors is None
    assert np.array_equal(plain.vector, own)


def test_prepare_can_embed_the_request_itself_beside_its_spans(
    retriever: Retriever, embedder: CountingEmbedder
) -> None:
    """`intent_whole_from_spans` off: the request and its spans in one call, and the request's
    vector is exactly embed_query's."""
    saved = retriever.settings
    retriever.settings = dataclasses.replace(saved, intent_whole_from_spans=False)
    try:
        embedder.calls.clear()
        prepared = retriever.prepare(QR_AND_WORD, intent=True)
        assert prepared.intent is not None
        assert embedder.calls == [1 + len(prepared.intent.sub_intents)]
        assert np.array_equal(prepared.vector, retriever.embed_query(QR_AND_WORD))
    finally:
        retriever.settings = saved


def test_without_an_intent_stage_search_is_unchanged(
    retriever: Retriever, slice_: tuple[Corpus, QuerySet]
) -> None:
    _, queries = slice_
    text = queries.queries[0].text
    vector = retriever.embed_query(text)
    expected = retriever.search_with_vector(text, vector, 10)
    assert retriever.search_prepared(retriever.prepare(text), 10) == expected
    assert retriever.search(text, 10, intent=False) == expected
    assert all(hit.sub_intent is None for hit in expected)
    # One sub-intent: the plain pipeline too (the parser's intent still rides along).
    single = retriever.prepare("Get the random word of the day", intent=True)
    assert single.intent is not None
    assert len(single.intent.sub_intents) == 1
    assert single.span_vectors is None
    vector = retriever.embed_query("Get the random word of the day")
    assert retriever.search_prepared(single, 5) == retriever.search_with_vector(
        "Get the random word of the day", vector, 5
    )


def test_every_sub_intent_reaches_the_head_of_the_list(retriever: Retriever) -> None:
    whole = retriever.search(QR_AND_WORD, 5, intent=False)
    assert not any("word" in name.lower() for name in _names(retriever, whole))  # drowned by QR codes
    prepared = retriever.prepare(QR_AND_WORD, intent=True)
    assert prepared.intent is not None
    hits = retriever.search_prepared(prepared, 5)
    word = next(n for n, s in enumerate(prepared.intent.sub_intents) if "word" in s.span)
    serving = [hit for hit in hits if hit.sub_intent == word]
    assert serving
    assert "word" in retriever.record(serving[0].tool_id).text.name.lower()
    qr = next(n for n, s in enumerate(prepared.intent.sub_intents) if "QR code" in s.span)
    assert any(hit.sub_intent == qr for hit in hits)
    assert hits[0].tool_id == whole[0].tool_id  # the whole request's best stays first
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # The adaptive cut returns a prefix of the same ranking.
    cut = retriever.search_prepared(prepared, 5, adaptive=True)
    assert 1 <= len(cut) <= 5
    assert _ids(cut) == _ids(hits)[: len(cut)]


def _names(retriever: Retriever, hits: Sequence[Hit]) -> list[str]:
    return [retriever.record(hit.tool_id).text.name for hit in hits]  # type: ignore[union-attr]


def test_sub_intents_of_real_requests_are_served_in_the_top_ten(
    retriever: Retriever, slice_: tuple[Corpus, QuerySet]
) -> None:
    _, queries = slice_
    served = asked = 0
    recall_on = recall_off = 0.0
    for query in queries.queries:
        prepared = retriever.prepare(query.text, intent=True)
        assert prepared.intent is not None
        hits = retriever.search_prepared(prepared, 10)
        asked += len(prepared.intent.sub_intents)
        served += len({hit.sub_intent for hit in hits if hit.sub_intent is not None})
        recall_on += recall_at(_ids(hits), query.relevant, 5)
        recall_off += recall_at(_ids(retriever.search(query.text, 5, intent=False)), query.relevant, 5)
    assert served >= 0.95 * asked
    # The benchmark measures the gain; on an easy slice the stage must at least not cost recall.
    assert recall_on >= recall_off - 0.5


def test_span_candidates_from_stage_one_rank_as_the_index_does(
    retriever: Retriever, slice_: tuple[Corpus, QuerySet]
) -> None:
    # The spans' own dense candidates come from stage 1's lists, scored with the stored rows:
    # within those lists they rank as a full index query ranks them, and on this slice they
    # are mostly the index's own best.
    _, queries = slice_
    spans = same_head = 0
    for text in [QR_AND_WORD, *(q.text for q in queries.queries[:20])]:
        prepared = retriever.prepare(text, intent=True)
        if prepared.span_vectors is None:
            continue
        first = retriever._stage1(text, prepared.vector, 10, None)
        pool = set(first.dense) | set(first.lexical) | set(first.routed) | {i for p in first.parts for i in p}
        near = retriever._span_dense(first, prepared.span_vectors)
        ranked = retriever.index.search_batch(DESCRIPTION, prepared.span_vectors, len(retriever), None)
        own = retriever._span_dense_index(prepared.span_vectors, None)
        assert len(near) == len(own) == len(ranked) == len(prepared.span_vectors)
        for found, everything, best in zip(near, ranked, own, strict=True):
            spans += 1
            assert len(found) == min(retriever.settings.intent_pool, len(pool))
            assert set(found) <= pool
            scores = dict(everything)
            in_pool = [scores[i] for i, _ in everything if i in pool]
            # The same tools as the index's best within the pool (up to float16 rounding).
            cut = in_pool[len(found) - 1]
            assert all(scores[i] >= cut - 2e-3 for i in found)
            same_head += found[0] == best[0]
    assert spans >= 30
    assert same_head >= 0.95 * spans


def test_span_candidates_read_usage_views(retriever: Retriever) -> None:
    prepared = retriever.prepare(QR_AND_WORD, intent=True)
    assert prepared.span_vectors is not None
    first = retriever._stage1(QR_AND_WORD, prepared.vector, 10, None)
    before = retriever._span_dense(first, prepared.span_vectors)
    # A tool of the pool no span picks, used often for the first span's words: its usage view
    # moves to that span, which then picks it.
    pool = list(dict.fromkeys([*first.dense, *first.lexical]))
    chosen = next(i for i in reversed(pool) if all(i not in found for found in before))
    try:
        for _ in range(20):
            retriever.record_use(chosen, prepared.span_vectors[0])
        after = retriever._span_dense(first, prepared.span_vectors)
        assert chosen in after[0]
    finally:
        retriever.reset_usage()
    assert retriever._span_dense(first, prepared.span_vectors) == before


def test_the_intent_stage_keeps_its_results_without_index_queries_per_span(
    retriever: Retriever, slice_: tuple[Corpus, QuerySet], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, queries = slice_
    prepared = [retriever.prepare(q.text, intent=True) for q in queries.queries]
    pooled = [_ids(retriever.search_prepared(p, 10)) for p in prepared]
    monkeypatch.setattr(retriever, "_span_dense", lambda _, spans: retriever._span_dense_index(spans, None))
    indexed = [_ids(retriever.search_prepared(p, 10)) for p in prepared]
    recall = [
        (recall_at(a, q.relevant, 5), recall_at(b, q.relevant, 5))
        for a, b, q in zip(pooled, indexed, queries.queries, strict=True)
    ]
    assert sum(a for a, _ in recall) >= sum(b for _, b in recall) - 0.5
    overlap = [len(set(a) & set(b)) / len(b) for a, b in zip(pooled, indexed, strict=True) if b]
    assert np.mean(overlap) >= 0.95


def test_subspace_scores_and_their_fusion(retriever: Retriever) -> None:
    prepared = retriever.prepare(QR_AND_WORD, intent=True)
    assert prepared.intent is not None
    subs = prepared.intent.sub_intents
    named = dataclasses.replace(subs[2], named_tools=("Get a random word",))
    cands = retriever.intent_candidates(prepared, 10)
    assert len(set(cands.ids)) == len(cands.ids) > 10
    features = subspace_scores((*subs[:2], named), cands, retriever.lexical.idf)
    assert set(features) == {
        "dense",
        "lexical",
        "server",
        "domain",
        "action",
        "params",
        "usage",
        "named",
        "context",
        "family",
    }
    for matrix in features.values():
        assert matrix.shape == (len(subs), len(cands.ids))
        assert float(matrix.min()) >= 0.0
        assert float(matrix.max()) <= 1.0
    word = cands.ids.index("Random Words/Get a random word")
    assert features["named"][2, word] == 1.0
    assert features["named"][0, word] == 0.0
    # The word span's own dense and lexical subspaces put a random-word tool first.
    weights = intent_weights(RetrievalSettings())
    fused = fuse(features, weights)
    assert float(fused.max(axis=1).min()) == 1.0  # every row scaled to its best
    best = cands.ids[int(np.argmax(fuse({k: features[k] for k in ("dense", "lexical")}, weights)[2]))]
    assert "word" in best.lower()
    only = subspace_scores(subs, cands, retriever.lexical.idf, weights.active())
    assert set(only) == weights.active()


def test_merge_gives_each_sub_intent_its_best_tool_a_head_rank() -> None:
    whole = np.linspace(1.0, 0.0, 50)  # candidate i is the whole request's rank i
    subs = np.zeros((2, 50))
    subs[0, 3] = 1.0  # sub-intent 0 wants the whole ranking's 4th
    subs[1, 40] = 1.0  # sub-intent 1 wants a tool the whole request ranks 41st
    subs[1, 41] = 0.9
    scores, ranks = merge(whole, subs, mix=0.7, k=5.0)
    # 1/(5 + rank) + 0.7/(5 + sub rank): tool 40 (whole rank 40, sub-intent 1's best) lands
    # between the whole ranking's 2nd and 3rd; tool 3, also sub-intent 0's best, goes first.
    assert [int(i) for i in np.argsort(-scores, kind="stable")[:6]] == [3, 0, 1, 40, 2, 41]
    assert ranks[:, 40].tolist() == [-1, 0]
    assert ranks[:, 41].tolist() == [-1, 1]
    assert ranks[:, 3].tolist() == [0, -1]
    assert ranks[:, 0].tolist() == [-1, -1]  # in no sub-intent's list: the whole ranking alone
    # Sub-intents that score nothing add nothing.
    flat, none = merge(whole, np.zeros((1, 50)), mix=0.7, k=5.0)
    assert [int(i) for i in np.argsort(-flat, kind="stable")] == list(range(50))
    assert set(none.ravel().tolist()) == {-1}


def test_cohere_favours_the_server_the_other_sub_intents_point_at() -> None:
    # Two near-duplicates for sub-intent 0 (tools 0 on server A, 1 on server B, B slightly
    # ahead); sub-intent 1 is best served by server A's tool 2.
    scores = np.array([[0.9, 1.0, 0.0, 0.2], [0.1, 0.0, 1.0, 0.3]])
    servers = ["A", "B", "A", "C"]
    out = cohere(scores, servers, 0.5)
    assert out[0, 0] > out[0, 1]  # A also serves sub-intent 1
    assert out[0, 2] == 0.0  # a tool a sub-intent does not list stays unlisted
    assert np.array_equal(cohere(scores, servers, 0.0), scores)
    assert np.array_equal(cohere(scores[:1], servers, 0.5), scores[:1])  # one sub-intent: unchanged


def test_co_usage_counts_tools_used_together_and_forgets() -> None:
    co = CoUsage()
    assert not co
    co.add("a", ())
    co.add("b", ("a",))  # one request used a and b
    co.add("a", ())  # another used a alone
    ids = ["a", "b", "c"]
    scores = np.array([[1.0, 0.5, 0.2]])  # head: a
    assert co.share(scores, ids, 1).tolist() == [0.0, 0.5, 0.0]
    co.forget(("a", "b"))
    assert co.share(scores, ids, 1).tolist() == [0.0, 0.0, 0.0]
    assert not co


def test_recorded_uses_feed_co_usage(retriever: Retriever) -> None:
    ids = retriever.tool_ids()[:2]
    vector = retriever.embed_query("one request using two tools")
    try:
        for tool_id in ids:
            retriever.record_use(tool_id, vector)
        share = retriever.past.co.share(np.array([[1.0, 0.0]]), ids, 1)
        assert share.tolist() == [0.0, 1.0]
    finally:
        retriever.reset_usage()
    assert not retriever.past.co


def test_action_subspace_reads_the_name_and_leading_verb() -> None:
    fields = ToolFields(("get", "random", "word"), None, ())
    assert action_score("get", fields) == 1.0
    assert action_score("fetch", fields) == 0.5  # the same kind of operation
    assert action_score("delete", fields) == 0.0
    assert action_score(None, fields) == 0.0
    corpus, _ = load_toolbench(shared_data())
    tool = next(t for t in corpus.tools if t.tool_id == "Random Words/Get a random word")
    read = tool_fields(tool)
    assert read.lead == "return"
    assert "word" in read.name
    assert set(read.params) >= {"word", "length"}
    # Equal fields of different tools are one object in the catalog.
    catalog = IntentCatalog()
    twin = dataclasses.replace(tool, tool_id="Copy/Get a random word", server="Copy")
    vector = np.ones(4, np.float32)
    catalog.add(tool.tool_id, tool, None, vector)
    catalog.add(twin.tool_id, twin, None, vector)
    assert catalog.fields[tool.tool_id] is catalog.fields[twin.tool_id] == read


def test_read_only_intents_never_see_destructive_tools(
    retriever: Retriever, slice_: tuple[Corpus, QuerySet]
) -> None:
    corpus, _ = slice_
    target = "Random Words/Get a random word"
    record = next(r for r in records_of(corpus) if r.tool_id == target)
    query = "Show me a random word"  # reads only
    assert reads_only(retriever.prepare(query, intent=True).intent)
    assert target in _ids(retriever.search(query, 5, intent=True))
    retriever.upsert([dataclasses.replace(record, destructive=True, read_only=False)])  # payload only
    try:
        for limit in (1, 5):
            hits = retriever.search(query, limit, intent=True)
            assert target not in _ids(hits)
            assert len(hits) == limit
        assert target in _ids(retriever.search(query, 5, intent=False))  # no intent, no filter
        asks = IndexFilter(read_only=False)  # the caller asks for tools that change state
        assert target in _ids(retriever.search(query, 5, asks, intent=True))
        write = "Delete the random word and create a new random word"
        parsed = retriever.prepare(write, intent=True)
        assert not reads_only(parsed.intent)
        assert target in _ids(retriever.search_prepared(parsed, 10))
    finally:
        retriever.upsert([record])
    assert target in _ids(retriever.search(query, 5, intent=True))


def test_a_given_intent_is_used_and_gets_domain_hints(retriever: Retriever) -> None:
    text = "Fetch a QR code for my site and a random word"
    given = Intent(
        text,
        (
            SubIntent("Fetch a QR code for my site", 0, 27, "fetch", "a QR code for my site", effect="read"),
            SubIntent("a random word", 32, 45, "fetch", "a random word", effect="read"),
        ),
        parser="llm",
    )
    prepared = retriever.prepare(text, intent=given)
    assert prepared.intent is not None
    assert prepared.intent.parser == "llm"
    assert [s.span for s in prepared.intent.sub_intents] == [s.span for s in given.sub_intents]
    assert all(s.domains for s in prepared.intent.sub_intents)
    assert prepared.parse_s == 0.0
    hits = retriever.search_prepared(prepared, 5)
    assert {h.sub_intent for h in hits} >= {0, 1}


def test_settings_turn_the_stage_on_for_search(retriever: Retriever) -> None:
    saved = retriever.settings
    try:
        retriever.settings = dataclasses.replace(saved, intent=True)
        on = retriever.search(QR_AND_WORD, 5)
        retriever.settings = dataclasses.replace(saved, intent=False)
        off = retriever.search(QR_AND_WORD, 5)
    finally:
        retriever.settings = saved
    assert any(h.sub_intent is not None for h in on)
    assert all(h.sub_intent is None for h in off)


def test_the_parser_follows_the_catalog(embedder: CountingEmbedder, tmp_path: Path) -> None:
    corpus, _ = load_toolbench(shared_data())
    tools = [t for t in corpus.tools if t.server in {"Random Words", "Easy QR Code", "Jibber Jabber"}]
    records = [ToolRecord(text=t, version="1", category="Words") for t in tools]
    retriever = Retriever(
        embedder, open_index(None, tmp_path / "index", dim=embedder.dim, vector_names=VECTOR_NAMES)
    )
    retriever.upsert(records)
    parser = retriever.intent_parser()
    assert retriever.intent_parser() is parser  # cached until the catalog changes
    labels = set(parser.domains.labels) if parser.domains is not None else set()
    assert {"server:Random Words", "server:Easy QR Code", "category:Words"} <= labels
    assert parser.named("Use Random Words for this")[1] == ("Random Words",)

    retriever.remove([r.tool_id for r in records if r.text.server == "Random Words"])
    parser = retriever.intent_parser()
    assert parser.named("Use Random Words for this") == ((), ())
    assert "server:Random Words" not in (parser.domains.labels if parser.domains is not None else [])
    # A payload-only change of category moves the tool between category centroids.
    moved = [dataclasses.replace(r, category="Codes") for r in records if r.text.server == "Easy QR Code"]
    retriever.upsert(moved)
    labels = set(retriever.intent_parser().domains.labels)  # type: ignore[union-attr]
    assert "category:Codes" in labels
    assert "category:Words" in labels
    retriever.index.close()
