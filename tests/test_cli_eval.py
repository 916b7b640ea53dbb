"""`toolgate eval` as a user runs it: the real console script on a slice of the ToolBench data.

The slice is the tools of a few servers, every query whose relevant tools all lie inside it,
one extra query naming a tool that is nowhere (it must be reported, not dropped) and a few
toolsdk tools as distractors. TMPDIR points at a directory of the test's own, so a temporary
index left behind shows up as a file there.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import build_parser
from gateway.cli_eval import ProgressBar, _prepare
from gateway.settings import Settings
from tests.support import console_script, shared_data

SERVERS = 8
DISTRACTORS = 24
MISSING_QUERY = "extra:missing-label"
# Written to TMPDIR by libraries, not by the command: onnxruntime drops a `.ses` file on import,
# tiktoken caches its encoding in `data-gym-cache`. Anything else left there is ours.
FOREIGN = {".ses", "data-gym-cache"}


@dataclass(frozen=True)
class Slice:
    folder: Path
    tools: Path
    queries: Path
    distractors: Path
    tool_count: int
    groups: Counter[str]  # queries per group (the extra query has none)
    query_count: int


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def _pick_servers(needs: list[frozenset[str]], budget: int) -> set[str]:
    """Servers covering many queries: greedily add the server set of the query that covers the
    most new queries per added server (deterministic: the first best wins)."""
    units = Counter(needs)
    chosen: set[str] = set()
    while len(chosen) < budget:
        best: tuple[float, frozenset[str]] | None = None
        for unit in units:
            extra = unit - chosen
            if not extra or len(chosen) + len(extra) > budget:
                continue
            grown = chosen | extra
            gain = sum(n for u, n in units.items() if u <= grown and not u <= chosen)
            if best is None or gain / len(extra) > best[0]:
                best = (gain / len(extra), extra)
        if best is None:
            break
        chosen |= best[1]
    return chosen


@pytest.fixture(scope="module")
def data_slice(tmp_path_factory: pytest.TempPathFactory) -> Slice:
    root = shared_data()
    tools = _read(root / "toolbench" / "tools.jsonl")
    queries = _read(root / "toolbench" / "queries.jsonl")
    server_of = {f"{t['server']}/{t['name']}": t["server"] for t in tools}
    needs = [frozenset(server_of[r] for r in q["relevant"]) for q in queries]
    servers = _pick_servers(needs, SERVERS)
    kept_tools = [t for t in tools if t["server"] in servers]
    kept_queries = [q for q, need in zip(queries, needs, strict=True) if need <= servers]
    groups = Counter(q["group"] for q in kept_queries)
    some_tool = f"{kept_tools[0]['server']}/{kept_tools[0]['name']}"
    extra = {
        "id": MISSING_QUERY,
        "query": "Find the tool that was never catalogued, and the first one as well.",
        "relevant": [some_tool, "Nowhere API/missing tool"],
    }
    folder = tmp_path_factory.mktemp("slice")
    return Slice(
        folder=folder,
        tools=_write(folder / "tools.jsonl", kept_tools),
        queries=_write(folder / "queries.jsonl", [*kept_queries, extra]),
        distractors=_write(
            folder / "distractors.jsonl", _read(root / "toolsdk" / "tools.jsonl")[:DISTRACTORS]
        ),
        tool_count=len(kept_tools),
        groups=groups,
        query_count=len(kept_queries) + 1,
    )


def _env(tmpdir: Path, home: Path) -> dict[str, str]:
    tmpdir.mkdir(exist_ok=True)
    return {
        **os.environ,
        "TMPDIR": str(tmpdir),
        "TOOLGATE_DATA_DIR": str(home / "data"),
        "TOOLGATE_LOG_LEVEL": "WARNING",
    }


def _leftovers(tmpdir: Path) -> list[str]:
    return sorted(entry.name for entry in tmpdir.iterdir() if entry.name not in FOREIGN)


def _eval(args: list[str], tmpdir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("toolgate"), "eval", *args],
        capture_output=True,
        text=True,
        env=_env(tmpdir, cwd),
        cwd=cwd,
        timeout=180,
        check=False,
    )


@dataclass(frozen=True)
class Run:
    process: subprocess.CompletedProcess[str]
    report: dict[str, Any]
    tmpdir: Path


@pytest.fixture(scope="module")
def eval_run(data_slice: Slice, tmp_path_factory: pytest.TempPathFactory) -> Run:
    work = tmp_path_factory.mktemp("run")
    tmpdir = work / "tmp"
    args = ["--tools", str(data_slice.tools), "--queries", str(data_slice.queries)]
    args += ["--distractors", str(data_slice.distractors), "--folds", "2", "--json", "out.json"]
    process = _eval(args, tmpdir, work)
    assert process.returncode == 0, process.stderr
    return Run(process, json.loads((work / "out.json").read_text(encoding="utf-8")), tmpdir)


def test_eval_reports_the_readme_metrics(eval_run: Run, data_slice: Slice) -> None:
    report = eval_run.report
    assert report["tools"] == data_slice.tool_count + DISTRACTORS
    assert report["queries"] == data_slice.query_count
    for key in ("recall@1", "recall@3", "recall@5", "recall@10", "recall@20", "ndcg@10", "completeness@10"):
        assert isinstance(report[key], float)
        assert 0.0 <= report[key] <= 1.0
    assert report["recall@1"] <= report["recall@5"] <= report["recall@20"]
    assert report["recall@5"] > 0.3  # a working pipeline on a few dozen tools; a broken one scores ~0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"]
    assert isinstance(latency["mean"], float)
    tokens = report["tokens"]
    assert tokens["limit"] == 5
    assert 0 < tokens["returned_mean"] < tokens["listing"]
    assert report["index"]["tools"] == report["tools"]
    assert report["index"]["tools_per_s"] > 0


def test_eval_reports_groups_and_its_own_run(eval_run: Run, data_slice: Slice) -> None:
    report = eval_run.report
    assert set(report["groups"]) == set(data_slice.groups)
    for name, row in report["groups"].items():
        assert row["queries"] == data_slice.groups[name]
        assert 0.0 <= row["recall@5"] <= 1.0
    assert report["folds"] == 2
    assert report["seed"] == 13
    assert report["options"]["max_queries"] is None
    assert "--folds 2" in report["command"]
    assert report["data"]["tools"]["path"] == str(data_slice.tools)
    assert len(report["data"]["tools"]["sha256"]) == 64
    assert [d["path"] for d in report["data"]["distractors"]] == [str(data_slice.distractors)]
    missing = report["flaws"]["missing_labels"]
    assert missing["queries"] == 1
    assert missing["by_query"] == {MISSING_QUERY: ["Nowhere API/missing tool"]}
    assert isinstance(report["flaws"]["tools"]["empty_descriptions"], int)
    assert report["machine"]["cpus"] >= 1


def test_eval_prints_a_table_and_progress_and_cleans_up(eval_run: Run) -> None:
    out = eval_run.process.stdout
    assert "R@1" in out
    assert "nDCG@10" in out
    assert "overall" in out
    assert "report written to out.json" in out
    for group in eval_run.report["groups"]:
        assert group in out
    err = eval_run.process.stderr
    # Not a terminal: whole lines, ending with each phase's completion.
    assert "\r" not in err
    assert any(line.startswith("index") and "100%" in line for line in err.splitlines())
    assert any(line.startswith("query") and "100%" in line for line in err.splitlines())
    assert "warning: 1 of" in err  # the query naming an absent tool
    assert "Traceback" not in err
    assert _leftovers(eval_run.tmpdir) == []


@pytest.fixture(scope="module")
def intent_runs(data_slice: Slice, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """The same benchmark with the intent stage off and on (no folds: quick)."""
    runs = {}
    for flag in ("off", "on"):
        work = tmp_path_factory.mktemp(f"intent-{flag}")
        args = ["--tools", str(data_slice.tools), "--queries", str(data_slice.queries)]
        process = _eval([*args, "--intent", flag, "--json", "out.json"], work / "tmp", work)
        assert process.returncode == 0, process.stderr
        runs[flag] = Run(process, json.loads((work / "out.json").read_text(encoding="utf-8")), work / "tmp")
    return runs


def test_eval_runs_with_and_without_the_intent_stage(intent_runs: dict[str, Run], data_slice: Slice) -> None:
    off, on = intent_runs["off"].report, intent_runs["on"].report
    assert (off["options"]["intent"], on["options"]["intent"]) == ("off", "on")
    assert off["intent"] == {"on": False}
    assert on["intent"]["on"] is True
    assert 1.0 < on["intent"]["sub_intents_mean"] <= 12
    assert 0.0 < on["intent"]["parser_ms"]["p50"] <= on["intent"]["parser_ms"]["p99"] < 100.0
    assert on["settings"]["intent"] == off["settings"]["intent"]  # the flag, not the settings, decided
    for report in (off, on):
        for key in ("recall@5", "ndcg@10", "completeness@10", "latency_ms", "tools", "queries", "groups"):
            assert key in report
        assert set(report["groups"]) == set(data_slice.groups)
        assert 0 < report["multi_tool"]["queries"] <= report["queries"]
        assert report["recall@5"] > 0.3
    assert on["queries"] == off["queries"]
    assert "intent    off" in intent_runs["off"].process.stdout
    assert "intent    on: " in intent_runs["on"].process.stdout
    assert "several tools" in intent_runs["on"].process.stdout
    assert _leftovers(intent_runs["on"].tmpdir) == []


def test_eval_default_follows_the_settings(eval_run: Run) -> None:
    assert eval_run.report["options"]["intent"] is None
    assert eval_run.report["intent"]["on"] is eval_run.report["settings"]["intent"]


@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("missing", ["--tools", "nope.jsonl"], "cannot read nope.jsonl"),
        ("malformed", ["--queries", "bad.jsonl"], "bad.jsonl:2: not JSON"),
        ("one fold", ["--folds", "1"], "--folds must be 0"),
        ("negative folds", ["--folds", "-3"], "--folds must be 0"),
        ("no queries", ["--queries", "empty.jsonl"], "no labelled queries"),
        ("zero queries", ["--max-queries", "0"], "--max-queries must be at least 1"),
    ],
)
def test_eval_errors_are_one_line(
    case: str, extra: list[str], message: str, data_slice: Slice, tmp_path: Path
) -> None:
    good = data_slice.queries.read_text(encoding="utf-8").splitlines()
    (tmp_path / "bad.jsonl").write_text(good[0] + "\n{not json\n", encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    args = {"--tools": str(data_slice.tools), "--queries": str(data_slice.queries), "--folds": "2"}
    args.update(zip(extra[::2], extra[1::2], strict=True))
    process = _eval([item for pair in args.items() for item in pair], tmp_path / "tmp", tmp_path)
    assert process.returncode == 2, case
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1, process.stderr
    assert lines[0].startswith("toolgate eval: ")
    assert message in lines[0]
    assert process.stdout == ""
    assert _leftovers(tmp_path / "tmp") == []


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
)
def test_eval_stopped_removes_its_index(
    signum: signal.Signals, code: int, message: str, data_slice: Slice, tmp_path: Path
) -> None:
    # All ToolBench queries against the small slice: the run goes on for a while after indexing.
    queries = shared_data() / "toolbench" / "queries.jsonl"
    tmpdir = tmp_path / "tmp"
    process = subprocess.Popen(
        [console_script("toolgate"), "eval", "--tools", str(data_slice.tools), "--queries", str(queries)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tmpdir, tmp_path),
        cwd=tmp_path,
    )
    assert process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("index") and "100%" in line:
            break
    assert any(name.startswith("toolgate-eval-") for name in _leftovers(tmpdir)), "no index while running"
    process.send_signal(signum)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == code, "".join(seen) + rest
    assert rest.strip().splitlines()[-1] == f"toolgate eval: {message}"
    assert "Traceback" not in rest
    assert _leftovers(tmpdir) == []


def test_max_queries_takes_a_seeded_sample_in_file_order(data_slice: Slice) -> None:
    def sample(seed: int) -> list[str]:
        files = ["--tools", str(data_slice.tools), "--queries", str(data_slice.queries)]
        args = build_parser().parse_args(["eval", *files, "--max-queries", "10", "--seed", str(seed)])
        return [q.id for q in _prepare(args, Settings()).queries.queries]

    ids = [row["id"] for row in _read(data_slice.queries)]
    first = sample(13)
    assert len(first) == 10
    assert first == sample(13)
    assert first != sample(14)
    assert first == [i for i in ids if i in set(first)]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_in_a_log_prints_a_line_per_tenth() -> None:
    stream, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(stream, tty=False, clock=clock)
    for done in range(1, 201):
        clock.now += 0.5
        bar("query", done, 200)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("query  20/200  10%  2.0/s  ETA 1:30")
    assert lines[-1] == "query 200/200 100%  2.0/s  in 1:40"


def test_progress_on_a_terminal_redraws_one_line() -> None:
    stream, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(stream, tty=True, clock=clock, interval=1.0)
    bar("index", 0, 4)
    for done in range(1, 5):
        clock.now += 0.6
        bar("index", done, 4)
    bar("query", 1, 3)
    bar.close()
    text = stream.getvalue()
    index_part, query_part = text.split("\n")[:2]
    assert index_part.count("\r") == 3  # 0, then 2 (1 s later), then the final 4; 1 and 3 throttled
    assert index_part.rstrip().endswith("in 0:02")
    assert query_part.startswith("\rquery 1/3  33%")
    assert text.endswith("\n")
