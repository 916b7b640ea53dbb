"""Embedder speed: torch vs ONNX fp32 vs ONNX int8 on the bundled all-MiniLM-L6-v2.

For each runtime, in its own child process (so start-up time and peak RSS are its own):
texts/s at batch 64 over ~1,000 real tool descriptions (ToolBench and toolsdk, cut to ~200
characters), and the latency of 300 single ToolBench queries, one at a time, as written
(~250 characters, median 57 word pieces) and cut to ~60 characters. The parent then
compares each ONNX variant's vectors with torch's (min/mean cosine). Exports are made first,
in a child of their own, into the embedder cache (reused when present).

The int8 child also times, interleaved query by query in the same process (so the shared
machine's load hits all alike): the same export on one intra-op thread, and, with
``--baseline DIR``, another int8 export directory (e.g. one of an older EXPORT_REVISION, whose
export.json is read as is), reporting both and the speed-up of the current export.

    .venv/bin/python -m bench.embedder_speed [--tools 1000] [--queries 300] [--cache-dir DIR]
        [--baseline EXPORT_DIR]

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

from bench.common import ROOT, machine, percentile, save, shared_data, summary_ms

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


def latency_ms(values_s: list[float]) -> dict[str, float]:
    """summary_ms plus p90, which the latency target is read against besides p50."""
    return {**summary_ms(values_s), "p90": round(percentile([v * 1000 for v in values_s], 90), 3)}


def load_export_as_is(export_dir: Path, threads: int | None = None) -> Any:
    """An OnnxEmbedder over ``export_dir`` whatever its revision (for the baseline only)."""
    from retrieval.embedder import OnnxEmbedder

    info = json.loads((export_dir / "export.json").read_text())
    return OnnxEmbedder(export_dir, info, threads=threads)


def interleaved(
    embedders: dict[str, Any], texts: list[str], asked: list[str], batch_passes: int = 3
) -> dict[str, Any]:
    """Single-query latency and batch texts/s of several embedders, taking turns query by query
    and pass by pass (rotating who goes first), so load changes hit all of them alike."""
    names = list(embedders)
    for embedder in embedders.values():  # warm-up
        embedder.encode(texts[:128], batch_size=64)
        for query in asked[:20]:
            embedder.encode([query])
    latencies: dict[str, list[float]] = {name: [] for name in names}
    for i, query in enumerate(asked):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            begin = time.perf_counter()
            embedders[name].encode([query])
            latencies[name].append(time.perf_counter() - begin)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for i in range(batch_passes):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            begin = time.perf_counter()
            embedders[name].encode(texts, batch_size=64)
            rates[name].append(round(len(texts) / (time.perf_counter() - begin), 1))
    return {
        name: {
            "model_id": embedders[name].model_id,
            "single_query_ms": latency_ms(latencies[name]),
            "texts_per_s_median": sorted(rates[name])[len(rates[name]) // 2],
            "texts_per_s_passes": rates[name],
        }
        for name in names
    }


def child(
    runtime: str,
    cache_dir: Path,
    tools: int,
    n_queries: int,
    vectors_out: Path,
    baseline: Path | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    import numpy as np

    from retrieval.embedder import Embedder, OnnxEmbedder, TorchEmbedder, load_onnx

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
    # Before the interleaved comparison, whose extra sessions would count in the peak.
    peak_rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    extra: dict[str, Any] = {}
    if runtime == "onnx-int8":
        assert isinstance(embedder, OnnxEmbedder)
        others: dict[str, Any] = {"current": embedder}
        others["current-1-thread"] = OnnxEmbedder(embedder.export_dir, embedder.info, threads=1)
        if baseline is not None:
            others["baseline"] = load_export_as_is(baseline)
            others["baseline-1-thread"] = load_export_as_is(baseline, threads=1)
        found = interleaved(others, texts, asked)
        if baseline is not None:
            found["baseline"]["export_dir"] = str(baseline)
            for suffix in ("", "-1-thread"):
                now, before = found[f"current{suffix}"], found[f"baseline{suffix}"]
                found[f"speedup{suffix}"] = {
                    "p50": round(before["single_query_ms"]["p50"] / now["single_query_ms"]["p50"], 3),
                    "p90": round(before["single_query_ms"]["p90"] / now["single_query_ms"]["p90"], 3),
                    "texts_per_s": round(now["texts_per_s_median"] / before["texts_per_s_median"], 3),
                }
            old = others["baseline"]
            np.savez(
                baseline_vectors(vectors_out),
                tools=old.encode(texts, batch_size=64),
                queries=np.vstack([old.encode([q])[0] for q in asked]),
            )
        extra["interleaved"] = found
    return {
        **extra,
        "model_id": embedder.model_id,
        "load_s": round(load_s, 3),
        "texts_per_s": round(max(passes), 1),
        "texts_per_s_passes": [round(p, 1) for p in passes],
        "single_query_ms": latency_ms(latencies),
        "short_query_ms": latency_ms(short_latencies),
        "peak_rss_mb": peak_rss_mb,
        "torch_imported": "torch" in sys.modules,
    }


def baseline_vectors(vectors_out: Path) -> Path:
    return vectors_out.with_name(f"baseline-{vectors_out.name}")


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


def print_interleaved(found: dict[str, Any]) -> None:
    print("\nonnx-int8, interleaved in one process:")
    for name, row in found.items():
        if name.startswith("speedup"):
            print(
                f"  {name:18} p50 x{row['p50']:.2f}  p90 x{row['p90']:.2f}  texts/s x{row['texts_per_s']:.2f}"
            )
        else:
            latency = row["single_query_ms"]
            print(
                f"  {name:18} p50 {latency['p50']:6.2f} ms  p90 {latency['p90']:6.2f} ms  "
                f"{row['texts_per_s_median']:6.1f} texts/s  {row['model_id']}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tools", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--cache-dir", type=Path, default=None, help="export cache (default: the embedder's)")
    parser.add_argument(
        "--baseline", type=Path, default=None, help="an int8 export directory to time against, interleaved"
    )
    parser.add_argument("--child", choices=[*RUNTIMES, "export"], help=argparse.SUPPRESS)
    parser.add_argument("--vectors", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    from retrieval.embedder import default_cache_dir

    cache_dir: Path = args.cache_dir or default_cache_dir()
    if args.child == "export":
        print(json.dumps(export_child(cache_dir)))
    elif args.child:
        found = child(args.child, cache_dir, args.tools, args.queries, args.vectors, args.baseline)
        print(json.dumps(found))
    else:
        parent(cache_dir, args.tools, args.queries, args.baseline)


def parent(cache_dir: Path, tools: int, n_queries: int, baseline: Path | None = None) -> None:
    common = ["--cache-dir", str(cache_dir), "--tools", str(tools), "--queries", str(n_queries)]
    if baseline is not None:
        common += ["--baseline", str(baseline.resolve())]
    load_before = os.getloadavg()
    exports = run_child(["--child", "export", *common])
    texts = tool_texts(tools)
    with tempfile.TemporaryDirectory() as scratch:
        vectors = {name: Path(scratch) / f"{name}.npz" for name in RUNTIMES}
        runs = {
            name: run_child(["--child", name, "--vectors", str(vectors[name]), *common]) for name in RUNTIMES
        }
        if baseline is not None:
            vectors["baseline"] = baseline_vectors(vectors["onnx-int8"])
        cosines = compare(vectors)
    result = {
        "machine": machine(),
        "setup": {
            "tool_texts": len(texts),
            "tool_text_mean_chars": round(sum(map(len, texts)) / len(texts), 1),
            "batch_size": 64,
            "single_queries": n_queries,
            "cache_dir": str(cache_dir),
            "note": (
                "texts/s: best of two passes; load_s: imports + model load in a fresh process; "
                "runtimes.onnx-int8.interleaved: current vs 1 thread (vs --baseline) taking "
                "turns query by query, texts/s the median of 3 alternating passes"
            ),
            "baseline": None if baseline is None else str(baseline),
            # The machine may be shared: other processes' load makes every figure slower.
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "exports": exports,
        "runtimes": runs,
        "cosine_vs_torch": cosines,
    }
    print_table(runs, cosines)
    print_interleaved(runs["onnx-int8"].get("interleaved", {}))
    print(f"saved {save('embedder_speed', result)}")


if __name__ == "__main__":
    main()
