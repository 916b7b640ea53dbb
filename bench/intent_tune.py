"""Tune the intent stage's weights on ToolBench's TUNE split only (the other 60% stay held out).

The queries are split once (seed 13, as bench/retrieval_toolbench.py does) into TUNE (40%) and
HELD-OUT. On TUNE, 5-fold CV as in the benchmark: usage vectors learn from the training folds,
and for each held-out query of a fold the intent stage's candidates and every subspace score
are computed once (:meth:`Retriever.intent_candidates`, :func:`subspace_scores`). Weights,
the merge's mix and its rank constant are then chosen by coordinate ascent over a grid on those
stored scores, ranking exactly as the pipeline does (:func:`fuse`, :func:`intent_ranking`);
the objective is the benchmark's (mean of Recall@5, nDCG@10, Completeness@10). Candidate-set
settings (``intent_pool``, ``intent_siblings``) change the stored scores, so each pair given is
captured and tuned on its own; the best pair wins, the smaller one when within 0.001. With the
chosen weights, the merge is also compared with a round-robin of the sub-intents' lists and
with xQuAD's greedy coverage. The chosen settings are reported with the scores they reach on
TUNE; report them on all queries with bench/retrieval_toolbench.py.

    .venv/bin/python -m bench.intent_tune [--pools 20] [--siblings 5] [--name NAME]

Results go to ``bench/results/intent_tune[_NAME].json``. Not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.common import machine, save, shared_data
from bench.retrieval_toolbench import SEED, TUNE_SHARE
from retrieval.corpus import Query, kfold, load_toolbench
from retrieval.embedder import load_onnx
from retrieval.evaluate import embed_queries, holdout_split, prepare_queries, records_of, score
from retrieval.index import open_index
from retrieval.intent_stage import Candidates, SubspaceWeights, fuse, intent_ranking, subspace_scores
from retrieval.metrics import completeness_at, ndcg_at, recall_at
from retrieval.pipeline import VECTOR_NAMES, RetrievalSettings, Retriever, intent_weights

DEPTH = 20
# Values tried per setting, one setting at a time, until no change helps (at most SWEEPS rounds).
GRID: dict[str, list[float]] = {
    "intent_mix": [0.3, 0.5, 0.7, 1.0, 1.5, 2.0],
    "intent_rank_k": [1.0, 2.0, 5.0, 10.0, 20.0, 60.0],
    "intent_dense": [0.0, 1.0, 2.0, 3.0, 4.0],
    "intent_lexical": [0.0, 0.5, 1.0, 2.0, 3.0],
    "intent_server": [0.0, 0.25, 0.5, 1.0],
    "intent_domain": [0.0, 0.5, 1.0, 2.0],
    "intent_action": [0.0, 0.25, 0.5, 1.0],
    "intent_params": [0.0, 0.25, 0.5, 1.0],
    "intent_usage": [0.0, 0.5, 1.0],
    "intent_named": [0.0, 1.0, 2.0],
    "intent_context": [0.0, 0.5, 1.0],
    "intent_family": [0.0, 0.5, 1.0],
}
SWEEPS = 3
TIE = 0.001  # objective differences below this are noise on 306 queries


@dataclass(frozen=True)
class Captured:
    """One held-out query of a fold with its intent-stage scores (None: no intent stage)."""

    query: Query
    plain: list[str]  # the ranking without the intent stage, for queries the stage skips
    cands: Candidates | None
    features: dict[str, NDArray[np.float64]]


def capture(retriever: Retriever, queries: list[Query], settings: RetrievalSettings) -> list[Captured]:
    retriever.settings = settings
    vectors = embed_queries(retriever, queries)
    prepared = prepare_queries(retriever, queries)
    out = []
    for train, test in kfold(queries, 5, SEED):
        retriever.reset_usage()
        for query in train:
            for tool_id in query.relevant:
                retriever.record_use(tool_id, vectors[query.id])
        for query in test:
            ready = prepared[query.id]
            plain = [h.tool_id for h in retriever.search_prepared(ready, DEPTH)]
            if ready.intent is None or ready.span_vectors is None:
                out.append(Captured(query, plain, None, {}))
                continue
            cands = retriever.intent_candidates(ready, DEPTH)
            features = subspace_scores(ready.intent.sub_intents, cands, retriever.lexical.idf)
            out.append(Captured(query, plain, cands, features))
    retriever.reset_usage()
    return out


Merge = Callable[[Candidates, NDArray[np.float64], RetrievalSettings], list[str]]


def rank_fusion(cands: Candidates, scores: NDArray[np.float64], settings: RetrievalSettings) -> list[str]:
    """The pipeline's merge."""
    found = intent_ranking(cands, scores, DEPTH, mix=settings.intent_mix, k=settings.intent_rank_k)
    return [tool_id for tool_id, _, _ in found]


def round_robin(cands: Candidates, scores: NDArray[np.float64], settings: RetrievalSettings) -> list[str]:
    """The whole request's best, then each sub-intent's best not yet taken in turn, then the
    rest of the whole ranking: the issue's baseline merge, for comparison."""
    whole = list(np.argsort(-cands.context, kind="stable"))
    out = whole[:1]
    lists = [list(np.argsort(-row, kind="stable")) for row in scores]
    while len(out) < DEPTH and any(lists):
        for ranked in lists:
            while ranked and ranked[0] in out:
                ranked.pop(0)
            if ranked:
                out.append(ranked.pop(0))
    out += [i for i in whole if i not in out]
    return [cands.ids[i] for i in out[:DEPTH]]


def xquad(cands: Candidates, scores: NDArray[np.float64], settings: RetrievalSettings) -> list[str]:
    """xQuAD's greedy coverage (mix 0.5, a pick serves its sub-intents in proportion to its
    score there), for comparison."""
    whole = cands.context - cands.context.min()
    whole = whole / whole.max() if whole.max() > 0 else whole
    unserved = np.ones(scores.shape[0])
    free = np.ones(len(cands.ids), dtype=bool)
    out: list[str] = []
    for _ in range(min(DEPTH, len(cands.ids))):
        gain = 0.5 * whole + 0.5 * ((unserved / len(unserved))[:, None] * scores).sum(axis=0)
        pick = int(np.argmax(np.where(free, gain, -np.inf)))
        out.append(cands.ids[pick])
        free[pick] = False
        unserved *= 1.0 - scores[:, pick]
    return out


def evaluate(
    rows: list[Captured], settings: RetrievalSettings, merge: Merge = rank_fusion
) -> dict[str, float]:
    weights: SubspaceWeights = intent_weights(settings)
    r5, n10, c10, multi = [], [], [], []
    for row in rows:
        if row.cands is None:
            ranked = row.plain
        else:
            scores = fuse({k: v for k, v in row.features.items() if k in weights.active()}, weights)
            ranked = merge(row.cands, scores, settings)
        relevant = row.query.relevant
        r5.append(recall_at(ranked, relevant, 5))
        n10.append(ndcg_at(ranked, relevant, 10))
        c10.append(completeness_at(ranked, relevant, 10))
        if len(relevant) > 1:
            multi.append(c10[-1])
    return {
        "recall@5": round(statistics.fmean(r5), 4),
        "ndcg@10": round(statistics.fmean(n10), 4),
        "completeness@10": round(statistics.fmean(c10), 4),
        "multi_tool_completeness@10": round(statistics.fmean(multi), 4),
    }


def objective(report: dict[str, float]) -> float:
    return (report["recall@5"] + report["ndcg@10"] + report["completeness@10"]) / 3


def ascend(rows: list[Captured], start: RetrievalSettings) -> tuple[RetrievalSettings, list[dict[str, Any]]]:
    best, best_report = start, evaluate(rows, start)
    trace: list[dict[str, Any]] = [{"change": "start", **best_report}]
    for _ in range(SWEEPS):
        improved = False
        for name, values in GRID.items():
            for value in values:
                if getattr(best, name) == value:
                    continue
                change: dict[str, Any] = {name: value}
                candidate = dataclasses.replace(best, **change)
                report = evaluate(rows, candidate)
                if objective(report) > objective(best_report) + 1e-4:
                    best, best_report, improved = candidate, report, True
                    trace.append({"change": f"{name}={value}", **report})
                    print(f"  {name}={value}: {report}", flush=True)
        if not improved:
            break
    return best, trace


def choose(captures: list[dict[str, Any]]) -> dict[str, Any]:
    """The capture with the best objective; within TIE of it, the smallest candidate set
    (fewer candidates: less work per request)."""
    top = max(objective(c["report"]) for c in captures)
    close = [c for c in captures if objective(c["report"]) >= top - TIE]
    return min(close, key=lambda c: (c["intent_pool"], c["intent_siblings"]))


MERGES: dict[str, Merge] = {"rank_fusion": rank_fusion, "round_robin": round_robin, "xquad": xquad}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pools", default="20", help="comma list of intent_pool values to capture")
    parser.add_argument("--siblings", default="5", help="comma list of intent_siblings values to capture")
    parser.add_argument("--name", default=None, help="results file suffix")
    args = parser.parse_args()
    started = time.perf_counter()
    corpus, queries = load_toolbench(shared_data())
    tune, _ = holdout_split(queries.queries, TUNE_SHARE, SEED)
    embedder = load_onnx(quantize=True)
    base = dataclasses.replace(RetrievalSettings(), intent=True)
    result: dict[str, Any] = {
        "command": shlex.join([".venv/bin/python", "-m", "bench.intent_tune", *sys.argv[1:]]),
        "machine": machine(),
        "protocol": f"TUNE split only ({len(tune)} of {len(queries.queries)} queries, seed {SEED}); "
        "5-fold CV within it, usage learnt from the training folds; coordinate ascent over GRID "
        "on the mean of recall@5, ndcg@10, completeness@10",
        "grid": GRID,
        "captures": [],
    }
    with tempfile.TemporaryDirectory(prefix="toolgate-intent-tune-") as tmp:
        index = open_index(None, Path(tmp) / "index", dim=embedder.dim, vector_names=VECTOR_NAMES)
        retriever = Retriever(embedder, index, base)
        retriever.upsert(records_of(corpus))
        index.optimize()
        vectors = embed_queries(retriever, tune)
        plain = score(tune, retriever, vectors, settings=dataclasses.replace(base, intent=False))
        result["intent_off"] = {k: plain[k] for k in ("recall@5", "ndcg@10", "completeness@10")}
        result["intent_off"]["multi_tool_completeness@10"] = plain["multi_tool"]["completeness@10"]
        print(f"intent off on TUNE: {result['intent_off']}")
        for pool in [int(v) for v in args.pools.split(",")]:
            for siblings in [int(v) for v in args.siblings.split(",")]:
                settings = dataclasses.replace(base, intent_pool=pool, intent_siblings=siblings)
                rows = capture(retriever, tune, settings)
                print(f"intent_pool={pool} intent_siblings={siblings}: {evaluate(rows, settings)}")
                chosen, trace = ascend(rows, settings)
                merges = {name: evaluate(rows, chosen, fn) for name, fn in MERGES.items()}
                print(f"  merges with these weights: {merges}", flush=True)
                result["captures"].append(
                    {
                        "intent_pool": pool,
                        "intent_siblings": siblings,
                        "chosen": {k: getattr(chosen, k) for k in ("intent_pool", "intent_siblings", *GRID)},
                        "report": trace[-1],
                        "merges": merges,
                        "trace": trace,
                    }
                )
        index.close()
    best = choose(result["captures"])
    result["chosen"] = best["chosen"]
    result["chosen_report"] = best["report"]
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"chosen: {best['chosen']}\n  {best['report']}")
    path = save("intent_tune" + (f"_{args.name}" if args.name else ""), result)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
