"""The evaluation harness behind `toolgate eval`: index a corpus into a fresh index, run every
query through the same pipeline `find_tools` uses, and report the data README's metrics.

With folds, usage vectors learn only from the training queries of each split; every query is
scored exactly once, by the split that held it out.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .corpus import Corpus, Query, QuerySet, kfold
from .metrics import MetricSet, percentile
from .pipeline import DESCRIPTION, Embedder, RetrievalSettings, Retriever, ToolRecord, embedding_text
from .tokens import listing_tokens, tokenizer_name, tool_tokens

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class EvalOptions:
    folds: int = 0  # 0: no usage learning; N >= 2: N-fold cross-validation by query
    seed: int = 13
    depth: int = 20  # ranking depth scored (the largest K)
    token_limit: int = 5  # tools handed to the client, for the token cost
    settings: RetrievalSettings = field(default_factory=RetrievalSettings)
    embed_sample: int = 512  # texts timed to measure the embedder's own throughput


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
    """Index `corpus` into `retriever` (which must be empty) and score `queries`."""
    opts = options or EvalOptions()
    records = records_of(corpus)
    build = _build(retriever, records, progress)
    floor_embed = _embedder_throughput(retriever.embedder, records, opts.embed_sample)
    tokens = {tool.tool_id: tool_tokens(tool) for tool in corpus.tools}
    metrics = MetricSet(
        tools=len(records), listing_tokens=listing_tokens(corpus.tools), limit=opts.token_limit
    )
    floor: list[float] = []

    splits: list[tuple[list[Query], list[Query]]]
    if opts.folds >= 2:
        splits = kfold(list(queries.queries), opts.folds, opts.seed)
    else:
        splits = [([], list(queries.queries))]
    done = 0
    total = len(queries.queries)
    for train, test in splits:
        retriever.reset_usage()
        if train:
            vectors = retriever.embedder.encode([q.text for q in train])
            for query, vector in zip(train, vectors, strict=True):
                for tool_id in query.relevant:
                    retriever.record_use(tool_id, vector)
        for query in test:
            started = time.perf_counter()
            hits = retriever.search(query.text, opts.depth)
            latency = time.perf_counter() - started
            ranked = [hit.tool_id for hit in hits]
            returned = sum(tokens.get(tool_id, 0) for tool_id in ranked[: opts.token_limit])
            metrics.add(query.id, query.group, ranked, query.relevant, latency, returned)
            floor.append(_floor(retriever, query.text, opts.depth))
            done += 1
            progress("query", done, total)
    report = metrics.report()
    report["floor_ms"] = {"p50": _ms(percentile(floor, 50)), "p99": _ms(percentile(floor, 99))}
    report["index"] = {
        "tools": len(records),
        "build_s": round(build, 2),
        "tools_per_s": round(len(records) / build, 1) if build > 0 else None,
        "embedder_texts_per_s": round(floor_embed, 1),
        "build_vs_embedder": round((len(records) / build) / floor_embed, 3)
        if build > 0 and floor_embed
        else None,
    }
    report["folds"] = opts.folds if opts.folds >= 2 else 0
    report["seed"] = opts.seed
    report["tokenizer"] = tokenizer_name()
    report["embedder"] = retriever.embedder.model_id
    report["settings"] = {k: v for k, v in vars(opts.settings).items()}
    return report


def _build(retriever: Retriever, records: Sequence[ToolRecord], progress: Progress) -> float:
    done = 0

    def step(n: int) -> None:
        nonlocal done
        done += n
        progress("index", done, len(records))

    started = time.perf_counter()
    retriever.upsert(records, progress=step)
    retriever.index.optimize()
    return time.perf_counter() - started


def _embedder_throughput(embedder: Embedder, records: Sequence[ToolRecord], sample: int) -> float:
    """Texts per second of the embedder alone on the corpus's own texts (the indexing floor)."""
    texts = [embedding_text(r.text) for r in records[:sample]]
    if not texts:
        return 0.0
    started = time.perf_counter()
    embedder.encode(texts)
    return len(texts) / (time.perf_counter() - started)


def _floor(retriever: Retriever, text: str, depth: int) -> float:
    """Query embedding alone plus one exact vector scan: what no pipeline can beat."""
    started = time.perf_counter()
    vector = retriever.embed_query(text)
    retriever.index.search(DESCRIPTION, vector, depth, None, exact=True)
    return time.perf_counter() - started


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
