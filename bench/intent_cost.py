"""Where a warm find spends its time with the intent stage on, at ToolBench + toolsdk
(10,489 tools): section timers around the intent stage's parts and a cProfile of the queries.

    python -m bench.intent_cost --index /tmp/intent-cost-index --queries 200 [--profile]

The index is built once into ``--index`` and adopted (no embedding) on later runs.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import shared_data
from retrieval.corpus import Query, load_toolbench
from retrieval.embedder import load_embedder
from retrieval.evaluate import records_of
from retrieval.index import open_index
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--index", type=Path, default=Path("/tmp/intent-cost-index"))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--profile", action="store_true")
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
    if profiler:
        stats = pstats.Stats(profiler)
        stats.sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
