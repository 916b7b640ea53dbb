"""A caller's scope inside the retrieval pipeline, on a real ToolBench slice with the real
embedder: no candidate source (dense, usage, BM25 and per-sentence BM25, server routing, the
intent stage's spans, named tools and sibling tools) returns a tool out of scope."""

from __future__ import annotations

import pytest

from retrieval.corpus import Corpus, load_toolbench
from retrieval.embedder import OnnxEmbedder, load_onnx
from retrieval.evaluate import records_of
from retrieval.index import IndexFilter, IndexScope, open_index
from retrieval.pipeline import VECTOR_NAMES, Retriever
from tests.support import shared_data


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Retriever, Corpus, list[str]]:
    embedder: OnnxEmbedder = load_onnx(quantize=True, cache_dir=tmp_path_factory.mktemp("models"))
    corpus, queries = load_toolbench(shared_data())
    chosen = queries.queries[:30]
    needed = {tool for query in chosen for tool in query.relevant}
    tools = [t for t in corpus.tools if t.tool_id in needed][:150]
    small = Corpus(tools=tuple(tools), categories=corpus.categories, flaws=corpus.flaws)
    index = open_index(None, tmp_path_factory.mktemp("index"), dim=embedder.dim, vector_names=VECTOR_NAMES)
    retriever = Retriever(embedder, index)
    retriever.upsert(records_of(small))
    # Usage evidence, so the usage vectors and past-query votes are sources too.
    for query in chosen[:10]:
        vector = retriever.embed_query(query.text)
        for tool_id in query.relevant:
            retriever.record_use(tool_id, vector)
    return retriever, small, [q.text for q in chosen]


def _server(retriever: Retriever, tool_id: str) -> str:
    record = retriever.record(tool_id)
    assert record is not None
    return record.text.server


@pytest.mark.parametrize("intent", [False, True], ids=["plain", "intent"])
def test_no_source_returns_a_tool_out_of_scope(
    setup: tuple[Retriever, Corpus, list[str]], intent: bool
) -> None:
    retriever, corpus, queries = setup
    servers = sorted({t.server for t in corpus.tools})
    allowed_servers = frozenset(servers[: len(servers) // 4])
    outside = [t for t in corpus.tools if t.server not in allowed_servers]
    granted = outside[0]  # one tool of another server, granted by name
    scope = IndexScope(servers=allowed_servers, tool_ids=frozenset({granted.tool_id}))
    flt = IndexFilter(scope=scope)

    def in_scope(tool_id: str) -> bool:
        return scope.allows(_server(retriever, tool_id), tool_id)

    hidden = [t for t in outside[1:] if t.tool_id != granted.tool_id]
    probes = list(queries)
    # Tools named outright (the intent stage's named-tool source), their servers (routing and
    # siblings) and their descriptions (dense and BM25) as queries.
    probes += [f"use {t.name} of {t.server}, then {t.name}" for t in hidden[:15]]
    probes += [t.description for t in hidden[:15] if t.description]
    unscoped_hits = 0
    for query in probes:
        hits = retriever.search(query, 10, flt, intent=intent)
        assert all(in_scope(h.tool_id) for h in hits), (
            query,
            [h.tool_id for h in hits if not in_scope(h.tool_id)],
        )
        unscoped_hits += sum(not in_scope(h.tool_id) for h in retriever.search(query, 10, intent=intent))
    assert unscoped_hits > 0  # without the scope these probes do reach hidden tools

    # The granted tool is found by its own description; the scope grants it as a server would.
    found = [h.tool_id for h in retriever.search(granted.description or granted.name, 10, flt, intent=intent)]
    assert granted.tool_id in found
    assert retriever.search(queries[0], 10, IndexFilter(scope=IndexScope()), intent=intent) == []


def test_scope_narrows_other_filters(setup: tuple[Retriever, Corpus, list[str]]) -> None:
    retriever, corpus, queries = setup
    servers = sorted({t.server for t in corpus.tools})
    scope = IndexScope(servers=frozenset(servers[:3]))
    outside = IndexFilter(servers=frozenset(servers[3:]), scope=scope)
    for query in queries[:10]:
        assert retriever.search(query, 10, outside) == []
        both = retriever.search(query, 10, IndexFilter(servers=frozenset(servers[:1]), scope=scope))
        assert all(_server(retriever, h.tool_id) == servers[0] for h in both)


def test_dense_and_lexical_sources_each_respect_the_scope(setup: tuple[Retriever, Corpus, list[str]]) -> None:
    retriever, corpus, queries = setup
    servers = sorted({t.server for t in corpus.tools})
    scope = IndexScope(servers=frozenset(servers[:2]))
    flt = IndexFilter(scope=scope)
    vector = retriever.embed_query(queries[0])
    for name in VECTOR_NAMES:
        for tool_id, _ in retriever.index.search(name, vector, 50, flt):
            assert _server(retriever, tool_id) in scope.servers
    allowed = retriever._allowed(flt)  # the predicate BM25 and the intent stage filter with
    assert allowed is not None
    for query in queries:
        for tool_id, _ in retriever.lexical.search(query, 50, allowed=allowed):
            assert _server(retriever, tool_id) in scope.servers
