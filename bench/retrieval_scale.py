"""Retrieval at scale: build time against the embedder's own throughput, query latency and
peak memory, on ToolBench + toolsdk (10,489 tools) replicated under renamed servers.

    python -m bench.retrieval_scale --tools 10489 --name retrieval_scale_10k
    python -m bench.retrieval_scale --tools 100000 --name retrieval_scale_100k

Copies are textually identical apart from the server name, so the quality figures of a
replicated corpus mean little (labels point at copy 0 and its twins tie with it); this run is
for latency (warm, one query at a time, query embedding included, as `toolgate eval` reports
it, with the floor: query embedding plus one exact vector scan), build speed and peak RSS.

Build speed is compared with the embedder's own throughput in the same process: texts per
second of one encode call on a seeded sample of the tools' description texts, at the indexing
batch size, timed right before and right after each build (server description texts are not
in the floor, so it is strict). The machine is shared, so on corpora up to 20k tools the build
is repeated in fresh indexes (``--build-rounds``, default 3 there, 1 above) and the median
ratio is reported beside every round. Each round also reports word pieces per second of the
build (tool and server texts) and of the floor's sample: the like-for-like comparison, since
server texts and tool texts differ in length.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine, save, shared_data
from retrieval.corpus import QuerySet, load_toolbench, replicate
from retrieval.embedder import Embedder, load_embedder
from retrieval.evaluate import EvalOptions, embedder_throughput, evaluate, records_of
from retrieval.index import open_index
from retrieval.pipeline import VECTOR_NAMES, Retriever, ToolRecord, embedding_text, server_text


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


def _pieces(embedder: Embedder, records: list[ToolRecord], sample: int, seed: int) -> dict[str, int]:
    """Word pieces the build embeds (tool texts, server texts) and the floor's sample holds."""
    servers = {r.text.server: r.text.server_description for r in records if r.text.server_description}
    chosen = random.Random(seed).sample(records, sample) if 0 < sample < len(records) else records
    return {
        "tools": sum(embedder.token_counts([embedding_text(r.text) for r in records])),
        "servers": sum(embedder.token_counts([server_text(n, d) for n, d in servers.items()])),
        "floor_sample": sum(embedder.token_counts([embedding_text(r.text) for r in chosen])),
        "floor_texts": len(chosen),
        "server_texts": len(servers),
    }


def _round(index_report: dict[str, Any], pieces: dict[str, int]) -> dict[str, Any]:
    """One build against its floor, in tools and in word pieces."""
    build_s, floor = index_report["build_s"], index_report["embedder_texts_per_s"]
    floor_pieces = floor * pieces["floor_sample"] / pieces["floor_texts"]
    build_pieces = (pieces["tools"] + pieces["servers"]) / build_s
    return {
        "build_s": build_s,
        "tools_per_s": index_report["tools_per_s"],
        "embedder_texts_per_s": floor,
        "embedder_before_after": index_report["embedder_before_after"],
        "build_vs_embedder": index_report["build_vs_embedder"],
        "pieces_per_s": {"build": round(build_pieces), "embedder": round(floor_pieces)},
        "pieces_ratio": round(build_pieces / floor_pieces, 3),
        "load_avg_1m": index_report["load_avg_1m"],
    }


def _extra_build(embedder: Embedder, records: list[ToolRecord], sample: int, seed: int) -> dict[str, Any]:
    """Another build into a fresh index, timed as `evaluate` times its build (upsert and HNSW
    optimise), with the floor measured as there: right before and right after."""
    with tempfile.TemporaryDirectory(prefix="toolgate-scale-") as workdir:
        index = open_index(None, Path(workdir) / "index", dim=embedder.dim, vector_names=VECTOR_NAMES)
        try:
            before = embedder_throughput(embedder, records, sample, seed)
            started = time.perf_counter()
            Retriever(embedder, index).upsert(records)
            index.optimize()
            build_s = time.perf_counter() - started
            after = embedder_throughput(embedder, records, sample, seed)
        finally:
            index.close()
    floor = (before + after) / 2
    return {
        "build_s": round(build_s, 2),
        "tools_per_s": round(len(records) / build_s, 1),
        "embedder_texts_per_s": round(floor, 1),
        "embedder_before_after": [round(before, 1), round(after, 1)],
        "build_vs_embedder": round(len(records) / build_s / floor, 3),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tools", type=int, default=100_000, help="corpus size after replication")
    parser.add_argument("--queries", type=int, default=300, help="queries timed (a seeded sample)")
    parser.add_argument("--embed-sample", type=int, default=2000, help="texts timed for the embedder floor")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument(
        "--build-rounds", type=int, default=None, help="builds timed (default 3 up to 20k tools, else 1)"
    )
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
            load_built = round(os.getloadavg()[0], 2)
            with_intent = evaluate(
                scaled, chosen, retriever, EvalOptions(folds=0, seed=args.seed, build=False, intent=True)
            )
        finally:
            index.close()
    peak_main, wall_s = _rss_mb(), round(time.perf_counter() - started, 1)
    # After the main run, so that its peak RSS figures hold one index only.
    records = records_of(scaled)
    reports = [{**report["index"], "load_avg_1m": load_built}]
    for _ in range((args.build_rounds or (3 if len(tools) <= 20_000 else 1)) - 1):
        reports.append(_extra_build(embedder, records, args.embed_sample, args.seed))
    pieces = _pieces(embedder, records, args.embed_sample, args.seed)
    rounds = [_round(r, pieces) for r in reports]
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
        "build_rounds": rounds,
        "build_vs_embedder_median": statistics.median(r["build_vs_embedder"] for r in rounds),
        "pieces_ratio_median": statistics.median(r["pieces_ratio"] for r in rounds),
        "pieces": pieces,
        "rss_mb": {
            "start": rss_start,
            "after_model": rss_model,
            "peak_built": rss_built,
            "built_now": rss_now,
            "peak": peak_main,
            "end_now": _current_mb(),
        },
        "wall_s": wall_s,
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
    print(
        f"build vs embedder over {len(rounds)} rounds: median {result['build_vs_embedder_median']}"
        f" ({', '.join(str(r['build_vs_embedder']) for r in rounds)}); in word pieces: median"
        f" {result['pieces_ratio_median']}"
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
