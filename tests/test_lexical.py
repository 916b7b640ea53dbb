"""Tokenisation, tool documents and the BM25 index, on small corpora from the shared data."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retrieval import lexical as lexical_module
from retrieval.corpus import load_toolbench
from retrieval.documents import (
    MAX_FIELD_TOKENS,
    MAX_SCHEMA_DEPTH,
    MAX_SCHEMA_PARAMS,
    WEIGHT_DESCRIPTION,
    WEIGHT_EXAMPLE,
    WEIGHT_NAME,
    WEIGHT_PARAM_DESCRIPTION,
    WEIGHT_PARAM_NAME,
    ToolText,
    document_parts,
    schema_parameters,
    tool_text_from_record,
    weighted_terms,
)
from retrieval.lexical import LexicalIndex, query_terms
from retrieval.text import (
    STOPWORDS,
    dense_query,
    normalize,
    phrase_key,
    query_parts,
    split_words,
    tokenize,
)
from tests.support import shared_data

TOOLBENCH_SERVERS = {
    "Kick.com API | Kick API",
    "Free NBA",
    "ChurchApp",
    "TheClique",
    "Email Verifier/Validator",
}
TOOLSDK_SERVERS = {
    "@toolsdk.ai/aws-ses-mcp",
    "@toolsdk.ai/mcp-send-email",
    "@modelcontextprotocol/server-github",
}


def _rows(path: Path, servers: set[str]) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            if row["server"] in servers:
                yield row


@pytest.fixture(scope="module")
def corpus() -> list[ToolText]:
    """About 70 real tools: REST APIs from ToolBench and MCP servers from toolsdk."""
    rows = [*_rows(shared_data() / "toolbench" / "tools.jsonl", TOOLBENCH_SERVERS)]
    rows += _rows(shared_data() / "toolsdk" / "tools.jsonl", TOOLSDK_SERVERS)
    tools = [tool_text_from_record(row) for row in rows]
    assert {t.server for t in tools} == TOOLBENCH_SERVERS | TOOLSDK_SERVERS
    return tools


def tool(tool_id: str, name: str, description: str = "", **extra: Any) -> ToolText:
    server = extra.pop("server", "demo")
    return ToolText(tool_id, server, "", name, "", description, **extra)


# --- tokenisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("getWeatherForecast", ["get", "weather", "forecast"]),
        ("HTTPServer2", ["http", "server", "2"]),
        ("get_quotes_by_keyword", ["get", "quotes", "by", "keyword"]),
        ("send-email", ["send", "email"]),
        ("fs.read_file", ["fs", "read", "file"]),
        ("list APIs", ["list", "apis"]),
        ("v2API", ["v", "2", "api"]),
        ("Kick.com API | Kick API", ["kick", "com", "api", "kick", "api"]),
        ("I'm a fan of Messi's clubs", ["i", "a", "fan", "of", "messi", "clubs"]),
        ("查询ECS实例", ["查询", "ecs", "实例"]),
    ],
)
def test_split_words_splits_identifiers(text: str, words: list[str]) -> None:
    assert split_words(text) == words


def test_tokenize_drops_stopwords_and_keeps_digits() -> None:
    assert tokenize("What is the weather in Berlin for the next 3 days?") == [
        "weather",
        "berlin",
        "next",
        "3",
        "day",
    ]
    assert tokenize("the of and") == []
    assert {"get", "list", "search", "off"}.isdisjoint(STOPWORDS)


@pytest.mark.parametrize(
    "forms",
    [
        ["query", "queries"],
        ["category", "categories"],
        ["create", "creates", "creating", "created"],
        ["image", "images"],
        ["make", "making", "makes"],
        ["rate", "rating", "rated"],
        ["copy", "copied", "copies", "copying"],
        ["get", "getting", "gets"],
        ["box", "boxes"],
        ["match", "matches"],
        ["address", "addresses"],
        ["status", "statuses"],
        ["api", "apis"],
        ["schedule", "scheduled", "scheduling"],
    ],
)
def test_normalize_merges_inflections(forms: list[str]) -> None:
    assert len({normalize(word) for word in forms}) == 1, {word: normalize(word) for word in forms}


@pytest.mark.parametrize(
    ("one", "other"), [("news", "new"), ("stats", "states"), ("string", "str"), ("bus", "buy"), ("add", "ad")]
)
def test_normalize_keeps_distinct_words_apart(one: str, other: str) -> None:
    assert normalize(one) != normalize(other)


def test_tokenize_treats_documents_and_queries_alike() -> None:
    assert (
        tokenize("getChannelClips") == tokenize("get channel clips") == tokenize("Getting the channel's clip")
    )


@pytest.mark.parametrize(
    ("query", "compact"),
    [
        (
            "I'm planning a trip to Paris and I don't want flights before 9am. Can you find me the cheapest?",
            "planning trip to Paris don't want flights before 9am. find cheapest?",
        ),
        ("Get me Messi's transfers, then email them to me!", "Get Messi's transfers, email to"),
        ("files not older than a week", "files not older week"),
        ("turn off the lights", "turn off lights"),
        ("what is it?", "what is it?"),  # only function words: unchanged, never empty
        ("", ""),
    ],
)
def test_dense_query_drops_function_words_but_keeps_steering_ones(query: str, compact: str) -> None:
    assert dense_query(query) == compact


def test_dense_query_shortens_real_queries() -> None:
    """On the shared ToolBench queries the compact text is much shorter but keeps every
    content word (each search token of the query survives)."""
    path = shared_data() / "toolbench" / "queries.jsonl"
    texts = [json.loads(line)["query"] for line in path.read_text().splitlines() if line.strip()]
    before = sum(len(t.split()) for t in texts)
    after = sum(len(dense_query(t).split()) for t in texts)
    assert after < 0.75 * before
    for text in texts[:200]:
        assert tokenize(dense_query(text)) == tokenize(text)


def test_phrase_key_is_literal() -> None:
    assert phrase_key("get_tasks") == phrase_key("Get Tasks") == phrase_key("getTasks")
    assert phrase_key("get_tasks") != phrase_key("get_task")
    assert phrase_key("Get All Games") != phrase_key("Get a Game")
    assert phrase_key("  ... ") is None


# --- documents ----------------------------------------------------------------------------


def test_record_keeps_whole_tool_id(corpus: list[ToolText]) -> None:
    ids = {t.tool_id for t in corpus}
    assert "Kick.com API | Kick API/Get Channel Clips" in ids
    assert "Email Verifier/Validator/Email" in ids
    assert "@toolsdk.ai/aws-ses-mcp/send-email" in ids
    ses = next(t for t in corpus if t.tool_id == "@toolsdk.ai/aws-ses-mcp/send-email")
    assert ses.server == "@toolsdk.ai/aws-ses-mcp"
    assert ses.name == "send-email"
    assert "Amazon SES" in ses.server_description


def test_record_tolerates_missing_and_wrong_types() -> None:
    doc = tool_text_from_record({"server": "s", "name": 3, "input_schema": [1], "examples": ["a", 2]})
    assert doc == ToolText("s/", "s", "", "", "", "", None, ["a"])


def test_schema_parameters_walks_nested_objects_items_and_combinators() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name"},
            "filters": {
                "type": "object",
                "properties": {"min_temp": {"type": "number", "description": "Lowest temperature"}},
            },
            "stops": {"type": "array", "items": {"type": "object", "properties": {"stopId": {}}}},
            "units": {"anyOf": [{"type": "object", "properties": {"scale": {"description": "C or F"}}}]},
        },
    }
    assert schema_parameters(schema) == [
        ("city", "City name"),
        ("filters", ""),
        ("min_temp", "Lowest temperature"),
        ("stops", ""),
        ("stopId", ""),
        ("units", ""),
        ("scale", "C or F"),
    ]


@pytest.mark.parametrize(
    "schema",
    [
        None,
        "not a schema",
        42,
        [{"properties": {"x": {}}}],
        {"properties": ["x", "y"]},
        {"properties": {"x": None, "y": "string", "z": {"description": 7}}},
        {"properties": {1: {"description": "numeric key"}}},
        {"items": "string", "anyOf": "nope", "oneOf": [None, 3]},
        {"items": [{"properties": {"first": {}}}, "junk"]},
    ],
)
def test_schema_parameters_never_raises_on_malformed_schemas(schema: Any) -> None:
    params = schema_parameters(schema)
    assert all(isinstance(name, str) and isinstance(desc, str) for name, desc in params)


def test_schema_parameters_malformed_values_keep_names() -> None:
    assert schema_parameters({"properties": {"x": None, "y": "string", "z": {"description": 7}}}) == [
        ("x", ""),
        ("y", ""),
        ("z", ""),
    ]
    assert schema_parameters({"items": [{"properties": {"first": {}}}, "junk"]}) == [("first", "")]


def test_schema_parameters_bounded_on_cycles_depth_and_width() -> None:
    cyclic: dict[str, Any] = {"type": "object"}
    cyclic["properties"] = {"self": cyclic}
    assert len(schema_parameters(cyclic)) == MAX_SCHEMA_DEPTH + 1

    wide: dict[str, Any] = {"properties": {f"p{i}": {} for i in range(MAX_SCHEMA_PARAMS * 3)}}
    assert len(schema_parameters(wide)) == MAX_SCHEMA_PARAMS


def test_document_parts_and_weights() -> None:
    doc = ToolText(
        tool_id="weather/forecast",
        server="weather-mcp",
        server_description="Weather data",
        name="getForecast",
        title="",
        description="Daily forecast for a city",
        input_schema={"properties": {"city": {"description": "City name"}}},
        examples=["will it rain tomorrow"],
    )
    fields = [field for field, _, _ in document_parts(doc)]
    assert fields == [
        "server", "server_description", "name", "description", "param_name", "param_description", "example",
    ]  # fmt: skip
    terms = weighted_terms(doc)
    # "forecast" is in the name and the description; "daily" only in the description.
    assert terms["forecast"] == WEIGHT_NAME + WEIGHT_DESCRIPTION
    assert terms["daili"] == WEIGHT_DESCRIPTION
    assert terms["rain"] == terms["tomorrow"] == WEIGHT_EXAMPLE
    assert terms["citi"] == WEIGHT_DESCRIPTION + WEIGHT_PARAM_NAME + WEIGHT_PARAM_DESCRIPTION
    assert phrase_key("getForecast") in terms
    assert phrase_key("weather-mcp getForecast") in terms


def test_long_field_counts_only_its_first_tokens() -> None:
    words = [f"word{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(MAX_FIELD_TOKENS + 10)]
    terms = weighted_terms(tool("t", "x", " ".join(words)))
    assert words[MAX_FIELD_TOKENS - 1] in terms
    assert words[MAX_FIELD_TOKENS] not in terms


# --- the index ----------------------------------------------------------------------------


def test_exact_name_queries_rank_the_tool_first(corpus: list[ToolText]) -> None:
    index = LexicalIndex.build(corpus)
    for doc in corpus:
        # Server plus name always identifies one tool.
        assert index.search(f"{doc.server} {doc.name}", 1)[0][0] == doc.tool_id
        # The name alone does, unless another server has a tool of the very same name.
        twins = {t.tool_id for t in corpus if phrase_key(t.name) == phrase_key(doc.name)}
        top = [tool_id for tool_id, _ in index.search(doc.name, len(twins))]
        assert set(top) == twins, doc.tool_id


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("get_channel_clips", "Kick.com API | Kick API/Get Channel Clips"),
        ("Get All Games", "Free NBA/Get All Games"),
        ("Get a Specific Game", "Free NBA/Get a Specific Game"),
        ("Get Tags by Contact", "ChurchApp/Get Tags by Contact"),
        ("Get Contacts by Tag", "ChurchApp/Get Contacts by Tag"),
        ("create a pull request in my repository", "@modelcontextprotocol/server-github/create_pull_request"),
        ("send an email through Amazon SES", "@toolsdk.ai/aws-ses-mcp/send-email"),
        ("search transfermarkt for Messi", "TheClique/Transfermarkt search"),
    ],
)
def test_queries_find_the_right_tool(corpus: list[ToolText], query: str, expected: str) -> None:
    assert LexicalIndex.build(corpus).search(query, 1)[0][0] == expected


def test_bm25_score_matches_formula() -> None:
    docs = [tool("a", "alpha beta", server=""), tool("b", "alpha", server=""), tool("c", "gamma", server="")]
    index = LexicalIndex.build(docs, k1=1.5, b=0.5)
    # Each name word has tf = WEIGHT_NAME; lengths 2w, w, w.
    w = WEIGHT_NAME
    avgdl = 4 * w / 3
    idf = math.log(1 + (3 - 2 + 0.5) / (2 + 0.5))  # "alpha" is in 2 of 3 documents
    expected_a = idf * w * 2.5 / (w + 1.5 * (1 - 0.5 + 0.5 * 2 * w / avgdl))
    expected_b = idf * w * 2.5 / (w + 1.5 * (1 - 0.5 + 0.5 * w / avgdl))
    assert index.average_length == pytest.approx(avgdl)
    scores = dict(index.search("Alpha!", 10))
    assert scores["a"] == pytest.approx(expected_a)
    # "b" is also exactly named "alpha": the exact-name term adds an unnormalised bonus.
    exact_idf = math.log(1 + (3 - 1 + 0.5) / (1 + 0.5))
    assert scores["b"] == pytest.approx(expected_b + exact_idf * 2.5 * 3.0 / (3.0 + 1.5))
    assert "c" not in scores


def test_results_are_ordered_and_ties_broken_by_tool_id() -> None:
    docs = [tool(f"id-{c}", "same words here") for c in "edcba"] + [tool("z", "same words here twice")]
    index = LexicalIndex.build(docs)
    assert [tool_id for tool_id, _ in index.search("words", 3)] == ["id-a", "id-b", "id-c"]
    results = index.search("words", 10)
    assert [tool_id for tool_id, _ in results] == ["id-a", "id-b", "id-c", "id-d", "id-e", "z"]
    assert [s for _, s in results] == sorted((s for _, s in results), reverse=True)


def test_degenerate_queries() -> None:
    index = LexicalIndex.build([tool("a", "weather")])
    assert index.search("weather", 0) == []
    assert index.search("", 5) == []
    assert index.search("the of and", 5) == []
    assert index.search("unknownword", 5) == []
    assert LexicalIndex().search("weather", 5) == []
    with pytest.raises(ValueError, match="k1"):
        LexicalIndex(k1=-1)


def _assert_same_index(index: LexicalIndex, fresh: LexicalIndex, queries: list[str]) -> None:
    assert len(index) == len(fresh)
    assert index.average_length == pytest.approx(fresh.average_length)
    for query in queries:
        for term in tokenize(query):
            assert index.document_frequency(term) == fresh.document_frequency(term)
        got, want = index.scores(query), fresh.scores(query)
        assert got.keys() == want.keys()
        for tool_id, score in want.items():
            assert got[tool_id] == pytest.approx(score, rel=1e-12), (query, tool_id)
        assert [i for i, _ in index.search(query, 10)] == [i for i, _ in fresh.search(query, 10)]


QUERIES = [
    "get channel clips and emotes",
    "send email",
    "github pull request review comments",
    "basketball games and players",
    "contacts by tag",
    "Messi transfer",
]


def test_add_and_remove_match_a_fresh_build(corpus: list[ToolText]) -> None:
    first, second = corpus[::2], corpus[1::2]
    index = LexicalIndex.build(first)
    # Searching between changes fills caches that each change must invalidate.
    for doc in second:
        index.search(QUERIES[0], 5)
        index.add(doc)
    removed = {doc.tool_id for doc in corpus[::3]}
    for tool_id in sorted(removed):
        index.search(QUERIES[0], 5)
        assert index.remove(tool_id)
    assert not index.remove("no such tool")
    kept = [doc for doc in corpus if doc.tool_id not in removed]
    _assert_same_index(index, LexicalIndex.build(kept), QUERIES)

    for query in [*QUERIES, *(doc.name for doc in corpus)]:
        assert removed.isdisjoint(tool_id for tool_id, _ in index.search(query, len(corpus)))
    assert all(tool_id not in index for tool_id in removed)

    # Slots freed by removal are reused, and the statistics stay right.
    for doc in corpus:
        if doc.tool_id in removed:
            index.add(doc)
    _assert_same_index(index, LexicalIndex.build(corpus), QUERIES)


def test_add_replaces_a_tool_with_the_same_id(corpus: list[ToolText]) -> None:
    index = LexicalIndex.build(corpus)
    clips = next(doc for doc in corpus if doc.name == "Get Channel Clips")
    changed = ToolText(clips.tool_id, clips.server, "", "Stream Thumbnails", "", "Preview images of a stream")
    index.add(changed)
    assert len(index) == len(corpus)
    assert clips.tool_id not in {t for t, _ in index.search("clips", 5)}
    assert index.search("stream thumbnails", 1)[0][0] == clips.tool_id
    rebuilt = [changed if doc.tool_id == clips.tool_id else doc for doc in corpus]
    _assert_same_index(index, LexicalIndex.build(rebuilt), [*QUERIES, "clips", "thumbnails"])


def test_removing_everything_empties_the_index(corpus: list[ToolText]) -> None:
    index = LexicalIndex.build(corpus)
    for doc in corpus:
        index.remove(doc.tool_id)
    assert len(index) == 0
    assert index.average_length == 0.0
    assert index.document_frequency("channel") == 0
    assert index.search("channel", 5) == []


def test_allowed_filter(corpus: list[ToolText]) -> None:
    index = LexicalIndex.build(corpus)
    query = "get channel details github issues"
    everything = index.search(query, len(corpus))
    kick = "Kick.com API | Kick API/"

    def only_kick(tool_id: str) -> bool:
        return tool_id.startswith(kick)

    filtered = index.search(query, 3, allowed=only_kick)
    assert filtered == [hit for hit in everything if only_kick(hit[0])][:3]

    # The allowed tools rank last, so the search must look past its first k candidates.
    calls: list[str] = []
    tail = {tool_id for tool_id, _ in everything[-3:]}

    def only_tail(tool_id: str) -> bool:
        calls.append(tool_id)
        return tool_id in tail

    assert index.search(query, 2, allowed=only_tail) == everything[-3:-1]
    assert len(calls) == len(set(calls))  # each candidate is checked once
    calls.clear()

    def allow_all(tool_id: str) -> bool:
        calls.append(tool_id)
        return True

    assert index.search(query, 2, allowed=allow_all) == everything[:2]
    assert calls == [tool_id for tool_id, _ in everything[:2]]  # only as many checks as results
    assert index.search(query, 5, allowed=lambda _: False) == []


def test_query_parts_split_multi_intent_requests_by_sentence() -> None:
    text = (
        "I'm planning a fitness retreat. Can you list exercises that target the back and chest? "
        "Additionally, fetch the horoscope for Leo; version 3.5 is fine."
    )
    assert query_parts(text) == [
        "I'm planning a fitness retreat.",
        "Can you list exercises that target the back and chest?",
        "Additionally, fetch the horoscope for Leo;",
        "version 3.5 is fine.",
    ]
    assert query_parts("get channel clips") == []  # one part: nothing to split
    assert query_parts("Hi. Get the weather in Lisbon.") == []  # "Hi." is too short to count


@pytest.mark.parametrize(
    "query",
    [
        "get channel clips",
        "getWeatherForecast for Lisbon, then the Free NBA scores!",
        "the of and",
        "",
        "   ",
    ],
)
def test_query_terms_are_tokenize_and_phrase_key(query: str) -> None:
    # The index splits a query once; the terms must be exactly what the documents were
    # indexed with (tokenize for words, phrase_key for the exact-name term).
    expected = [(term, False) for term in dict.fromkeys(tokenize(query))]
    key = phrase_key(query)
    if key is not None:
        expected.append((key, True))
    assert query_terms(query) == expected


@pytest.fixture(scope="module")
def toolbench_and_toolsdk() -> tuple[list[ToolText], list[str]]:
    """All 10,489 real tools and 150 real requests, with each request's sentences."""
    corpus, queries = load_toolbench(shared_data(), distractors=True)
    texts = [q.text for q in queries.queries[::5]]
    return list(corpus.tools), texts + [part for text in texts for part in query_parts(text)]


def test_pruned_search_equals_scoring_every_posting(
    toolbench_and_toolsdk: tuple[list[ToolText], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """MaxScore skips the postings of weak terms; results and scores must be exactly those of
    the full scan, at every depth, with a filter, and after the index changes."""
    tools, requests = toolbench_and_toolsdk
    index = LexicalIndex.build(tools)
    pruned_runs: list[bool] = []
    real = index._top_pruned

    def counted(*args: Any) -> Any:
        found = real(*args)
        pruned_runs.append(found is not None)
        return found

    monkeypatch.setattr(index, "_top_pruned", counted)
    some_servers = {t.server for t in tools[::7]}

    def allowed(tool_id: str) -> bool:
        return tool_id.split("/")[0] in some_servers or tool_id.startswith("@")

    def run(prune: bool) -> list[list[tuple[str, float]]]:
        monkeypatch.setattr(lexical_module, "_PRUNE_MIN_POSTINGS", 0 if prune else 10**12)
        out = []
        for text in requests:
            for k in (1, 10, 64):
                out.append(index.search(text, k))
            out.append(index.search(text, 20, allowed=allowed))
        return out

    assert run(prune=True) == run(prune=False)
    assert sum(pruned_runs) > 0.5 * len(pruned_runs), "the pruned path must do most of the work"
    for tool_text in tools[:500]:
        index.remove(tool_text.tool_id)
    for tool_text in tools[:250]:
        index.add(tool_text)
    assert run(prune=True) == run(prune=False)


def test_request_searcher_equals_search_and_scores_a_repeated_text_once(
    toolbench_and_toolsdk: tuple[list[ToolText], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One request's searcher (its spans, the whole request, its sentences) returns exactly
    what separate searches return, at every depth and with a filter; a text whose terms
    repeat an earlier one's is not scored again when that search went deep enough."""
    tools, requests = toolbench_and_toolsdk
    index = LexicalIndex.build(tools)
    servers = {t.server for t in tools[::3]}

    def allowed(tool_id: str) -> bool:
        return tool_id.split("/")[0] in servers

    scored: list[int] = []
    real = index._search_terms

    def counted(*args: Any) -> Any:
        scored.append(1)
        return real(*args)

    for flt in (None, allowed):
        for text in requests[:60]:
            expected = [index.search(text, k, allowed=flt) for k in (64, 10, 3, 100)]
            monkeypatch.setattr(index, "_search_terms", counted)
            scored.clear()
            search = index.searcher(flt)
            # The same terms again (punctuation makes no term): served by the first search.
            got = [search(text, 64), search(text + " ?!", 10), search(text, 3), search(text, 100)]
            monkeypatch.undo()
            assert got == expected
            # Then deeper for 100, unless the first search ran out of matches.
            assert len(scored) == (2 if len(expected[0]) == 64 else 1)
    assert index.searcher()("", 5) == []
    assert index.searcher()("get weather", 0) == []
