"""The built-in intent parser on real ToolBench requests from the shared data: clause splitting,
verbs and effects, named tools and servers, and domain hints from server and category centroids
built with the real embedder (ONNX export of all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retrieval.documents import tool_text_from_record
from retrieval.embedder import OnnxEmbedder, load_onnx
from retrieval.intent import DomainIndex, EmbedFn, Intent, IntentParser, SubIntent, Vocabulary
from retrieval.pipeline import embedding_text
from tests.support import shared_data

# Measured on the 738 multi-tool ToolBench queries: 98.0% parse into two or more sub-intents
# (G1 93.5-96.8%, G2 and G3 100%); the 27 single-tool ones: 77.8%, since ToolBench's writers ask
# for one tool's output in several sentences too.
MULTI_TOOL_SPLIT_FLOOR = 0.95


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            yield json.loads(line)


@pytest.fixture(scope="module")
def queries() -> dict[str, dict[str, Any]]:
    return {row["id"]: row for row in _jsonl(shared_data() / "toolbench" / "queries.jsonl")}


@pytest.fixture(scope="module")
def tools() -> list[dict[str, Any]]:
    return list(_jsonl(shared_data() / "toolbench" / "tools.jsonl"))


@pytest.fixture(scope="module")
def parser(tools: list[dict[str, Any]]) -> IntentParser:
    """The parser with the whole ToolBench catalog (2,479 tools, 811 servers) as vocabulary."""
    return IntentParser(Vocabulary([t["name"] for t in tools], [t["server"] for t in tools]))


def _parse(
    parser: IntentParser,
    queries: dict[str, dict[str, Any]],
    query_id: str,
    snippet: str,
    embed: EmbedFn | None = None,
) -> Intent:
    text = queries[query_id]["query"]
    assert snippet in text, f"{query_id} is not the query this test was written for"
    return parser.parse(text, embed=embed)


def _actions(intent: Intent) -> list[str | None]:
    return [sub.action for sub in intent.sub_intents]


# --- splitting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query_id", "snippet", "actions"),
    [
        # two sentences, the second opened by "Additionally,"
        ("G1_instruction:73762", "Additionally, fetch the story", ["provide", "fetch"]),
        # "Also," with a bare "I need <noun phrase>" before it
        ("G2_category:43102", "Also, generate a QR code", [None, "generate"]),
        # the background sentence ("I'm planning a road trip") asks for nothing and is dropped
        ("G2_instruction:15929", "I'm planning a road trip", ["give", "provide"]),
        # "and" followed by a verb phrase splits one sentence: remove ... and replace them
        ("G1_category:46455", "and replace them with asterisks", ["remove", "replace", "know"]),
        # "and let me know": the second verb phrase of a question
        ("G1_category:54640", "and let me know when", ["generate", "create", "know"]),
        # "... and I want to ...": a background clause joined to a request by "and"
        ("G1_instruction:62757", "I'm planning a trip to New York and I want", ["know", "create", "provide"]),
        ("G2_instruction:38666", "Can you also fetch the company information", ["know", "provide", "fetch"]),
    ],
)
def test_compound_requests_split_into_their_parts(
    parser: IntentParser,
    queries: dict[str, dict[str, Any]],
    query_id: str,
    snippet: str,
    actions: list[str | None],
) -> None:
    intent = _parse(parser, queries, query_id, snippet)
    assert _actions(intent) == actions
    assert len(queries[query_id]["relevant"]) >= 2


def test_spans_are_exact_slices_without_connectives(
    parser: IntentParser, queries: dict[str, dict[str, Any]]
) -> None:
    intent = _parse(parser, queries, "G1_instruction:73762", "Additionally, fetch the story")
    first, second = intent.sub_intents
    assert first.span == "Can you provide me with the hashtag details for the hashtag 'foodie'"
    assert first.object == "the hashtag details for the hashtag 'foodie'"  # "me with" is not the object
    assert second.span == "fetch the story associated with the URL 'https://instagram.com/stories/story1'"
    assert second.span.startswith("fetch")  # "Additionally," is not part of it


@pytest.mark.parametrize(
    ("query_id", "snippet", "action"),
    [
        ("G1_category:86251", "Can you help me analyze the number of pages", "analyze"),  # "help me <verb>"
        ("G1_category:86288", "Could you give me a list of Java versions", "give"),  # greeting and remarks
        ("G1_instruction:87632", "Could you assist us by retrieving", "retrieve"),  # "assist us by <verb>ing"
        # "a random quote and a list of all the available anime": "and" inside a noun phrase
        ("G1_instruction:32309", "a random quote and a list of", "give"),
    ],
)
def test_single_requests_stay_single(
    parser: IntentParser, queries: dict[str, dict[str, Any]], query_id: str, snippet: str, action: str
) -> None:
    intent = _parse(parser, queries, query_id, snippet)
    assert _actions(intent) == [action]


def test_vague_and_refining_clauses_are_not_sub_intents(
    parser: IntentParser, queries: dict[str, dict[str, Any]]
) -> None:
    # "Can you help me with this task?" and "I want to make sure the API supports ..." ask for
    # nothing a tool does on their own.
    intent = _parse(parser, queries, "G1_category:4273", "Can you help me with this task?")
    assert [sub.span for sub in intent.sub_intents] == [
        "I need to send a text to the text-to-speech API",
        "get the speech output in English",
    ]


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        (
            "find Messi's transfers, then the latest match scores and email them to me",
            ["find Messi's transfers", "the latest match scores", "email them to me"],
        ),
        (
            "First get the weather in Paris, also book a table for two",
            ["get the weather in Paris", "book a table for two"],
        ),
        (
            "Search for flights to Rome; cancel my hotel booking",
            ["Search for flights to Rome", "cancel my hotel booking"],
        ),
        ("1. List my open issues 2. Close the stale ones", ["List my open issues", "Close the stale ones"]),
        ("- fetch the logs\n- restart the server", ["fetch the logs", "restart the server"]),
        ("Recommend some rock and roll songs", ["Recommend some rock and roll songs"]),
        ("Suggest a stew seasoned with salt and pepper", ["Suggest a stew seasoned with salt and pepper"]),
        (
            "Look up the rating of Inception, e.g. on IMDb, and then remove it from my watchlist.",
            ["Look up the rating of Inception, e.g. on IMDb", "remove it from my watchlist"],
        ),
    ],
)
def test_clause_rules_on_written_examples(text: str, spans: list[str]) -> None:
    assert [sub.span for sub in IntentParser().parse(text).sub_intents] == spans


def test_a_verbless_part_borrows_the_previous_action() -> None:
    intent = IntentParser().parse("find Messi's transfers, then the latest match scores and email them to me")
    assert [(s.action, s.effect) for s in intent.sub_intents] == [
        ("find", "read"),
        ("find", "read"),
        ("email", "write"),
    ]


def test_most_multi_tool_requests_split(parser: IntentParser, queries: dict[str, dict[str, Any]]) -> None:
    counts: dict[bool, list[int]] = defaultdict(list)
    for row in queries.values():
        counts[len(row["relevant"]) > 1].append(len(parser.parse(row["query"]).sub_intents))
    multi = counts[True]
    split = sum(1 for n in multi if n >= 2) / len(multi)
    assert len(multi) == 738
    assert split >= MULTI_TOOL_SPLIT_FLOOR, f"{split:.3f} of multi-tool requests split"
    assert max(multi) <= 8  # a request is not shredded into every comma


def test_every_request_keeps_exact_ordered_spans(
    parser: IntentParser, queries: dict[str, dict[str, Any]]
) -> None:
    for row in queries.values():
        intent = parser.parse(row["query"])
        assert intent.sub_intents, row["id"]
        end = 0
        for sub in intent.sub_intents:
            assert row["query"][sub.start : sub.end] == sub.span
            assert sub.start >= end
            assert sub.span == sub.span.strip()
            end = sub.end
        assert json.loads(json.dumps(intent.to_dict()))["parser"] == "builtin"


def test_parse_latency_is_within_target(parser: IntentParser, queries: dict[str, dict[str, Any]]) -> None:
    """The issue's target: p50 <= 3 ms for the built-in parser (text part; embedding excluded).
    Measured here ~0.4 ms p50, ~0.7 ms p99 of CPU; the assertion leaves room for a busy machine."""
    texts = [row["query"] for row in queries.values()]
    for text in texts[:50]:
        parser.parse(text)  # warm the stemmer cache
    times = []
    for text in texts:
        started = time.perf_counter()
        parser.parse(text)
        times.append(time.perf_counter() - started)
    assert statistics.median(times) <= 0.003


# --- verbs and effects -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query_id", "snippet", "expected"),
    [
        (
            "G1_instruction:67007",
            "send an SMS to my friend",
            [("send", "write"), ("schedule", "write"), ("confirm", "read")],
        ),
        (
            "G1_instruction:29059",
            "I need to book a flight from London to Dubai",
            [("book", "write"), ("provide", "read"), ("search", "read")],
        ),
        (
            "G1_category:46455",
            "Can you remove any profane words",
            [("remove", "write"), ("replace", "write"), ("know", "read")],
        ),
        # "I'm interested in knowing": a gerund after the frame is the verb
        (
            "G2_instruction:11627",
            "I'm interested in knowing",
            [("fetch", "read"), ("know", "read"), ("gather", "read")],
        ),
        # "generate" reads or writes depending on what is generated: unknown, so no filter hides a tool
        ("G2_category:43102", "Also, generate a QR code", [(None, "unknown"), ("generate", "unknown")]),
    ],
)
def test_read_and_write_verbs(
    parser: IntentParser,
    queries: dict[str, dict[str, Any]],
    query_id: str,
    snippet: str,
    expected: list[tuple[str | None, str]],
) -> None:
    intent = _parse(parser, queries, query_id, snippet)
    assert [(s.action, s.effect) for s in intent.sub_intents] == expected


def test_question_forms_read() -> None:
    intent = IntentParser().parse(
        "What are the coordinates of 10 Downing Street? Also, I'd like to know its postcode."
    )
    assert [(s.action, s.effect, s.object) for s in intent.sub_intents] == [
        (None, "read", "the coordinates of 10 Downing Street"),
        ("know", "read", "its postcode"),
    ]


# --- named tools and servers -----------------------------------------------------------------


def test_servers_named_in_real_requests(parser: IntentParser, queries: dict[str, dict[str, Any]]) -> None:
    intent = _parse(parser, queries, "G2_instruction:27543", "in the 360 Business Tool")
    assert [s.named_servers for s in intent.sub_intents] == [
        (),
        ("360 Business Tool",),
        ("Company Consultation Reportero Industrial Mexicano API",),
    ]
    # the version suffix is part of the name when written: v3, not v2
    intent = _parse(parser, queries, "G1_tool:9792", "using the Currency Converter_v3 tool")
    assert intent.sub_intents[0].named_servers == ("Currency Converter_v3",)
    intent = _parse(parser, queries, "G1_instruction:20704", "in the BART network")
    assert intent.sub_intents[0].named_servers == ("BART",)


def test_tools_named_in_real_requests(parser: IntentParser, queries: dict[str, dict[str, Any]]) -> None:
    # quoted camelCase, without the catalog's bracketed note ("GetTaskResult [free of use]")
    intent = _parse(parser, queries, "G1_instruction:62757", "using the 'GetTaskResult' endpoint")
    assert intent.sub_intents[-1].named_tools == ("GetTaskResult [free of use]",)
    intent = _parse(parser, queries, "G1_instruction:17038", "using the Retrieve audio file API")
    assert [s.named_tools for s in intent.sub_intents] == [
        ("List available numbers for a country",),
        ("Retrieve audio file",),
    ]


def test_common_words_are_not_names(parser: IntentParser, queries: dict[str, dict[str, Any]]) -> None:
    # ToolBench has servers "weather_v14" and "story" and a tool "URL": prose uses the words anyway.
    intent = _parse(parser, queries, "G2_instruction:15929", "the current weather conditions")
    assert all(not s.named_servers and not s.named_tools for s in intent.sub_intents)
    intent = _parse(parser, queries, "G1_instruction:73762", "fetch the story associated with the URL")
    assert all(not s.named_servers and not s.named_tools for s in intent.sub_intents)


def test_vocabulary_matches_any_spelling_of_a_name() -> None:
    vocabulary = Vocabulary(
        tools=["get_current_weather", "sendEmail", "Search", "Get Data"],
        servers=["Shazam API", "Kick.com API | Kick API", "bitly", "Weather"],
    )

    def names(text: str) -> set[str]:
        return {name for _, _, found in vocabulary.find(text) for _, name in found}

    assert names("what does Get-Current-Weather return? and GetCurrentWeather?") == {"get_current_weather"}
    assert names("call send_email, or SENDEMAIL") == {"sendEmail"}
    assert names("top songs from Shazam") == {"Shazam API"}  # without its trailing "API"
    assert names("clips on kick.com") == {"Kick.com API | Kick API"}  # one side of "A | B"
    assert names("Shazamify my playlist") == set()  # whole words only
    assert names("shorten it with the bitly API") == {"bitly"}
    assert names("search the weather data") == set()  # common words in prose
    assert names("use the 'Search' tool, then getData") == {"Search", "Get Data"}  # quoted or an identifier
    assert vocabulary.resolve("kick api", "server") == ("Kick.com API | Kick API",)
    assert vocabulary.resolve("send email", "tool") == ("sendEmail",)
    assert vocabulary.resolve("send email", "server") == ()


# --- domain hints ----------------------------------------------------------------------------

DOMAIN_SERVERS = (
    "Easy Weather",
    "WeatherAPI.com",
    "Currency Converter_v2",
    "Food Nutrional Data",
    "Vimeo",
    "bitly",
    "Date Calculator",
    "BART",
    "Open Library",
    "Shazam",
)


@pytest.fixture(scope="module")
def embedder() -> OnnxEmbedder:
    return load_onnx()


@pytest.fixture(scope="module")
def domain_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    chosen = [t for t in tools if t["server"] in DOMAIN_SERVERS]
    assert {t["server"] for t in chosen} == set(DOMAIN_SERVERS)
    return chosen


def _centroids(embedder: OnnxEmbedder, rows: Sequence[dict[str, Any]], key: str) -> DomainIndex:
    vectors = embedder.encode([embedding_text(tool_text_from_record(row)) for row in rows])
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    for row, vector in zip(rows, vectors, strict=True):
        groups[f"{key}:{row[key]}"].append(vector)
    return DomainIndex.from_members({label: np.vstack(rows) for label, rows in groups.items()})


def test_domain_hints_point_at_the_servers_a_request_needs(
    embedder: OnnxEmbedder, domain_tools: list[dict[str, Any]], queries: dict[str, dict[str, Any]]
) -> None:
    parser = IntentParser(domains=_centroids(embedder, domain_tools, "server"))
    intent = _parse(parser, queries, "G2_instruction:15929", "current weather conditions", embedder.encode)
    weather, astronomy = intent.sub_intents
    assert weather.domains[0][0] in ("server:Easy Weather", "server:WeatherAPI.com")
    assert astronomy.domains[0][0] == "server:WeatherAPI.com"  # the relevant tool is its Astronomy API

    intent = _parse(parser, queries, "G1_tool:70359", "convert the value of my Bitcoin", embedder.encode)
    assert intent.sub_intents[0].domains[0][0] == "server:Currency Converter_v2"
    assert all(0.35 <= score <= 1.0 for sub in intent.sub_intents for _, score in sub.domains)


def test_category_centroids_and_batched_vectors(
    embedder: OnnxEmbedder, domain_tools: list[dict[str, Any]], queries: dict[str, dict[str, Any]]
) -> None:
    parser = IntentParser(domains=_centroids(embedder, domain_tools, "category"))
    query = queries["G2_instruction:15929"]["query"]
    plain = parser.parse(query)
    assert all(sub.domains == () for sub in plain.sub_intents)  # no vectors, no hints
    # The pipeline embeds the query and all spans in one call, then hands the span vectors over.
    vectors = embedder.encode([query, *plain.spans])
    batched = parser.with_domains(plain, vectors[1:])
    assert batched.sub_intents[0].domains[0][0] == "category:Weather"
    direct = parser.parse(query, embed=embedder.encode)
    assert [s.domains[0][0] for s in direct.sub_intents] == [s.domains[0][0] for s in batched.sub_intents]
    with pytest.raises(ValueError, match="as many vectors"):
        parser.with_domains(plain, vectors)


def test_domain_index_keeps_clear_winners_alone() -> None:
    centroids = np.eye(4, 5, dtype=np.float32)  # a fifth dimension no label points at
    index = DomainIndex(["a", "b", "c", "d"], centroids, top_k=3, threshold=0.3, margin=0.1)
    rows = np.array(
        [
            [0.9, 0.1, 0.0, 0.0, 0.0],  # one clear winner
            [0.6, 0.55, 0.5, 0.3, 0.0],  # three close ones, the fourth beyond top_k
            [0.2, 0.1, 0.1, 0.1, 0.9],  # nothing above the threshold
        ],
        dtype=np.float32,
    )
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    hints = index.hints(rows)
    assert [label for label, _ in hints[0]] == ["a"]
    assert [label for label, _ in hints[1]] == ["a", "b", "c"]
    assert hints[2] == ()
    assert index.hints(np.zeros((0, 5), np.float32)) == []


def test_sub_intent_to_dict_is_json() -> None:
    sub = SubIntent(
        "find flights", 0, 12, "find", "flights", (("server:Flights", 0.61234),), "read", ("x",), ()
    )
    assert sub.to_dict() == {
        "span": "find flights",
        "start": 0,
        "end": 12,
        "action": "find",
        "object": "flights",
        "domains": [{"label": "server:Flights", "score": 0.6123}],
        "effect": "read",
        "named_tools": ["x"],
        "named_servers": [],
    }
