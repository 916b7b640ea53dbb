"""The evaluation harness behind `toolgate eval`: index a corpus into a fresh index, run every
query through the same pipeline `find_tools` uses, and report the data README's metrics.

With folds, usage vectors learn only from the training queries of each split; every query is
scored exactly once, by the split that held it out.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .corpus import Corpus, Query, QuerySet, kfold, text_key
from .intent_stage import PreparedQuery
from .metrics import MetricSet, QueryRecord, percentile
from .pipeline import (
    DESCRIPTION,
    EMBED_BATCH,
    Embedder,
    RetrievalSettings,
    Retriever,
    ToolRecord,
    embedding_text,
)
from .tokens import listing_tokens, tokenizer_name, tool_tokens
from .usage import Vector

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class EvalOptions:
    folds: int = 0  # 0: no usage learning; N >= 2: N-fold cross-validation by query
    seed: int = 13
    depth: int = 20  # ranking depth scored (the largest K)
    token_limit: int = 5  # tools handed to the client, for the token cost
    # Applied to the retriever before scoring when given; None keeps the retriever's own.
    settings: RetrievalSettings | None = None
    # Records whose texts are timed to measure the embedder's own throughput (0: all).
    embed_sample: int = 0
    # False: the retriever already holds `corpus` (built by an earlier call); only score.
    # One build can then serve many settings.
    build: bool = True
    adaptive: bool = False  # stage 3 adaptive cut (ranked lists may be shorter than depth)
    # The intent stage (built-in parser) on or off; None follows the settings' default.
    intent: bool | None = None
    per_query: bool = False  # add each query's figures to the report (for paired comparisons)


def records_of(corpus: Corpus) -> list[ToolRecord]:
    return [
        ToolRecord(text=tool, version="1", category=corpus.categories.get(tool.tool_id))
        for tool in corpus.tools
    ]


def _no_progress(_phase: str, _done: int, _total: int) -> None:
    return None


def evaluate(
    corpus: Corpus,
    queries: QuerySet,
    retriever: Retriever,
    options: EvalOptions | None = None,
    progress: Progress = _no_progress,
) -> dict[str, Any]:
    """Index `corpus` into `retriever` (which must be empty, unless `options.build` is false)
    and score `queries`. Latency is one `Retriever.search` call, query embedding included."""
    opts = options or EvalOptions()
    if opts.settings is not None:
        retriever.settings = opts.settings
    records = records_of(corpus)
    index_report: dict[str, Any] | None = None
    if opts.build:
        # The machine's load drifts, so the embedder is timed right before and right after
        # the build and the mean is the floor.
        before = embedder_throughput(retriever.embedder, records, opts.embed_sample, opts.seed)
        build = _build(retriever, records, progress)
        after = embedder_throughput(retriever.embedder, records, opts.embed_sample, opts.seed)
        floor_embed = (before + after) / 2
        index_report = {
            "tools": len(records),
            "build_s": round(build["total"], 2),
            "phases_s": {k: round(v, 2) for k, v in build.items() if k != "total"},
            "tools_per_s": round(len(records) / build["total"], 1) if build["total"] > 0 else None,
            "embedder_texts_per_s": round(floor_embed, 1),
            "embedder_before_after": [round(before, 1), round(after, 1)],
            "build_vs_embedder": round((len(records) / build["total"]) / floor_embed, 3)
            if build["total"] > 0 and floor_embed
            else None,
        }
    tokens = {tool.tool_id: tool_tokens(tool) for tool in corpus.tools}
    listing = listing_tokens(corpus.tools)
    metrics = MetricSet(tools=len(records), listing_tokens=listing, limit=opts.token_limit)
    # Queries that need several tools: what the intent stage is for.
    multi = MetricSet(tools=len(records), listing_tokens=listing, limit=opts.token_limit)
    intent = retriever.settings.intent if opts.intent is None else opts.intent
    parse_s: list[float] = []
    sub_intents: list[int] = []
    floor: list[float] = []
    returned_counts: list[int] = []
    splits = _splits(queries.queries, opts)
    # Training queries are embedded once for all folds (test queries are embedded inside the
    # timed search call).
    trained = {q.id: q for train, _ in splits for q in train}
    train_vectors = _embed_queries(retriever, list(trained.values()))
    done = 0
    total = len(queries.queries)
    for train, test in splits:
        _train(retriever, train, train_vectors)
        for query in test:
            started = time.perf_counter()
            prepared = retriever.prepare(query.text, intent=intent)
            hits = retriever.search_prepared(prepared, opts.depth, adaptive=opts.adaptive)
            latency = time.perf_counter() - started
            ranked = [hit.tool_id for hit in hits]
            returned_counts.append(len(ranked))
            returned = sum(tokens.get(tool_id, 0) for tool_id in ranked[: opts.token_limit])
            metrics.add(query.id, query.group, ranked, query.relevant, latency, returned)
            if len(query.relevant) > 1:
                multi.add(query.id, query.group, ranked, query.relevant, latency, returned)
            if prepared.intent is not None:
                parse_s.append(prepared.parse_s)
                sub_intents.append(len(prepared.intent.sub_intents))
            floor.append(_floor(retriever, query.text, opts.depth))
            done += 1
            progress("query", done, total)
    retriever.reset_usage()
    report = metrics.report()
    report["floor_ms"] = {"p50": _ms(percentile(floor, 50)), "p99": _ms(percentile(floor, 99))}
    if len(multi):
        report["multi_tool"] = multi.report()
    report["intent"] = _intent_report(intent, parse_s, sub_intents)
    if opts.per_query:
        report["per_query"] = [_query_row(record) for record in metrics.records]
    if index_report is not None:
        report["index"] = index_report
    if opts.adaptive:
        report["returned_mean"] = round(float(np.mean(returned_counts)), 2)
    report["folds"] = opts.folds if opts.folds >= 2 else 0
    report["seed"] = opts.seed
    report["tokenizer"] = tokenizer_name()
    report["embedder"] = retriever.embedder.model_id
    report["settings"] = dict(vars(retriever.settings))
    return report


def score(
    queries: Sequence[Query],
    retriever: Retriever,
    vectors: Mapping[str, Vector],
    *,
    folds: int = 5,
    seed: int = 13,
    depth: int = 20,
    settings: RetrievalSettings | None = None,
    adaptive: bool = False,
    prepared: Mapping[str, PreparedQuery] | None = None,
) -> dict[str, Any]:
    """Quality only, for tuning: like :func:`evaluate` on an already built retriever, but with
    query vectors computed beforehand (``vectors`` by query id), so no latency is reported.
    Same folds and usage training as `evaluate` with the same folds and seed. With
    ``prepared`` (by query id, see :func:`prepare_queries`) the queries are searched as
    prepared (the intent stage); without, by the plain pipeline whatever ``settings.intent``
    says. The report has ``multi_tool`` figures too."""
    if settings is not None:
        retriever.settings = settings
    metrics = MetricSet(tools=len(retriever))
    multi = MetricSet(tools=len(retriever))
    opts = EvalOptions(folds=folds, seed=seed, depth=depth)
    returned = []
    for train, test in _splits(queries, opts):
        _train(retriever, train, vectors)
        for query in test:
            if prepared is not None:
                hits = retriever.search_prepared(prepared[query.id], depth, adaptive=adaptive)
            else:
                hits = retriever.search_with_vector(query.text, vectors[query.id], depth, adaptive=adaptive)
            returned.append(len(hits))
            ranked = [h.tool_id for h in hits]
            metrics.add(query.id, query.group, ranked, query.relevant, 0.0)
            if len(query.relevant) > 1:
                multi.add(query.id, query.group, ranked, query.relevant, 0.0)
    retriever.reset_usage()
    report = metrics.report()
    del report["latency_ms"], report["tokens"]
    if len(multi):
        report["multi_tool"] = {k: v for k, v in multi.report().items() if k not in ("latency_ms", "tokens")}
    if adaptive:
        report["returned_mean"] = round(float(np.mean(returned)), 2)
    return report


def prepare_queries(
    retriever: Retriever, queries: Sequence[Query], *, intent: bool = True
) -> dict[str, PreparedQuery]:
    """Every query prepared for :meth:`Retriever.search_prepared` (for :func:`score`)."""
    return {q.id: retriever.prepare(q.text, intent=intent) for q in queries}


def embed_queries(retriever: Retriever, queries: Sequence[Query]) -> dict[str, Vector]:
    """Every query's vector by id (for :func:`score`)."""
    return _embed_queries(retriever, queries)


def holdout_split(queries: Sequence[Query], share: float, seed: int) -> tuple[list[Query], list[Query]]:
    """Split queries once into (tune, held-out): `share` of them tune. Queries with the same
    text stay together (as in `kfold`), the order is kept, and the split depends only on the
    queries, `share` and `seed`."""
    units: dict[str, list[int]] = {}
    for position, query in enumerate(queries):
        units.setdefault(text_key(query.text), []).append(position)
    order = list(units.values())
    random.Random(seed).shuffle(order)
    wanted = round(share * len(queries))
    chosen: set[int] = set()
    for unit in order:
        if len(chosen) >= wanted:
            break
        chosen.update(unit)
    tune = [q for i, q in enumerate(queries) if i in chosen]
    held = [q for i, q in enumerate(queries) if i not in chosen]
    return tune, held


def _splits(queries: Sequence[Query], opts: EvalOptions) -> list[tuple[list[Query], list[Query]]]:
    if opts.folds >= 2:
        return kfold(list(queries), opts.folds, opts.seed)
    return [([], list(queries))]


def _embed_queries(retriever: Retriever, queries: Sequence[Query]) -> dict[str, Vector]:
    if not queries:
        return {}
    vectors = retriever.embedder.encode([q.text for q in queries])
    return {q.id: vectors[i] for i, q in enumerate(queries)}


def _train(retriever: Retriever, train: Sequence[Query], vectors: Mapping[str, Vector]) -> None:
    retriever.reset_usage()
    for query in train:
        for tool_id in query.relevant:
            retriever.record_use(tool_id, vectors[query.id])


def _build(retriever: Retriever, records: Sequence[ToolRecord], progress: Progress) -> dict[str, float]:
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        progress("index", done, len(records))

    started = time.perf_counter()
    retriever.upsert(records, progress=step)
    upserted = time.perf_counter()
    retriever.index.optimize()
    ended = time.perf_counter()
    return {"total": ended - started, "upsert": upserted - started, "optimize": ended - upserted}


def embedder_throughput(embedder: Embedder, records: Sequence[ToolRecord], sample: int, seed: int) -> float:
    """Texts per second of the embedder alone: the indexing floor. Measured on the texts
    indexing embeds for the tools (their description texts; server texts are left out, so
    the floor is strict) in one encode call at the indexing batch size, the call sorting them
    by length as indexing does. A seeded random sample of `sample` records (0: all of them);
    a sample pads a little more than the whole corpus, so 0 is the fair comparison."""
    chosen = list(records)
    if 0 < sample < len(chosen):
        chosen = random.Random(seed).sample(chosen, sample)
    if not chosen:
        return 0.0
    texts = [embedding_text(r.text) for r in chosen]
    started = time.perf_counter()
    embedder.encode(texts, batch_size=EMBED_BATCH)
    return len(texts) / (time.perf_counter() - started)


def _floor(retriever: Retriever, text: str, depth: int) -> float:
    """Query embedding alone plus one exact vector scan: what no pipeline can beat."""
    started = time.perf_counter()
    vector = retriever.embed_query(text)
    retriever.index.search(DESCRIPTION, vector, depth, None, exact=True)
    return time.perf_counter() - started


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _intent_report(on: bool, parse_s: Sequence[float], sub_intents: Sequence[int]) -> dict[str, Any]:
    """Whether the intent stage ran, the built-in parser's own time and how it split requests."""
    if not on or not sub_intents:
        return {"on": on}
    return {
        "on": True,
        "parser_ms": {
            "mean": _ms(float(np.mean(parse_s))),
            "p50": _ms(percentile(parse_s, 50)),
            "p99": _ms(percentile(parse_s, 99)),
        },
        "sub_intents_mean": round(float(np.mean(sub_intents)), 3),
        "split_share": round(sum(n > 1 for n in sub_intents) / len(sub_intents), 4),
    }


def _query_row(record: QueryRecord) -> dict[str, Any]:
    return {
        "id": record.query_id,
        "group": record.group,
        **{k: record.metrics[k] for k in ("recall@5", "ndcg@10", "completeness@10", "recall@10")},
        "latency_ms": _ms(record.latency_s),
        "returned_tokens": record.returned_tokens,
    }
