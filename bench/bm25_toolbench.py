"""BM25 on ToolBench: Recall, nDCG and Completeness at K, latency, token cost and build time.

Indexes the 2,479 ToolBench tools (and, with ``--distractors``, also the 8,010 toolsdk tools),
runs the 765 labelled queries against the whole corpus and prints the metrics defined in
/work/shared/data/README.md (computed by :mod:`retrieval.metrics`), overall and per group.
Token cost is that of the first ``--limit`` results against listing every tool
(:mod:`retrieval.tokens`). Nothing is learned from queries, so no cross-validation split is
needed. Results go to ``bench/results/bm25_toolbench.json``. Not a test: it never fails on a
low score.

    .venv/bin/python -m bench.bm25_toolbench [--distractors] [--k1 1.2] [--b 0.75] [--limit 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.common import shared_data
from retrieval.corpus import Corpus, QuerySet, load_toolbench, missing_labels
from retrieval.lexical import DEFAULT_B, DEFAULT_K1, LexicalIndex
from retrieval.metrics import KS, MetricSet
from retrieval.tokens import tokenizer_name, tool_tokens

RESULTS = Path(__file__).resolve().parent / "results" / "bm25_toolbench.json"
# find_tools hands a client this many tools unless asked otherwise (the gateway's default).
DEFAULT_LIMIT = 5


def evaluate(corpus: Corpus, queries: QuerySet, k1: float, b: float, limit: int) -> dict[str, Any]:
    """Index ``corpus``, run every query once, and return the metrics report plus build time."""
    missing = missing_labels(queries.queries, corpus.ids())
    assert not missing, f"labels missing from corpus: {missing}"
    start = time.perf_counter()
    index = LexicalIndex.build(corpus.tools, k1=k1, b=b)
    build_s = time.perf_counter() - start

    cost = {tool.tool_id: tool_tokens(tool) for tool in corpus.tools}
    metrics = MetricSet(tools=len(index), listing_tokens=sum(cost.values()), limit=limit)
    for query in queries.queries:
        start = time.perf_counter()
        hits = index.search(query.text, k=max(KS))
        latency_s = time.perf_counter() - start
        ranked = [tool_id for tool_id, _ in hits]
        returned = sum(cost[tool_id] for tool_id in ranked[:limit])
        metrics.add(query.id, query.group, ranked, query.relevant, latency_s, returned)
    return {**metrics.report(), "build_s": round(build_s, 3), "tokenizer": tokenizer_name()}


def report(name: str, result: dict[str, Any]) -> None:
    """Print one corpus's result as a table."""
    print(f"\n== {name}: {result['tools']} tools, {result['queries']} queries ==")
    print(
        f"Recall@5 {result['recall@5']:.3f}  nDCG@10 {result['ndcg@10']:.3f}  "
        f"Completeness@10 {result['completeness@10']:.3f}"
    )
    print(
        f"{'':16}" + "".join(f"{'R@' + str(k):>8}" for k in KS) + "".join(f"{'N@' + str(k):>8}" for k in KS)
    )
    rows = {"overall": result, **result["groups"]}
    for group, m in rows.items():
        cells = [m[f"recall@{k}"] for k in KS] + [m[f"ndcg@{k}"] for k in KS]
        print(f"{group:16}" + "".join(f"{v:8.3f}" for v in cells))
    print("Completeness@K " + "  ".join(f"@{k} {result[f'completeness@{k}']:.3f}" for k in KS))
    lat = result["latency_ms"]
    print(
        f"build {result['build_s']:.2f}s  latency mean {lat['mean']:.2f} ms, p50 {lat['p50']:.2f} ms, "
        f"p99 {lat['p99']:.2f} ms"
    )
    tokens = result["tokens"]
    print(
        f"tokens ({result['tokenizer']}): top-{tokens['limit']} {tokens['returned_mean']:.0f} per query "
        f"vs {tokens['listing']} to list every tool ({tokens['returned_share']:.3%})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distractors", action="store_true", help="also run with the toolsdk tools added")
    parser.add_argument("--k1", type=float, default=DEFAULT_K1)
    parser.add_argument("--b", type=float, default=DEFAULT_B)
    parser.add_argument(
        "--limit", type=int, default=DEFAULT_LIMIT, help="results handed to the client, for token cost"
    )
    args = parser.parse_args()

    data = shared_data()
    results: dict[str, Any] = {"method": "bm25", "k1": args.k1, "b": args.b, "corpora": {}}
    settings = [("toolbench", False)] + ([("toolbench+toolsdk", True)] if args.distractors else [])
    for name, with_distractors in settings:
        corpus, queries = load_toolbench(data, distractors=with_distractors)
        result = evaluate(corpus, queries, args.k1, args.b, args.limit)
        results["corpora"][name] = result
        report(name, result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nsaved {RESULTS}")


if __name__ == "__main__":
    main()
