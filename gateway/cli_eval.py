"""`toolgate eval`: index a labelled corpus into a fresh temporary index and score its queries.

The corpus goes into an embedded qdrant-edge index in a temporary directory that is removed
afterwards (also on errors, Ctrl-C and SIGTERM), so an evaluation never touches the gateway's
own index. Every query runs through the pipeline `find_tools` uses
(:func:`retrieval.evaluate.evaluate`); the metrics are those of the benchmark data's README.
Retrieval modules are imported inside :func:`run`: `toolgate serve` should not pay for them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from .settings import Settings

if TYPE_CHECKING:
    from retrieval.corpus import Corpus, QuerySet

PROG = "toolgate eval"
DEPTH = 20  # ranking depth scored: the largest K of the report


class EvalError(Exception):
    """A problem the user can fix (bad option, unreadable file): one line on stderr, exit 2."""


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the same cleanup runs."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "eval",
        help="score retrieval on a labelled corpus (Recall, nDCG, Completeness, latency, tokens)",
        description="Index the tools into a fresh temporary index, run every labelled query through "
        "the find_tools pipeline, print the metrics overall and per group, and optionally save them.",
    )
    parser.add_argument("--tools", type=Path, required=True, metavar="FILE", help="tools JSONL")
    parser.add_argument("--queries", type=Path, required=True, metavar="FILE", help="labelled queries JSONL")
    parser.add_argument(
        "--distractors",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="extra tools JSONL added to the corpus (repeatable)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="N",
        help="N-fold cross-validation by query: usage vectors learn from the training folds only "
        "(default 0: no usage learning)",
    )
    parser.add_argument("--seed", type=int, default=13, help="seed of the fold split and sampling (13)")
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="K",
        help="tools handed to the client, for the token cost (default TOOLGATE_FIND_LIMIT_DEFAULT)",
    )
    parser.add_argument(
        "--max-queries", type=int, default=None, metavar="N", help="score a seeded sample of N queries"
    )
    parser.add_argument(
        "--intent",
        choices=("on", "off"),
        default=None,
        help="run the intent stage (parse the request into sub-intents, score tools per sub-intent) "
        "or not (default: the retrieval settings' default)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the report here")


@dataclass(frozen=True)
class _Plan:
    corpus: Corpus
    queries: QuerySet
    loaded_queries: int  # before --max-queries
    missing: dict[str, tuple[str, ...]]
    limit: int
    intent: bool | None  # None: the retrieval settings' default


def run(args: argparse.Namespace, settings: Settings) -> int:
    from .retrieval_setup import RetrievalSetupError

    started = time.time()
    try:
        plan = _prepare(args, settings)
        report = _evaluate(args, settings, plan)
    except (EvalError, RetrievalSetupError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except _Terminated:
        print(f"{PROG}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    report.update(_context(args, plan, started))
    print(format_report(report))
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"{PROG}: cannot write {args.json}: {exc.strerror}", file=sys.stderr)
            return 2
        print(f"report written to {args.json}")
    return 0


def _prepare(args: argparse.Namespace, settings: Settings) -> _Plan:
    """Check options and load the data: everything that can fail before any model work."""
    from retrieval.corpus import QuerySet, kfold, load_queries, load_tools, missing_labels

    if args.folds == 1 or args.folds < 0:
        raise EvalError(f"--folds must be 0 (no usage learning) or at least 2, got {args.folds}")
    limit: int = settings.find_limit_default if args.limit is None else args.limit
    if not 1 <= limit <= DEPTH:
        raise EvalError(f"--limit must be within 1..{DEPTH} (the ranking depth scored), got {limit}")
    if args.max_queries is not None and args.max_queries < 1:
        raise EvalError(f"--max-queries must be at least 1, got {args.max_queries}")
    if args.json is not None:
        _check_writable(args.json)
    try:
        corpus = load_tools(args.tools, distractors=args.distractors)
        queries = load_queries(args.queries)
    except OSError as exc:
        raise EvalError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:  # a ValueError too, but without the file's name
        files = ", ".join(str(p) for p in [args.tools, *args.distractors, args.queries])
        raise EvalError(f"not UTF-8 text ({exc.reason}) in one of: {files}") from None
    except ValueError as exc:  # malformed JSONL: the message names the file and line
        raise EvalError(str(exc)) from None
    if not corpus.tools:
        raise EvalError(f"no tools in {args.tools}")
    loaded = len(queries.queries)
    if args.max_queries is not None and args.max_queries < loaded:
        # A seeded sample keeps every group represented; a prefix would be one group only.
        keep = set(random.Random(args.seed).sample(range(loaded), args.max_queries))
        chosen = tuple(q for i, q in enumerate(queries.queries) if i in keep)
        queries = QuerySet(queries=chosen, flaws=queries.flaws)
    if not queries.queries:
        raise EvalError(f"no labelled queries in {args.queries}")
    if args.folds >= 2:
        try:
            kfold(list(queries.queries), args.folds, args.seed)
        except ValueError as exc:
            raise EvalError(f"--folds {args.folds}: {exc}") from None
    missing = missing_labels(queries.queries, corpus.ids())
    intent = None if args.intent is None else args.intent == "on"
    return _Plan(corpus, queries, loaded, missing, limit, intent)


def _check_writable(path: Path) -> None:
    """Fail before a long run, not after it, when the report cannot be saved."""
    if path.is_dir():
        raise EvalError(f"--json {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EvalError(f"cannot create {path.parent}: {exc.strerror}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EvalError(f"cannot write {path}")


def _evaluate(args: argparse.Namespace, settings: Settings, plan: _Plan) -> dict[str, Any]:
    from retrieval.evaluate import EvalOptions, evaluate
    from retrieval.index import VectorIndex, open_index
    from retrieval.pipeline import VECTOR_NAMES, Retriever

    from .retrieval_setup import build_embedder, retrieval_settings

    embedder = build_embedder(settings)  # first: a bad model setting should be the only output
    if plan.missing:
        example = next(iter(plan.missing.items()))
        print(
            f"{PROG}: warning: {len(plan.missing)} of {len(plan.queries)} queries name tools that are "
            f"not in the corpus (e.g. {example[0]}: {', '.join(example[1])}); they are scored as misses",
            file=sys.stderr,
        )
    split = f"{args.folds}-fold cross-validation" if args.folds >= 2 else "no usage learning"
    print(
        f"{PROG}: {len(plan.corpus)} tools, {len(plan.queries)} queries, {split}, seed {args.seed}",
        file=sys.stderr,
    )
    pipeline = retrieval_settings(settings)
    options = EvalOptions(
        folds=args.folds,
        seed=args.seed,
        depth=DEPTH,
        token_limit=plan.limit,
        settings=pipeline,
        intent=pipeline.intent if plan.intent is None else plan.intent,
    )
    bar = ProgressBar(sys.stderr)
    with _sigterm_as_interrupt():
        try:
            workdir = Path(tempfile.mkdtemp(prefix="toolgate-eval-"))
        except OSError as exc:
            raise EvalError(f"cannot create a temporary directory: {exc}") from None
        index: VectorIndex | None = None
        try:
            try:
                index = open_index(None, workdir / "index", dim=embedder.dim, vector_names=VECTOR_NAMES)
            except OSError as exc:
                raise EvalError(f"cannot create the temporary index in {workdir}: {exc.strerror}") from None
            bar("index", 0, len(plan.corpus))
            return evaluate(plan.corpus, plan.queries, Retriever(embedder, index, pipeline), options, bar)
        finally:
            bar.close()
            try:
                if index is not None:
                    index.close()
            finally:
                shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM (CI cancelling a job, `kill`) unwind like Ctrl-C so the temp index is removed."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(_signum: int, _frame: FrameType | None) -> None:
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- what the report says about its own run ----------------------------------------------------


def _context(args: argparse.Namespace, plan: _Plan, started: float) -> dict[str, Any]:
    flaws = plan.corpus.flaws
    qflaws = plan.queries.flaws
    return {
        "command": shlex.join(["toolgate", *sys.argv[1:]]),
        "options": {
            "folds": args.folds,
            "seed": args.seed,
            "limit": plan.limit,
            "depth": DEPTH,
            "max_queries": args.max_queries,
            "intent": args.intent,
        },
        "split": f"{args.folds}-fold cross-validation by query (seed {args.seed}); usage vectors learn "
        "from the training folds only and every query is scored once, held out"
        if args.folds >= 2
        else "no usage learning: every query scored against description-only vectors",
        "queries_loaded": plan.loaded_queries,
        "queries_sampled": args.max_queries is not None and args.max_queries < plan.loaded_queries,
        "data": {
            "tools": _file_info(args.tools),
            "distractors": [_file_info(p) for p in args.distractors],
            "queries": _file_info(args.queries),
        },
        "flaws": {
            "tools": {
                "duplicate_ids": len(flaws.duplicate_ids),
                "conflicting_duplicates": len(flaws.conflicting_duplicates),
                "conflicting_duplicate_ids": sorted(set(flaws.conflicting_duplicates)),
                "distractor_collisions": len(flaws.distractor_collisions),
                "empty_descriptions": flaws.empty_descriptions,
                "shared_name_description": flaws.shared_name_description,
            },
            "queries": {
                "duplicate_ids": len(qflaws.duplicate_ids),
                "duplicate_texts": len(qflaws.duplicate_texts),
                "repeated_labels": qflaws.repeated_labels,
                "unlabelled": len(qflaws.unlabelled),
            },
            # Kept in and scored as misses: the README's metrics count every relevant tool.
            "missing_labels": {
                "queries": len(plan.missing),
                "tools": len({t for ids in plan.missing.values() for t in ids}),
                "by_query": {q: list(ids) for q, ids in plan.missing.items()},
            },
        },
        "machine": machine_info(),
        "started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
        "duration_s": round(time.time() - started, 1),
    }


def _file_info(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def machine_info() -> dict[str, Any]:
    """Where the numbers were measured; the load average says whether others shared the CPU."""
    from importlib.metadata import PackageNotFoundError, version

    packages: dict[str, str | None] = {}
    for name in ("toolgate", "onnxruntime", "qdrant-edge-py", "numpy", "torch"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_avg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "packages": packages,
    }


# -- the printed table -------------------------------------------------------------------------

_COLUMNS = (
    ("R@1", "recall@1"),
    ("R@3", "recall@3"),
    ("R@5", "recall@5"),
    ("R@10", "recall@10"),
    ("R@20", "recall@20"),
    ("nDCG@10", "ndcg@10"),
    ("C@10", "completeness@10"),
)


def format_report(report: dict[str, Any]) -> str:
    rows: list[tuple[str, dict[str, Any]]] = [("overall", report)]
    if "multi_tool" in report:
        rows.append(("several tools", report["multi_tool"]))
    rows += report["groups"].items()
    width = max(len(name) for name, _ in rows) + 2
    header = f"{'group':<{width}}{'queries':>8}" + "".join(f"{label:>9}" for label, _ in _COLUMNS)
    lines = [
        f"{report['tools']} tools, {report['queries']} queries; {report['split']}",
        f"embedder {report['embedder']}",
        "",
        header,
    ]
    for name, row in rows:
        cells = "".join(f"{row[key]:>9.3f}" for _, key in _COLUMNS)
        lines.append(f"{name:<{width}}{row['queries']:>8}{cells}")
    lat, floor, index, tokens = report["latency_ms"], report["floor_ms"], report["index"], report["tokens"]
    lines += [
        "",
        f"latency   mean {lat['mean']:.1f} ms, p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms per query; "
        f"floor (query embedding + exact scan) p50 {floor['p50']:.1f} ms, p99 {floor['p99']:.1f} ms",
        f"index     {index['tools']} tools in {index['build_s']:.1f} s: {_num(index['tools_per_s'])} tools/s "
        f"vs embedder alone {_num(index['embedder_texts_per_s'])} texts/s "
        f"(ratio {_num(index['build_vs_embedder'], '.2f')})",
        f"tokens    top-{tokens['limit']} returned {_num(tokens['returned_mean'], '.0f')} per query vs "
        f"{tokens['listing']} to list every tool ({_num(tokens['returned_share'], '.3%')}; "
        f"{report['tokenizer']})",
    ]
    lines.append(_intent_line(report["intent"]))
    missing = report["flaws"]["missing_labels"]
    if missing["queries"]:
        lines.append(
            f"missing   {missing['queries']} queries name tools not in the corpus (scored as misses)"
        )
    return "\n".join(lines)


def _intent_line(intent: dict[str, Any]) -> str:
    if not intent["on"]:
        return "intent    off"
    if "parser_ms" not in intent:
        return "intent    on (no request parsed)"
    parser = intent["parser_ms"]
    return (
        f"intent    on: {intent['sub_intents_mean']:.2f} sub-intents per request "
        f"({intent['split_share']:.0%} split); parser p50 {parser['p50']:.2f} ms, p99 {parser['p99']:.2f} ms"
    )


def _num(value: float | None, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


# -- progress on stderr --------------------------------------------------------------------------


class ProgressBar:
    """A :data:`retrieval.evaluate.Progress` callback: ``(phase, done, total)``.

    On a terminal it redraws one line with ``\\r`` (at most every ``interval`` seconds); in a
    log (CI) it prints a line each time another tenth of the phase is done, so logs stay short.
    Callbacks come after work is done, so a phase's clock starts at the previous report (or at
    construction), which also counts set-up such as training the usage vectors; the rate and ETA
    use the span since the phase's first report when there is one, so that set-up does not skew them.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        tty: bool | None = None,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._tty = stream.isatty() if tty is None else tty
        self._interval = interval
        self._clock = clock
        self._phase: str | None = None
        self._started = clock()
        self._first = (self._started, 0)  # (time, done) of the phase's first report
        self._last = self._started
        self._drawn = -math.inf
        self._next_tenth = 1
        self._open_line = False
        self._width = 0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = self._clock()
        if phase != self._phase:
            self.close()
            self._phase, self._started, self._next_tenth = phase, self._last, 1
            self._first, self._drawn = (now, done), -math.inf
        self._last = now
        finished = done >= total
        if self._tty:
            if finished or now - self._drawn >= self._interval:
                self._drawn = now
                self._draw(self._line(phase, done, total, now), finished)
        elif total > 0:
            tenth = done * 10 // total
            if tenth >= self._next_tenth or finished:
                self._next_tenth = tenth + 1
                self._stream.write(self._line(phase, done, total, now) + "\n")
                self._stream.flush()

    def close(self) -> None:
        """End a line left open by an unfinished phase (before an error message, say)."""
        if self._open_line:
            self._stream.write("\n")
            self._stream.flush()
            self._open_line = False

    def _draw(self, text: str, finished: bool) -> None:
        # Pad over the previous, possibly longer, line instead of relying on terminal escapes.
        self._stream.write("\r" + text.ljust(self._width) + ("\n" if finished else ""))
        self._stream.flush()
        self._width = 0 if finished else len(text)
        self._open_line = not finished

    def _line(self, phase: str, done: int, total: int, now: float) -> str:
        elapsed = now - self._started
        share = done / total if total else 1.0
        text = f"{phase} {done:>{len(str(total))}}/{total} {share:4.0%}"
        first_at, first_done = self._first
        if now > first_at and done > first_done:
            rate = (done - first_done) / (now - first_at)
        elif done >= total and done > 0 and elapsed > 0:
            rate = done / elapsed  # one report only: the phase's whole span is all there is
        else:
            return text
        if done >= total:
            return f"{text}  {rate:.1f}/s  in {_clock_text(elapsed)}"
        return f"{text}  {rate:.1f}/s  ETA {_clock_text((total - done) / rate)}"


def _clock_text(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
