"""BM25 top-k by MaxScore against scoring every posting, inside the whole search stage.

Builds a retriever over ToolBench + toolsdk (10,489 tools) replicated ``--factor`` times
under renamed servers. The copies reuse their original's description vector, so only the
10,489 originals are embedded: the index and BM25 are those of the full size, the vectors of
copies are exact duplicates (rankings of a replicated corpus mean nothing anyway). Then each
query is prepared once (intent stage off and on) and searched with both BM25 paths in turn,
the order alternating, so both see the same machine state; medians are reported.

    python -m bench.lexical_prune --factor 10 --queries 300

Saves bench/results/lexical_prune.json. Not a test: it never fails on a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import machine, save, shared_data
from retrieval import lexical
from retrieval.corpus import load_toolbench, replicate
from retrieval.embedder import load_embedder
from retrieval.evaluate import records_of
from retrieval.index import open_index
from retrieval.pipeline import EMBED_BATCH, VECTOR_NAMES, Embedded, Retriever, embedding_text

_PAGE = 2000  # tools stored per call


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--factor", type=int, default=10, help="copies of the 10,489-tool corpus")
    parser.add_argument(
        "--tools", type=int, default=0, help="use only the first N original tools (smoke runs)"
    )
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--name", default="lexical_prune")
    args = parser.parse_args()

    result = run(args.factor, tools=args.tools, queries=args.queries, seed=args.seed)
    result = {
        "command": "python -m bench.lexical_prune " + " ".join(sys.argv[1:]),
        "machine": machine(),
        **result,
    }
    path = save(args.name, result)
    for mode, row in result["search_p50_ms"].items():
        print(
            f"intent {mode}: full scan {row['full_scan']} ms, MaxScore {row['maxscore']} ms, ratio {row['ratio']}"
        )
    print(f"saved {path}")


def run(factor: int, *, tools: int = 0, queries: int = 300, seed: int = 13) -> dict[str, Any]:
    """Build the replicated retriever and compare the two BM25 paths (see the module doc)."""
    corpus, labelled = load_toolbench(shared_data(), distractors=True)
    originals = corpus.tools[:tools] if tools else corpus.tools
    scaled = dataclasses.replace(corpus, tools=tuple(replicate(originals, factor)))
    records = records_of(scaled)
    embedder = load_embedder()
    vectors = embedder.encode(
        [embedding_text(r.text) for r in records[: len(originals)]], batch_size=EMBED_BATCH
    )
    texts = [q.text for q in labelled.queries]
    random.Random(seed).shuffle(texts)
    texts = texts[:queries]
    with tempfile.TemporaryDirectory(prefix="toolgate-prune-") as workdir:
        index = open_index(None, Path(workdir) / "index", dim=embedder.dim, vector_names=VECTOR_NAMES)
        try:
            retriever = Retriever(embedder, index)
            for start in range(0, len(records), _PAGE):
                page = records[start : start + _PAGE]
                rows = np.stack([vectors[(start + k) % len(originals)] for k in range(len(page))])
                retriever.store(page, Embedded(rows, {}))
            index.optimize()
            print(f"{len(records)} tools, {len(texts)} queries", file=sys.stderr)
            compared = _compare(retriever, texts)
        finally:
            index.close()
    return {"tools": len(records), "queries": len(texts), **compared}


def _compare(retriever: Retriever, texts: list[str]) -> dict[str, Any]:
    """Search p50 per BM25 path, intent off and on, interleaved on the same prepared queries."""
    prepared = {(text, on): retriever.prepare(text, intent=on) for text in texts for on in (False, True)}
    for key in list(prepared)[:20]:  # warm caches (term contributions, server rows)
        retriever.search_prepared(prepared[key], 5)
    times: dict[tuple[bool, bool], list[float]] = {(p, on): [] for p in (False, True) for on in (False, True)}
    saved = lexical._PRUNE_MIN_POSTINGS
    try:
        for n, text in enumerate(texts * 2):
            for on in (False, True):
                for prune in (False, True) if n % 2 == 0 else (True, False):
                    lexical._PRUNE_MIN_POSTINGS = saved if prune else sys.maxsize
                    started = time.perf_counter()
                    retriever.search_prepared(prepared[(text, on)], 5)
                    times[(prune, on)].append(time.perf_counter() - started)
    finally:
        lexical._PRUNE_MIN_POSTINGS = saved
    out: dict[str, dict[str, float]] = {}
    for on in (False, True):
        full = statistics.median(times[(False, on)]) * 1000
        pruned = statistics.median(times[(True, on)]) * 1000
        out["on" if on else "off"] = {
            "full_scan": round(full, 3),
            "maxscore": round(pruned, 3),
            "ratio": round(pruned / full, 3) if full else 0.0,
        }
    return {"search_p50_ms": out}


if __name__ == "__main__":
    main()
