"""Usage learning on its own, through the real gateway: a learning curve on ToolBench.

    python -m bench.learning_curve [--folds-run K] [--smoke] [--concurrency 2] [--code head|worktree]

The 765 ToolBench queries are split 5-fold by query (:func:`retrieval.corpus.kfold`, seed 13).
One ``bench.multihost`` process serves the ToolBench tools as 811 virtual MCP servers (one per
``server`` group, plus an ``echo`` tool each). Per fold, a fresh ``toolgate serve`` on a fresh
data directory (so no usage leaks between folds) imports every virtual server through
``POST /admin/import``; then, over ``/mcp`` with the MCP SDK client:

- checkpoint 0%: every TEST query of the fold through ``find_tools`` (limit 20, a conversation
  id of its own and no ``call_tool``, so nothing learns from it), scored with
  :class:`retrieval.metrics.MetricSet`;
- the TRAINING queries replayed in order as live traffic: ``find_tools`` (limit 10, one new
  conversation per query), then ``call_tool`` with minimal schema-valid arguments for each of
  the query's relevant tools that the find returned, same conversation. The gateway's live
  usage learning (``gateway/learning.py``) turns each successful call into a use of the tool;
- checkpoints after 25%, 50% and 100% of the training queries: the test queries again.

Test metrics are pooled over folds per checkpoint (each query is tested once, by its fold).
Relevant tools a find did not return cannot be learned from live traffic; they are counted.

The gateway runs from a ``git archive`` copy of HEAD by default (``--code worktree``: the
checkout as it is), so edits made to the checkout during a run never reach later folds.

Saves ``bench/results/learning_curve.json`` (``--smoke``: 40 servers, their 41 queries, one
fold; nothing is saved unless ``--json`` is given).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import httpx
from mcp import Client

from bench.common import machine, save, shared_data, summary_ms
from bench.replay_support import (
    CALL_ATTEMPTS,
    GATEWAY_HASH_SEED,
    GatewayCode,
    Processes,
    ServerEntry,
    ToolMap,
    call,
    error_lines,
    gateway_code,
    import_servers,
    map_tools,
    minimal_arguments,
    multihost,
    read_tool_rows,
    server_entries,
    start_gateway,
)
from bench.replay_support import (
    cards as _cards,
)
from retrieval.corpus import Query, kfold, load_queries
from retrieval.metrics import MetricSet

SEED = 13
FOLDS = 5
CHECKPOINTS = (0, 25, 50, 100)
TEST_LIMIT = 20
TRAIN_LIMIT = 10
LEARN_MAX_USES = 10_000
SMOKE_SERVERS = 40
REPORTED = ("recall@1", "recall@3", "recall@5", "recall@10", "ndcg@10", "completeness@10")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every started process is stopped."""


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise _Terminated


# -- data and names ----------------------------------------------------------------------------


def smoke_subset(
    tools_path: Path, queries: Sequence[Query], servers: int, out: Path
) -> tuple[Path, list[Query]]:
    """The first ``servers`` server groups of the data (written to ``out``) and the queries whose
    relevant tools all lie in them."""
    rows = read_tool_rows(tools_path)
    chosen = list(dict.fromkeys(str(r["server"]) for r in rows))[:servers]
    keep = set(chosen)
    kept_rows = [r for r in rows if str(r["server"]) in keep]
    out.write_text("".join(json.dumps(r) + "\n" for r in kept_rows), encoding="utf-8")
    ids = {f"{r['server']}/{r['name']}" for r in kept_rows}
    return out, [q for q in queries if set(q.relevant) <= ids]


# -- one fold ----------------------------------------------------------------------------------


@dataclass
class ReplayStats:
    train_queries: int = 0
    finds: int = 0
    find_errors: int = 0
    relevant_labels: int = 0
    relevant_unmapped: int = 0
    relevant_returned: int = 0
    relevant_not_returned: int = 0
    queries_all_returned: int = 0
    queries_none_returned: int = 0
    calls: int = 0
    calls_ok: int = 0
    calls_failed: int = 0
    call_errors: list[str] = field(default_factory=list)
    uses_learned: int = 0  # sum of usage counts the gateway reports at the end of the fold
    tools_with_usage: int = 0

    def add(self, other: ReplayStats) -> None:
        for key, value in vars(other).items():
            if isinstance(value, int):
                setattr(self, key, getattr(self, key) + value)
        self.call_errors.extend(e for e in other.call_errors if e not in self.call_errors)
        del self.call_errors[10:]

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class FoldResult:
    fold: int
    setup_s: float
    stats: ReplayStats
    mapping_unmapped: list[str]
    catalog_tools: int
    checkpoints: dict[int, list[tuple[Query, list[str], float, bool]]]
    train_find_s: list[float]
    call_s: list[float]
    protocol_errors: list[str]
    gateway_log: Path


async def run_tests(
    client: Client,
    tests: Sequence[Query],
    mapping: ToolMap,
    tag: str,
    concurrency: int,
    errors: list[str],
) -> list[tuple[Query, list[str], float, bool]]:
    """Every test query through find_tools; returns (query, ranked ToolBench ids, latency, ok)."""
    out: list[tuple[Query, list[str], float, bool] | None] = [None] * len(tests)
    limiter = anyio.Semaphore(concurrency)

    async def one(position: int, query: Query) -> None:
        async with limiter:
            result, latency = await call(
                client,
                "find_tools",
                {"query": query.text, "limit": TEST_LIMIT, "conversation": f"test-{tag}-{position}"},
                errors,
            )
        cards = _cards(result)
        ranked = [mapping.source_of.get(str(c["name"]), str(c["name"])) for c in cards or []]
        out[position] = (query, ranked, latency, cards is not None)

    async with anyio.create_task_group() as group:
        for position, query in enumerate(tests):
            group.start_soon(one, position, query)
    return [row for row in out if row is not None]


def checkpoint_sizes(train: int) -> dict[int, int]:
    return {pct: round(train * pct / 100) for pct in CHECKPOINTS}


async def run_fold(
    fold: int,
    train: Sequence[Query],
    tests: Sequence[Query],
    entries: Sequence[ServerEntry],
    host_port: int,
    procs: Processes,
    workdir: Path,
    concurrency: int,
    code: GatewayCode,
) -> FoldResult:
    started = time.perf_counter()
    data_dir = workdir / f"gateway-fold{fold}"
    data_dir.mkdir()
    process, url = start_gateway(procs, data_dir, code, {"TOOLGATE_LEARN_MAX_USES": str(LEARN_MAX_USES)})
    try:
        async with httpx.AsyncClient(base_url=url, timeout=1800) as http:
            await import_servers(http, host_port, entries)
            mapping = await map_tools(http, entries)
            setup_s = time.perf_counter() - started
            print(
                f"fold {fold}: gateway ready with {mapping.catalog_tools} tools in {setup_s:.1f} s "
                f"({len(mapping.unmapped)} labelled tools unmapped)",
                flush=True,
            )
            stats = ReplayStats(train_queries=len(train))
            checkpoints: dict[int, list[tuple[Query, list[str], float, bool]]] = {}
            train_find_s: list[float] = []
            call_s: list[float] = []
            at = checkpoint_sizes(len(train))
            called: set[str] = set()
            errors: list[str] = []
            async with Client(f"{url}/mcp", read_timeout_seconds=300) as client:
                for position in range(len(train) + 1):
                    for pct, size in at.items():
                        if size == position and pct not in checkpoints:
                            t0 = time.perf_counter()
                            checkpoints[pct] = await run_tests(
                                client, tests, mapping, f"{fold}-{pct}", concurrency, errors
                            )
                            recall5 = _quick_recall(checkpoints[pct], 5)
                            print(
                                f"fold {fold}: {pct:3d}% ({position} training queries replayed): "
                                f"R@5 {recall5:.4f} on {len(tests)} test queries "
                                f"({time.perf_counter() - t0:.1f} s)",
                                flush=True,
                            )
                    if position == len(train):
                        break
                    await replay(
                        client, train[position], fold, position, mapping, stats, train_find_s, call_s, errors
                    )
                    called.update(
                        mapping.exposed[t] for t in train[position].relevant if t in mapping.exposed
                    )
            uses = 0
            for name in sorted(called):
                usage = (await http.get(f"/admin/tools/{mapping.tool_ids[name]}/usage")).json()
                uses += int(usage["usage_count"])
            stats.uses_learned = uses
            stats.tools_with_usage = int((await http.get("/admin/index")).json()["tools_with_usage"])
    finally:
        procs.stop(process)
    return FoldResult(
        fold=fold,
        setup_s=setup_s,
        stats=stats,
        mapping_unmapped=mapping.unmapped,
        catalog_tools=mapping.catalog_tools,
        checkpoints=checkpoints,
        train_find_s=train_find_s,
        call_s=call_s,
        protocol_errors=errors,
        gateway_log=workdir / f"gateway-fold{fold}.log",
    )


def _quick_recall(rows: Sequence[tuple[Query, list[str], float, bool]], k: int) -> float:
    if not rows:
        return 0.0
    return sum(len(set(q.relevant) & set(r[:k])) / len(set(q.relevant)) for q, r, _, _ in rows) / len(rows)


async def replay(
    client: Client,
    query: Query,
    fold: int,
    position: int,
    mapping: ToolMap,
    stats: ReplayStats,
    find_s: list[float],
    call_s: list[float],
    errors: list[str],
) -> None:
    """One training query as live traffic: find, then call each relevant tool the find returned."""
    conversation = f"train-{fold}-{position}"
    result, latency = await call(
        client,
        "find_tools",
        {"query": query.text, "limit": TRAIN_LIMIT, "conversation": conversation},
        errors,
    )
    stats.finds += 1
    if result is not None:
        find_s.append(latency)
    cards = _cards(result)
    if cards is None:
        stats.find_errors += 1
        cards = []
    returned = {str(c["name"]): c for c in cards}
    hits = 0
    for tool_id in query.relevant:
        stats.relevant_labels += 1
        name = mapping.exposed.get(tool_id)
        if name is None:
            stats.relevant_unmapped += 1
            continue
        card = returned.get(name)
        if card is None:
            stats.relevant_not_returned += 1
            continue
        stats.relevant_returned += 1
        hits += 1
        arguments = minimal_arguments(card.get("input_schema"))
        called, latency = await call(
            client,
            "call_tool",
            {"name": name, "arguments": arguments, "conversation": conversation},
            errors,
        )
        stats.calls += 1
        if called is not None:
            call_s.append(latency)
        if called is None or called.is_error:
            stats.calls_failed += 1
            content = called.content if called is not None else []
            text = " ".join(getattr(c, "text", "") for c in content)[:300] or "no result"
            if len(stats.call_errors) < 10:
                stats.call_errors.append(f"{name}: {text}")
        else:
            stats.calls_ok += 1
    if hits == len(query.relevant):
        stats.queries_all_returned += 1
    if hits == 0:
        stats.queries_none_returned += 1


# -- the whole run -----------------------------------------------------------------------------


def report_checkpoints(
    folds: Sequence[FoldResult], catalog_tools: int
) -> tuple[dict[str, Any], dict[str, float], int]:
    out: dict[str, Any] = {}
    latencies: list[float] = []
    errors = 0
    for pct in CHECKPOINTS:
        metrics = MetricSet(tools=catalog_tools, limit=TEST_LIMIT)
        per_fold: dict[str, float] = {}
        for result in folds:
            rows = result.checkpoints[pct]
            for query, ranked, latency, ok in rows:
                metrics.add(query.id, query.group, ranked, query.relevant, latency)
                latencies.append(latency)
                errors += not ok
            per_fold[str(result.fold)] = round(_quick_recall(rows, 5), 4)
        report = metrics.report()
        out[str(pct)] = {
            **{key: report[key] for key in REPORTED},
            "queries": report["queries"],
            "recall@20": report["recall@20"],
            "find_latency_ms": report["latency_ms"],
            "recall@5_per_fold": per_fold,
            "recall@5_per_group": {g: v["recall@5"] for g, v in report["groups"].items()},
        }
    return out, summary_ms(latencies), errors


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--folds-run", type=int, default=FOLDS, metavar="K", help="run only the first K folds"
    )
    parser.add_argument(
        "--smoke", action="store_true", help=f"{SMOKE_SERVERS} servers, their queries, 1 fold"
    )
    parser.add_argument("--concurrency", type=int, default=2, help="test finds in flight at once (2)")
    parser.add_argument(
        "--code",
        choices=("head", "worktree"),
        default="head",
        help="gateway code: a frozen copy of HEAD (default), or the checkout as it is",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to save (default: see above)")
    args = parser.parse_args(argv)
    if not 1 <= args.folds_run <= FOLDS:
        parser.error(f"--folds-run must be within 1..{FOLDS}")
    signal.signal(signal.SIGTERM, _on_sigterm)

    data = shared_data() / "toolbench"
    all_queries = list(load_queries(data / "queries.jsonl").queries)
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="toolgate-learning-curve-"))
    started = time.perf_counter()
    completed = False
    try:
        tools_path = data / "tools.jsonl"
        queries = all_queries
        folds_run = args.folds_run
        if args.smoke:
            tools_path, queries = smoke_subset(
                tools_path, all_queries, SMOKE_SERVERS, workdir / "tools.jsonl"
            )
            folds_run = 1
        code = gateway_code(args.code, workdir)
        entries = server_entries(tools_path)
        labelled = {t for q in queries for t in q.relevant}
        served = {t for e in entries for t in e.tools.values()}
        missing_in_data = sorted(labelled - served)
        splits = kfold(queries, FOLDS, SEED)[:folds_run]
        print(
            f"{len(entries)} servers, {len(served)} data tools, {len(queries)} queries, "
            f"{folds_run} of {FOLDS} folds; gateway code: {code.source} {code.commit[:10]}; workdir {workdir}",
            flush=True,
        )
        results: list[FoldResult] = []
        log_errors: dict[str, list[str]] = {}
        with multihost(procs, tools_path, len(entries), workdir) as port:
            for fold, (train, test) in enumerate(splits):
                result = anyio.run(
                    run_fold, fold, train, test, entries, port, procs, workdir, max(1, args.concurrency), code
                )
                results.append(result)
                shutil.rmtree(workdir / f"gateway-fold{fold}", ignore_errors=True)
                log_errors[f"gateway fold {fold}"] = error_lines(result.gateway_log)
                if result.protocol_errors:
                    print(f"fold {fold}: {len(result.protocol_errors)} failed protocol calls", flush=True)
        log_errors["multihost"] = error_lines(workdir / "multihost.log")
        completed = True
    finally:
        procs.stop_all()
        if completed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    duration = time.perf_counter() - started

    totals = ReplayStats()
    for result in results:
        totals.add(result.stats)
    catalog_tools = results[0].catalog_tools
    checkpoints, test_latency, test_errors = report_checkpoints(results, catalog_tools)
    unmapped = sorted({t for r in results for t in r.mapping_unmapped} & labelled)
    result_doc: dict[str, Any] = {
        "benchmark": "learning_curve",
        "command": "python -m bench.learning_curve" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "what": "Recall etc. of held-out test queries through the gateway's find_tools after 0/25/50/100% of "
        "the fold's training queries were replayed as live find_tools + call_tool traffic; usage learning "
        "only (no examples imported); 5-fold CV by query, metrics pooled over the folds run",
        "smoke": args.smoke,
        "gateway_code": {
            "source": code.source,
            "commit": code.commit,
            "checkout_files_differing_from_head": code.dirty,
        },
        "folds": FOLDS,
        "folds_run": folds_run,
        "seed": SEED,
        "queries": sum(len(r.checkpoints[0]) for r in results),
        "servers": len(entries),
        "data_tools": len(served),
        "catalog_tools": catalog_tools,
        "labelled_tools_unmapped": len(unmapped) + len(missing_in_data),
        "labelled_tools_unmapped_ids": (unmapped + missing_in_data)[:20],
        "limits": {
            "test_find_limit": TEST_LIMIT,
            "train_find_limit": TRAIN_LIMIT,
            "learn_max_uses": LEARN_MAX_USES,
            "test_concurrency": max(1, args.concurrency),
            "gateway_pythonhashseed": GATEWAY_HASH_SEED,
            "call_arguments": "required properties only: enum[0], strings 'x', numbers 1, booleans true",
        },
        "checkpoints": checkpoints,
        "replay": {
            **totals.as_dict(),
            "note": "relevant_not_returned: labelled tools the training find (limit "
            f"{TRAIN_LIMIT}) did not return; live traffic cannot teach those",
        },
        "test_find_errors": test_errors,
        "protocol_errors": {
            "count": sum(len(r.protocol_errors) for r in results),
            "retries": f"each failed find_tools/call_tool protocol call retried up to {CALL_ATTEMPTS - 1} times",
            "first": [e for r in results for e in r.protocol_errors][:10],
            "log_lines": {k: v for k, v in log_errors.items() if v},
        },
        "find_latency_ms": {
            "test_finds": test_latency,
            "train_finds_sequential": summary_ms([s for r in results for s in r.train_find_s]),
            "calls_sequential": summary_ms([s for r in results for s in r.call_s]) if totals.calls else None,
        },
        "fold_setup_s": [round(r.setup_s, 1) for r in results],
        "duration_s": round(duration, 1),
        "machine": machine(),
    }
    print()
    print(
        f"{'after':>6} {'queries':>7} {'R@1':>7} {'R@3':>7} {'R@5':>7} {'R@10':>7} {'nDCG@10':>8} {'C@10':>7}"
    )
    for pct in CHECKPOINTS:
        row = checkpoints[str(pct)]
        print(
            f"{pct:>5}% {row['queries']:>7} {row['recall@1']:>7.4f} {row['recall@3']:>7.4f} "
            f"{row['recall@5']:>7.4f} {row['recall@10']:>7.4f} {row['ndcg@10']:>8.4f} "
            f"{row['completeness@10']:>7.4f}"
        )
    print(
        f"replay: {totals.train_queries} training queries, {totals.relevant_labels} relevant labels, "
        f"{totals.relevant_returned} returned by their find, {totals.relevant_not_returned} not returned; "
        f"{totals.calls} calls, {totals.calls_ok} ok, {totals.calls_failed} failed; "
        f"{totals.uses_learned} uses learned"
    )
    print(
        f"find_tools p50: test {test_latency['p50']} ms (concurrency {max(1, args.concurrency)}), "
        f"train {result_doc['find_latency_ms']['train_finds_sequential']['p50']} ms (sequential); "
        f"unmapped labelled tools: {result_doc['labelled_tools_unmapped']}; {duration:.0f} s"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result_doc, indent=2) + "\n")
        print(f"saved {args.json}")
    elif not args.smoke:
        print(f"saved {save('learning_curve', result_doc)}")


if __name__ == "__main__":
    try:
        with suppress(BrokenPipeError):
            main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every started process is already stopped
        print("interrupted", file=sys.stderr)
        sys.exit(130)
