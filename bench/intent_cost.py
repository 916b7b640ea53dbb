"""Where a warm find spends its time with the intent stage on, at ToolBench + toolsdk
(10,489 tools): prepare and search times, a cProfile of the queries, and (``--compare``) the
spans' candidate sections, interleaved on the same prepared queries: their dense candidates
from stage 1's lists (``Retriever._span_dense``, what the stage runs) against an index query
per span (``_span_dense_index``, what it ran before), and their BM25 searches.

    python -m bench.intent_cost --index /tmp/intent-cost-index --queries 200 [--profile] [--compare]

The index is built once into ``--index`` and adopted (no embedding) on later runs.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.common import shared_data
from retrieval.corpus import Query, load_toolbench
from retrieval.embedder import load_embedder
from retrieval.evaluate import records_of
from retrieval.index import open_index
from retrieval.intent_stage import PreparedQuery
from retrieval.pipeline import VECTOR_NAMES, Retriever


def open_retriever(path: Path) -> tuple[Retriever, list[Query]]:
    """The 10,489-tool retriever (built into ``path`` or adopted from it) and the queries."""
    corpus, queries = load_toolbench(shared_data(), distractors=True)
    embedder = load_embedder()
    index = open_index(None, path, dim=embedder.dim, vector_names=VECTOR_NAMES)
    retriever = Retriever(embedder, index)
    records = records_of(corpus)
    started = time.perf_counter()
    missing = retriever.adopt(records)
    if missing:
        retriever.upsert(missing)
        index.optimize()
    print(
        f"{len(retriever)} tools ready in {time.perf_counter() - started:.1f} s ({len(missing)} embedded)",
        file=sys.stderr,
    )
    return retriever, list(queries.queries)


def _timed(section: Callable[[], object]) -> float:
    started = time.perf_counter()
    section()
    return time.perf_counter() - started


def _sections(retriever: Retriever, prepared: PreparedQuery, depth: int) -> dict[str, Callable[[], object]]:
    """The span-candidate sections of one request, ready to time."""
    spans, intent = prepared.span_vectors, prepared.intent
    assert spans is not None
    assert intent is not None
    texts = [sub.span for sub in intent.sub_intents]
    first = retriever._stage1(prepared.query, prepared.vector, 20, None)
    allowed = first.allowed
    return {
        "dense: stage-1 lists": lambda: retriever._span_dense(first, spans),
        "dense: index query": lambda: retriever._span_dense_index(spans, None),
        "bm25 per span": lambda: [retriever.lexical.search(t, depth, allowed=allowed) for t in texts],
    }


def compare(retriever: Retriever, prepared: Sequence[PreparedQuery], rounds: int = 3) -> None:
    """Median time per request of each span-candidate section, the sections alternating in
    order, with the share of a span's dense picks the two dense paths agree on."""
    depth = max(retriever.settings.intent_pool, retriever.settings.pool_size)
    multi = [p for p in prepared if p.span_vectors is not None and p.intent is not None]
    times: dict[str, list[float]] = {}
    overlap: list[float] = []
    for n, p in enumerate(multi * rounds):
        sections = _sections(retriever, p, depth)
        for name in list(sections) if n % 2 else list(sections)[::-1]:
            times.setdefault(name, []).append(_timed(sections[name]))
        if n < len(multi):
            picked = sections["dense: stage-1 lists"]()
            own = sections["dense: index query"]()
            assert isinstance(picked, list)
            assert isinstance(own, list)
            # The first lists of the index path are the description ones, one per span.
            overlap += [len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(picked, own, strict=False)]
    print(f"{len(multi)} requests of several sub-intents, {rounds} rounds, medians per request:")
    for name in sorted(times):
        print(f"  {name:22} {1000 * np.median(times[name]):6.2f} ms")
    new, old = "dense: stage-1 lists", "dense: index query"
    print(f"  {new} / {old}: {np.median(times[new]) / np.median(times[old]):.2f}")
    print(f"  a span's dense picks shared with the index query's: {np.mean(overlap):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", type=Path, default=Path("/tmp/intent-cost-index"))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--compare", action="store_true", help="time the span sections, new vs old")
    args = parser.parse_args()
    retriever, queries = open_retriever(args.index)
    sample = list(queries)
    random.Random(args.seed).shuffle(sample)
    texts = [q.text for q in sample[: args.queries]]
    for text in texts[:20]:  # warm
        retriever.search_prepared(retriever.prepare(text, intent=True), 20)
    prepare_s, search_s = [], []
    profiler = cProfile.Profile() if args.profile else None
    for text in texts:
        if profiler:
            profiler.enable()
        t0 = time.perf_counter()
        prepared = retriever.prepare(text, intent=True)
        t1 = time.perf_counter()
        retriever.search_prepared(prepared, 20)
        t2 = time.perf_counter()
        if profiler:
            profiler.disable()
        prepare_s.append(t1 - t0)
        search_s.append(t2 - t1)
    print(
        f"prepare p50 {1000 * np.median(prepare_s):.2f} ms, search p50 {1000 * np.median(search_s):.2f} ms,"
        f" total p50 {1000 * np.median(np.add(prepare_s, search_s)):.2f} ms"
    )
    if args.compare:
        compare(retriever, [retriever.prepare(text, intent=True) for text in texts])
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
