"""Embedder speed: torch vs ONNX fp32 vs ONNX int8 on the bundled all-MiniLM-L6-v2.

For each runtime, in its own child process (so start-up time and peak RSS are its own):
texts/s at batch 64 over ~1,000 real tool descriptions (ToolBench and toolsdk, cut to ~200
characters), and the latency of ~200 single ToolBench queries, one at a time, as written
(~250 characters) and cut to ~60 characters. The parent then
compares each ONNX variant's vectors with torch's (min/mean cosine). Exports are made first,
in a child of their own, into the embedder cache (reused when present).

    .venv/bin/python -m bench.embedder_speed [--tools 1000] [--queries 200] [--cache-dir DIR]

Saves bench/results/embedder_speed.json. Not a test: it never fails on a slow number.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, machine, save, shared_data, summary_ms

RUNTIMES = ("torch", "onnx-fp32", "onnx-int8")
TEXT_CHARS = 200
SEED = 11


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def cut(text: str, limit: int) -> str:
    """``text`` up to ``limit`` characters, ending on a word boundary."""
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0]


def tool_texts(count: int) -> list[str]:
    """``count`` tool texts ("name: description") of 150+ characters, cut to ~200."""
    data = shared_data()
    records = read_jsonl(data / "toolbench" / "tools.jsonl") + read_jsonl(data / "toolsdk" / "tools.jsonl")
    texts = [f"{r['name']}: {r['description']}" for r in records]
    long_enough = [cut(t, TEXT_CHARS) for t in texts if len(t) >= 150]
    random.Random(SEED).shuffle(long_enough)
    return long_enough[:count]


def queries(count: int) -> list[str]:
    records = read_jsonl(shared_data() / "toolbench" / "queries.jsonl")
    return [r["query"] for r in random.Random(SEED).sample(records, count)]


# --- child: one runtime ------------------------------------------------------------------


def child(runtime: str, cache_dir: Path, tools: int, n_queries: int, vectors_out: Path) -> dict[str, Any]:
    started = time.perf_counter()
    import numpy as np

    from retrieval.embedder import Embedder, TorchEmbedder, load_onnx

    embedder: Embedder
    if runtime == "torch":
        embedder = TorchEmbedder()
    else:
        embedder = load_onnx(quantize=runtime == "onnx-int8", cache_dir=cache_dir)
    load_s = time.perf_counter() - started
    texts, asked = tool_texts(tools), queries(n_queries)
    embedder.encode(texts[:128], batch_size=64)  # warm-up: first runs allocate
    passes = []
    for _ in range(2):  # the machine is shared: keep the better of two passes
        begin = time.perf_counter()
        batch_vectors = embedder.encode(texts, batch_size=64)
        passes.append(len(texts) / (time.perf_counter() - begin))
    latencies, single_vectors = [], []
    for query in asked:
        begin = time.perf_counter()
        single_vectors.append(embedder.encode([query])[0])
        latencies.append(time.perf_counter() - begin)
    short_latencies = []
    for query in asked:  # a terse query, as agents often send: ~60 characters
        text = cut(query, 60)
        begin = time.perf_counter()
        embedder.encode([text])
        short_latencies.append(time.perf_counter() - begin)
    np.savez(vectors_out, tools=batch_vectors, queries=np.vstack(single_vectors))
    return {
        "model_id": embedder.model_id,
        "load_s": round(load_s, 3),
        "texts_per_s": round(max(passes), 1),
        "texts_per_s_passes": [round(p, 1) for p in passes],
        "single_query_ms": summary_ms(latencies),
        "short_query_ms": summary_ms(short_latencies),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_imported": "torch" in sys.modules,
    }


def export_child(cache_dir: Path) -> dict[str, Any]:
    from retrieval.embedder import export_path, is_complete_export, load_onnx, resolve_model_path

    found: dict[str, Any] = {}
    for quantize in (False, True):
        target = export_path(resolve_model_path("default"), cache_dir, quantize)
        existed = is_complete_export(target)
        begin = time.perf_counter()
        info = load_onnx(quantize=quantize, cache_dir=cache_dir).info
        found["onnx-int8" if quantize else "onnx-fp32"] = {
            "export_dir": str(target),
            "reused": existed,
            "export_s": None if existed else round(time.perf_counter() - begin, 1),
            "model_mb": round((target / "model.onnx").stat().st_size / 1e6, 1),
            "check_min_cosine": info["min_cosine"],
            "check_mean_cosine": info["mean_cosine"],
        }
    return found


# --- parent ------------------------------------------------------------------------------


def run_child(args: list[str]) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.embedder_speed", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args[:2]} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cosine_stats(reference: Any, candidate: Any) -> dict[str, float]:
    cosines = (reference * candidate).sum(axis=1)
    return {"min": round(float(cosines.min()), 4), "mean": round(float(cosines.mean()), 4)}


def compare(vectors: dict[str, Path]) -> dict[str, dict[str, dict[str, float]]]:
    import numpy as np

    loaded = {name: np.load(path) for name, path in vectors.items()}
    torch = loaded["torch"]
    return {
        name: {part: cosine_stats(torch[part], data[part]) for part in ("tools", "queries")}
        for name, data in loaded.items()
        if name != "torch"
    }


def print_table(runs: dict[str, dict[str, Any]], cosines: dict[str, Any]) -> None:
    print(
        f"{'runtime':10} {'texts/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'short p50':>9} {'load s':>7} {'RSS MB':>7}"
        "  cosine vs torch (min/mean)"
    )
    for name, run in runs.items():
        latency = run["single_query_ms"]
        versus = cosines.get(name)
        shown = (
            "reference"
            if versus is None
            else (
                f"tools {versus['tools']['min']:.4f}/{versus['tools']['mean']:.4f}  "
                f"queries {versus['queries']['min']:.4f}/{versus['queries']['mean']:.4f}"
            )
        )
        print(
            f"{name:10} {run['texts_per_s']:8.1f} {latency['p50']:7.2f} {latency['p99']:7.2f} "
            f"{run['short_query_ms']['p50']:9.2f} "
            f"{run['load_s']:7.2f} {run['peak_rss_mb']:7.0f}  {shown}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tools", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--cache-dir", type=Path, default=None, help="export cache (default: the embedder's)")
    parser.add_argument("--child", choices=[*RUNTIMES, "export"], help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from retrieval.embedder import default_cache_dir

    cache_dir: Path = args.cache_dir or default_cache_dir()
    if args.child == "export":
        print(json.dumps(export_child(cache_dir)))
    elif args.child:
        print(json.dumps(child(args.child, cache_dir, args.tools, args.queries, args.vectors)))
    else:
        parent(cache_dir, args.tools, args.queries)


def parent(cache_dir: Path, tools: int, n_queries: int) -> None:
    common = ["--cache-dir", str(cache_dir), "--tools", str(tools), "--queries", str(n_queries)]
    load_before = os.getloadavg()
    exports = run_child(["--child", "export", *common])
    texts = tool_texts(tools)
    with tempfile.TemporaryDirectory() as scratch:
        vectors = {name: Path(scratch) / f"{name}.npz" for name in RUNTIMES}
        runs = {
            name: run_child(["--child", name, "--vectors", str(vectors[name]), *common]) for name in RUNTIMES
        }
        cosines = compare(vectors)
    result = {
        "machine": machine(),
        "setup": {
            "tool_texts": len(texts),
            "tool_text_mean_chars": round(sum(map(len, texts)) / len(texts), 1),
            "batch_size": 64,
            "single_queries": n_queries,
            "cache_dir": str(cache_dir),
            "note": "texts/s: best of two passes; load_s: imports + model load in a fresh process",
            # The machine may be shared: other processes' load makes every figure slower.
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "exports": exports,
        "runtimes": runs,
        "cosine_vs_torch": cosines,
    }
    print_table(runs, cosines)
    print(f"saved {save('embedder_speed', result)}")


if __name__ == "__main__":
    main()
