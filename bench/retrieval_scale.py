"""Retrieval at scale: build time against the embedder's own throughput, query latency and
peak memory, on ToolBench + toolsdk (10,489 tools) replicated under renamed servers.

    python -m bench.retrieval_scale --tools 10489 --name retrieval_scale_10k
    python -m bench.retrieval_scale --tools 100000 --name retrieval_scale_100k

Copies are textually identical apart from the server name, so the quality figures of a
replicated corpus mean little (labels point at copy 0 and its twins tie with it); this run is
for latency (warm, one query at a time, query embedding included, as `toolgate eval` reports
it, with the floor: query embedding plus one exact vector scan), build speed and peak RSS.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine, save, shared_data
from retrieval.corpus import QuerySet, load_toolbench, replicate
from retrieval.embedder import load_embedder
from retrieval.evaluate import EvalOptions, evaluate
from retrieval.index import open_index
from retrieval.pipeline import VECTOR_NAMES, Retriever


def _rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _current_mb() -> float:
    """Resident set size now (the peak above includes transients of the build)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


_shown: dict[str, int] = {}


def _progress(phase: str, done: int, total: int) -> None:
    """A line each time another 5% of a phase is done (batches rarely land on exact steps)."""
    step = max(1, total // 20)
    if done == total or done // step > _shown.get(phase, -1):
        _shown[phase] = done // step
        print(f"  {phase}: {done}/{total} ({_rss_mb()} MB peak)", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tools", type=int, default=100_000, help="corpus size after replication")
    parser.add_argument("--queries", type=int, default=300, help="queries timed (a seeded sample)")
    parser.add_argument("--embed-sample", type=int, default=2000, help="texts timed for the embedder floor")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--name", default=None, help="result name under bench/results/")
    args = parser.parse_args()

    corpus, queries = load_toolbench(shared_data(), distractors=True)
    factor = max(1, math.ceil(args.tools / len(corpus.tools)))
    tools = replicate(corpus.tools, factor)[: args.tools]
    scaled = dataclasses.replace(corpus, tools=tuple(tools))
    sample = list(queries.queries)
    random.Random(args.seed).shuffle(sample)
    chosen = QuerySet(queries=tuple(sorted(sample[: args.queries], key=lambda q: q.id)), flaws=queries.flaws)
    print(f"{len(tools)} tools ({factor}x replication), {len(chosen.queries)} queries", file=sys.stderr)

    rss_start = _rss_mb()
    embedder = load_embedder()
    rss_model = _rss_mb()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="toolgate-scale-") as workdir:
        index = open_index(None, Path(workdir) / "index", dim=embedder.dim, vector_names=VECTOR_NAMES)
        try:
            retriever = Retriever(embedder, index)
            # The engine alone first (the build is measured here), then the same queries with
            # the intent stage on the same index.
            options = EvalOptions(folds=0, seed=args.seed, embed_sample=args.embed_sample, intent=False)
            report: dict[str, Any] = evaluate(scaled, chosen, retriever, options, _progress)
            rss_built, rss_now = _rss_mb(), _current_mb()
            with_intent = evaluate(
                scaled, chosen, retriever, EvalOptions(folds=0, seed=args.seed, build=False, intent=True)
            )
        finally:
            index.close()
    result = {
        "command": "python -m bench.retrieval_scale " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "tools": len(tools),
        "replication": factor,
        "queries": len(chosen.queries),
        "latency_ms": report["latency_ms"],
        "floor_ms": report.get("floor_ms"),
        "intent_on": {
            "latency_ms": with_intent["latency_ms"],
            "intent": with_intent.get("intent"),
            "recall@5": with_intent.get("recall@5"),
        },
        "index": report.get("index"),
        "rss_mb": {
            "start": rss_start,
            "after_model": rss_model,
            "peak_built": rss_built,
            "built_now": rss_now,
            "peak": _rss_mb(),
            "end_now": _current_mb(),
        },
        "wall_s": round(time.perf_counter() - started, 1),
        "embedder": report.get("embedder"),
        "settings": report.get("settings"),
        "quality_note": "replicated corpus: recall figures are not meaningful here",
        "recall@5": report.get("recall@5"),
    }
    path = save(args.name or f"retrieval_scale_{len(tools)}", result)
    print(
        f"{len(tools)} tools: latency p50 {result['latency_ms']['p50']} ms, p99 {result['latency_ms']['p99']} ms"
        f" (intent on: p50 {with_intent['latency_ms']['p50']} ms);"
        f" floor {result['floor_ms']}; build {result['index']}; peak RSS {result['rss_mb']['peak']} MB"
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
