"""BM25 on ToolBench: Recall, nDCG and Completeness at K, latency and build time.

Indexes the 2,479 ToolBench tools (and, with ``--distractors``, also the 8,010 toolsdk tools),
runs the 765 labelled queries against the whole corpus and prints the metrics defined in
/work/shared/data/README.md, overall and per group. Results go to
``bench/results/bm25_toolbench.json``. Not a test: it never fails on a low score.

    .venv/bin/python -m bench.bm25_toolbench [--distractors] [--k1 1.2] [--b 0.75]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.common import shared_data
from retrieval.documents import ToolText, tool_text_from_record
from retrieval.lexical import DEFAULT_B, DEFAULT_K1, LexicalIndex

DATA = shared_data()
RESULTS = Path(__file__).resolve().parent / "results" / "bm25_toolbench.json"
KS = (1, 3, 5, 10, 20)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def load_tools(with_distractors: bool) -> list[ToolText]:
    tools = [tool_text_from_record(r) for r in read_jsonl(DATA / "toolbench" / "tools.jsonl")]
    if with_distractors:
        tools += [tool_text_from_record(r) for r in read_jsonl(DATA / "toolsdk" / "tools.jsonl")]
    return tools


def query_metrics(ranked: Sequence[str], relevant: set[str]) -> dict[str, float]:
    """Recall@K, nDCG@K and Completeness@K of one ranked list, as the data README defines them."""
    out: dict[str, float] = {}
    for k in KS:
        top = ranked[:k]
        hits = relevant.intersection(top)
        dcg = sum(1.0 / math.log2(i + 2) for i, tool_id in enumerate(top) if tool_id in relevant)
        ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
        out[f"recall@{k}"] = len(hits) / len(relevant)
        out[f"ndcg@{k}"] = dcg / ideal
        out[f"completeness@{k}"] = 1.0 if len(hits) == len(relevant) else 0.0
    return out


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.fmean(r[key] for r in rows), 4) for key in rows[0]}


def evaluate(tools: list[ToolText], k1: float, b: float) -> dict[str, Any]:
    start = time.perf_counter()
    index = LexicalIndex.build(tools, k1=k1, b=b)
    build_s = time.perf_counter() - start
    known = {t.tool_id for t in tools}

    per_group: dict[str, list[dict[str, float]]] = defaultdict(list)
    everything: list[dict[str, float]] = []
    latencies_ms: list[float] = []
    for query in read_jsonl(DATA / "toolbench" / "queries.jsonl"):
        relevant = set(query["relevant"])
        assert relevant <= known, f"labels missing from corpus: {relevant - known}"
        start = time.perf_counter()
        hits = index.search(query["query"], k=max(KS))
        latencies_ms.append((time.perf_counter() - start) * 1000)
        row = query_metrics([tool_id for tool_id, _ in hits], relevant)
        per_group[query["group"]].append(row)
        everything.append(row)

    latencies_ms.sort()
    return {
        "tools": len(index),
        "queries": len(everything),
        "overall": mean_metrics(everything),
        "per_group": {group: mean_metrics(rows) for group, rows in sorted(per_group.items())},
        "build_s": round(build_s, 3),
        "latency_ms": {
            "mean": round(statistics.fmean(latencies_ms), 3),
            "p50": round(latencies_ms[len(latencies_ms) // 2], 3),
            "p99": round(latencies_ms[min(len(latencies_ms) - 1, int(len(latencies_ms) * 0.99))], 3),
        },
    }


def report(name: str, result: dict[str, Any]) -> None:
    overall = result["overall"]
    print(f"\n== {name}: {result['tools']} tools, {result['queries']} queries ==")
    print(
        f"Recall@5 {overall['recall@5']:.3f}  nDCG@10 {overall['ndcg@10']:.3f}  "
        f"Completeness@10 {overall['completeness@10']:.3f}"
    )
    print(
        f"{'':16}" + "".join(f"{'R@' + str(k):>8}" for k in KS) + "".join(f"{'N@' + str(k):>8}" for k in KS)
    )
    rows = {"overall": overall, **result["per_group"]}
    for group, m in rows.items():
        cells = [m[f"recall@{k}"] for k in KS] + [m[f"ndcg@{k}"] for k in KS]
        print(f"{group:16}" + "".join(f"{v:8.3f}" for v in cells))
    print("Completeness@K " + "  ".join(f"@{k} {overall[f'completeness@{k}']:.3f}" for k in KS))
    lat = result["latency_ms"]
    print(
        f"build {result['build_s']:.2f}s  latency mean {lat['mean']:.2f} ms, p50 {lat['p50']:.2f} ms, "
        f"p99 {lat['p99']:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distractors", action="store_true", help="also run with the toolsdk tools added")
    parser.add_argument("--k1", type=float, default=DEFAULT_K1)
    parser.add_argument("--b", type=float, default=DEFAULT_B)
    args = parser.parse_args()

    results: dict[str, Any] = {"method": "bm25", "k1": args.k1, "b": args.b, "corpora": {}}
    settings = [("toolbench", False)] + ([("toolbench+toolsdk", True)] if args.distractors else [])
    for name, with_distractors in settings:
        result = evaluate(load_tools(with_distractors), args.k1, args.b)
        results["corpora"][name] = result
        report(name, result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nsaved {RESULTS}")


if __name__ == "__main__":
    main()
