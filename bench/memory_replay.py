"""MemTool's replay benchmark through the real gateway: working sets over 100-turn conversations.

    python -m bench.memory_replay [--conversations 20] [--sweep-conversations 10] [--smoke]
                                  [--concurrency 2] [--code head|worktree] [--json PATH]
                                  [--find-limit 15] [--capacity 40]

Conversations are built from ``../shared/data/toolbench`` (seeded): a conversation is a run of
tasks, each a multi-tool ToolBench query whose relevant tools t1..tn become n consecutive turns
(turn i needs tool i). Consecutive tasks share no server (a topic switch), and inside a task,
after any turn but the last, an interruption follows with probability 0.25: one turn of an
unrelated query (no server in common with the task; it needs that query's first relevant
tool), after which the task resumes. Conversations are cut at 100 turns.

Turn text: each turn sends its query's own full text (the agent re-searches the request it is
working through). ToolBench queries do not say which part asks for which tool, and aligning
sentences to tools by position was wrong on inspection (the first sentence is usually
context), so no per-tool text is derived and nothing of the label reaches the query.

One ``bench.multihost`` process serves the ToolBench tools as 811 MCP servers (plus an ``echo``
tool each: 3,290 tools); one ``toolgate serve`` (a ``git archive`` copy of HEAD by default)
imports them through ``POST /admin/import`` and indexes them once; for each setting the
gateway is restarted on the same data directory with other memory settings (the index is
adopted without re-embedding). Every turn, over ``/mcp`` with the MCP SDK client:

1. ``find_tools(text, limit=15, conversation, mode)`` (``--find-limit``). In autonomous mode, a find refused with
   "the working set is full" is answered like a model would: ``forget_tools`` with the least
   recently used tools the message lists, then the find once more;
2. when the needed tool was returned or is in the working set, ``call_tool`` it with minimal
   schema-valid arguments in the same conversation;
3. the working set is read back through ``GET /admin/conversations/{id}`` (the truth for size,
   tokens and hits; what ``call_tool`` added is the difference with the find's view).

Gateway settings: ``TOOLGATE_LEARN_FROM_CALLS=false`` (rankings stay the same across modes),
``PYTHONHASHSEED=0``, process-memory working sets. Saves ``bench/results/memory_replay.json``
(``--smoke``: 40 servers, 3 short conversations; nothing saved unless ``--json``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
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

from bench.common import machine, save, shared_data
from bench.learning_curve import smoke_subset
from bench.replay_support import (
    GATEWAY_HASH_SEED,
    GatewayCode,
    Processes,
    ToolMap,
    call,
    cards,
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
from retrieval.corpus import Query, load_queries, load_tools
from retrieval.tokens import listing_tokens, tokenizer_name, tool_definition_tokens

SEED = 29
TURNS = 100
# The target setting: a working set of at most 40 tools. At limit 10 a request's first
# turn finds its tool 86% of the time, which caps the hit rate near 0.89 whatever memory does.
LIMIT = 15
CONVERSATIONS = 20
SWEEP_CONVERSATIONS = 10
INTERRUPTION_P = 0.25
CAPACITY = 40
AUTONOMOUS_CAPACITY = 40
IDLE_TURNS = 3
IDLE_SWEEP = (1, 2, 5)
WINDOW = 3
SMOKE_SERVERS = 40
SMOKE_TURNS = 20
SMOKE_CONVERSATIONS = 3
SMOKE_AUTONOMOUS_CAPACITY = 12
FULL_MESSAGE = "the working set is full"
_LRU = re.compile(r"least recently used: ([^)]*)\)")


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every started process is stopped."""


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise _Terminated


# -- conversations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    query_id: str
    text: str
    needed: str  # ToolBench id of the tool this turn needs
    kind: str  # "task" or "interruption"
    step: int  # position of the needed tool in its query's relevant list


def build_conversations(
    queries: Sequence[Query], server_of: dict[str, str], count: int, turns: int, seed: int
) -> list[list[Turn]]:
    """``count`` conversations of ``turns`` turns (see the module docstring), one seeded
    generator each, so conversation k is the same whatever ``count`` is."""
    tasks = [q for q in queries if len(q.relevant) >= 2]
    servers = {q.id: {server_of[t] for t in q.relevant} for q in queries}
    out: list[list[Turn]] = []
    for k in range(count):
        rng = random.Random(f"{seed}-{k}")
        conversation: list[Turn] = []
        used: set[str] = set()
        previous: set[str] = set()
        while len(conversation) < turns:
            options = [q for q in tasks if q.id not in used and not servers[q.id] & previous]
            task = rng.choice(options or tasks)
            used.add(task.id)
            previous = servers[task.id]
            for step, tool in enumerate(task.relevant):
                conversation.append(Turn(task.id, task.text, tool, "task", step))
                if step < len(task.relevant) - 1 and rng.random() < INTERRUPTION_P:
                    aside = [q for q in queries if q.id not in used and not servers[q.id] & previous]
                    other = rng.choice(aside or list(queries))
                    used.add(other.id)
                    conversation.append(Turn(other.id, other.text, other.relevant[0], "interruption", 0))
        out.append(conversation[:turns])
    return out


# -- one conversation --------------------------------------------------------------------------


@dataclass
class TurnRecord:
    added: int = 0
    removed: int = 0  # pruned by the gateway or forgotten by the model this turn
    forgotten: int = 0
    size: int = 0  # working set after the turn
    tokens: int = 0  # tokens of the working set's definitions after the turn
    returned_tokens: int = 0  # tokens of the cards the find returned
    returned: bool = False  # the needed tool was among the find's cards
    held_before: bool = False  # ... in the working set before the find
    in_set: bool = False  # ... in the working set after the find
    hit: bool = False  # returned or in the set after the find
    memory_miss: bool = False  # not a hit, though an earlier find of this conversation returned it
    refused: bool = False  # autonomous: the first find was refused (set full)
    find_failed: bool = False
    called: bool = False
    call_ok: bool = False
    mismatch: bool = False  # the working set read back differs from the views' account
    kind: str = "task"
    step: int = 0


@dataclass
class Trace:
    conversation: str
    turns: list[TurnRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _error_text(result: Any) -> str:
    content = getattr(result, "content", None) or []
    return " ".join(getattr(c, "text", "") for c in content)


def _memory(result: Any) -> dict[str, Any] | None:
    payload = getattr(result, "structured_content", None)
    if isinstance(payload, dict) and isinstance(payload.get("memory"), dict):
        return payload["memory"]
    return None


@dataclass
class Context:
    client: Client
    http: httpx.AsyncClient
    mapping: ToolMap
    tokens: dict[str, int]  # exposed name -> definition tokens
    schemas: dict[str, Any]  # exposed name -> input schema
    limit: int


async def working_set(http: httpx.AsyncClient, conversation: str) -> set[str]:
    response = await http.get(f"/admin/conversations/{conversation}")
    if response.status_code == 404:
        return set()
    response.raise_for_status()
    return set(response.json()["tools"])


async def replay_conversation(ctx: Context, conversation: str, turns: Sequence[Turn], mode: str) -> Trace:
    trace = Trace(conversation)
    held: set[str] = set()
    ever_returned: set[str] = set()
    for turn in turns:
        record = TurnRecord(kind=turn.kind, step=turn.step)
        needed = ctx.mapping.exposed.get(turn.needed, f"unmapped:{turn.needed}")
        record.held_before = needed in held
        current = set(held)
        arguments = {"query": turn.text, "limit": ctx.limit, "conversation": conversation, "mode": mode}
        result, _ = await call(ctx.client, "find_tools", arguments, trace.errors)
        if result is not None and result.is_error and FULL_MESSAGE in _error_text(result):
            record.refused = True
            match = _LRU.search(_error_text(result))
            names = [n.strip() for n in match.group(1).split(",") if n.strip()] if match else []
            if names:
                forgot, _ = await call(
                    ctx.client, "forget_tools", {"names": names, "conversation": conversation}, trace.errors
                )
                view = _memory(forgot)
                removed = [str(n) for n in view["removed"]] if view else []
                record.forgotten = len(removed)
                record.removed += len(removed)
                current -= set(removed)
            result, _ = await call(ctx.client, "find_tools", arguments, trace.errors)
        found = cards(result)
        view = _memory(result)
        if found is None or view is None:
            record.find_failed = True
            trace.errors.append(f"find failed: {_error_text(result)[:200]}")
            found = []
        else:
            current -= {str(n) for n in view["removed"]}
            current |= {str(n) for n in view["added"]}
            record.added += len(view["added"])
            record.removed += len(view["removed"])
        names = [str(c["name"]) for c in found]
        for card in found:
            ctx.schemas.setdefault(str(card["name"]), card.get("input_schema"))
        record.returned = needed in names
        record.in_set = needed in current
        record.hit = record.returned or record.in_set
        record.memory_miss = not record.hit and needed in ever_returned
        ever_returned.update(names)
        record.returned_tokens = sum(ctx.tokens.get(n, 0) for n in names)
        if record.hit and needed in ctx.schemas:
            record.called = True
            body = {"name": needed, "arguments": minimal_arguments(ctx.schemas[needed])}
            called, _ = await call(
                ctx.client, "call_tool", {**body, "conversation": conversation}, trace.errors
            )
            record.call_ok = called is not None and not called.is_error
            if not record.call_ok and len(trace.errors) < 20:
                trace.errors.append(f"call {needed}: {_error_text(called)[:200]}")
        truth = await working_set(ctx.http, conversation)
        by_call = truth - current
        record.added += len(by_call)
        record.mismatch = bool(current - truth) or not by_call <= {needed}
        record.size = len(truth)
        record.tokens = sum(ctx.tokens.get(n, 0) for n in truth)
        held = truth
        trace.turns.append(record)
    return trace


# -- metrics -----------------------------------------------------------------------------------


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


def summarise(traces: Sequence[Trace], listing: int, window: int = WINDOW) -> dict[str, Any]:
    records = [r for t in traces for r in t.turns]
    added = sum(r.added for r in records)
    removed = sum(r.removed for r in records)
    window_ratios: list[float] = []
    for trace in traces:
        turns = trace.turns
        for start in range(len(turns) - window + 1):
            part = turns[start : start + window]
            got = sum(r.added for r in part)
            if got:
                window_ratios.append(sum(r.removed for r in part) / got)
    tasks = [r for r in records if r.kind == "task"]
    later = [r for r in tasks if r.step > 0]
    firsts = [r for r in records if r.step == 0]
    sizes = [r.size for r in records]
    tokens = [r.tokens for r in records]
    calls = [r for r in records if r.called]
    return {
        "conversations": len(traces),
        "turns": len(records),
        "added": added,
        "removed": removed,
        "forgotten_by_model": sum(r.forgotten for r in records),
        "removal_ratio": _ratio(removed, added),
        "avg_removal_ratio_3t": round(statistics.fmean(window_ratios), 4) if window_ratios else None,
        "windows_with_additions": len(window_ratios),
        "working_set_avg": round(statistics.fmean(sizes), 2),
        "working_set_peak": max(sizes),
        "working_set_final_avg": round(statistics.fmean(t.turns[-1].size for t in traces), 2),
        "hit_rate": _ratio(sum(r.hit for r in records), len(records)),
        "hit_rate_task_turns": _ratio(sum(r.hit for r in tasks), len(tasks)),
        # A request's first turn (a task's first step, or an interruption) can only hit through
        # that one search: its rate bounds the whole hit rate from the retrieval side.
        "hit_rate_first_turns": _ratio(sum(r.hit for r in firsts), len(firsts)),
        "hit_rate_later_turns": _ratio(sum(r.hit for r in later), len(later)),
        "first_turns": len(firsts),
        "returned_rate": _ratio(sum(r.returned for r in records), len(records)),
        "held_before_find_rate": _ratio(sum(r.held_before for r in later), len(later)),
        "memory_misses": sum(r.memory_miss for r in records),
        "retrieval_misses": sum(not r.hit and not r.memory_miss for r in records),
        "refused_finds": sum(r.refused for r in records),
        "failed_finds": sum(r.find_failed for r in records),
        "calls": len(calls),
        "calls_ok": sum(r.call_ok for r in calls),
        "view_mismatches": sum(r.mismatch for r in records),
        "tool_tokens_per_turn": {
            "working_set_avg": round(statistics.fmean(tokens), 1),
            "working_set_p50": statistics.median(tokens),
            "working_set_peak": max(tokens),
            "returned_cards_avg": round(statistics.fmean(r.returned_tokens for r in records), 1),
            "listing_every_tool": listing,
            "working_set_avg_vs_listing": _ratio(statistics.fmean(tokens), listing),
        },
    }


# -- the gateway -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    name: str
    capacity: int
    idle_turns: int
    modes: tuple[str, ...]
    conversations: int


async def wait_index(http: httpx.AsyncClient) -> dict[str, Any]:
    deadline = time.monotonic() + 1800
    while True:
        index: dict[str, Any] = (await http.get("/admin/index")).json()
        if index["pending"] == 0 and index["ready"]:
            return index
        if time.monotonic() > deadline:
            raise RuntimeError(f"the index still has {index['pending']} tools pending")
        await anyio.sleep(0.5)


async def definitions(http: httpx.AsyncClient) -> tuple[dict[str, int], dict[str, Any]]:
    """Every catalog tool's definition tokens (exposed name, description, input schema as
    compact JSON: :func:`retrieval.tokens.tool_definition_tokens`) and input schema."""
    tokens: dict[str, int] = {}
    schemas: dict[str, Any] = {}
    offset = 0
    while True:
        page = (await http.get("/admin/tools", params={"limit": 1000, "offset": offset})).json()
        for tool in page["tools"]:
            name = str(tool["exposed_name"])
            tokens[name] = tool_definition_tokens(name, tool["description"] or "", tool["input_schema"])
            schemas[name] = tool["input_schema"]
        offset += len(page["tools"])
        if not page["tools"] or offset >= int(page["total"]):
            return tokens, schemas


def gateway_env(setting: Setting) -> dict[str, str]:
    return {
        "TOOLGATE_LEARN_FROM_CALLS": "false",
        "TOOLGATE_MEMORY_MODE": "workflow",
        "TOOLGATE_MEMORY_CAPACITY": str(setting.capacity),
        "TOOLGATE_MEMORY_IDLE_TURNS": str(setting.idle_turns),
        "TOOLGATE_MEMORY_TTL_S": "86400",
    }


async def replay_mode(
    ctx: Context, setting: str, mode: str, conversations: Sequence[Sequence[Turn]], concurrency: int
) -> list[Trace]:
    traces: list[Trace | None] = [None] * len(conversations)
    limiter = anyio.Semaphore(concurrency)

    async def one(k: int, turns: Sequence[Turn]) -> None:
        async with limiter:
            traces[k] = await replay_conversation(ctx, f"{setting}-{mode}-{k}", turns, mode)

    async with anyio.create_task_group() as group:
        for k, turns in enumerate(conversations):
            group.start_soon(one, k, turns)
    return [t for t in traces if t is not None]


async def run_setting(
    setting: Setting,
    conversations: Sequence[Sequence[Turn]],
    url: str,
    mapping: ToolMap,
    tokens: dict[str, int],
    listing: int,
    concurrency: int,
    limit: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with (
        httpx.AsyncClient(base_url=url, timeout=600) as http,
        Client(f"{url}/mcp", read_timeout_seconds=300) as client,
    ):
        ctx = Context(client, http, mapping, tokens, {}, limit)
        for mode in setting.modes:
            started = time.perf_counter()
            done = await replay_mode(ctx, setting.name, mode, conversations, concurrency)
            summary = summarise(done, listing)
            summary["errors"] = [e for t in done for e in t.errors][:10]
            summary["duration_s"] = round(time.perf_counter() - started, 1)
            out[mode] = summary
            print(
                f"  {setting.name:<12} {mode:<10} RR {summary['removal_ratio']}  "
                f"RR3T {summary['avg_removal_ratio_3t']}  set avg {summary['working_set_avg']} "
                f"peak {summary['working_set_peak']}  hit {summary['hit_rate']}  "
                f"tokens {summary['tool_tokens_per_turn']['working_set_avg']}  "
                f"({summary['duration_s']} s)",
                flush=True,
            )
    return out


def restart(
    procs: Processes,
    previous: Any,
    data_dir: Path,
    code: GatewayCode,
    setting: Setting,
    workdir: Path,
) -> tuple[Any, str]:
    if previous is not None:
        procs.stop(previous)
    return start_gateway(procs, data_dir, code, gateway_env(setting), workdir / f"gateway-{setting.name}.log")


# -- the whole run -----------------------------------------------------------------------------


def settings_for(args: argparse.Namespace) -> list[Setting]:
    main = args.conversations
    sweep = args.sweep_conversations
    auto_capacity = SMOKE_AUTONOMOUS_CAPACITY if args.smoke else AUTONOMOUS_CAPACITY
    out = [
        Setting(f"idle{IDLE_TURNS}", args.capacity, IDLE_TURNS, ("workflow", "hybrid"), main),
        Setting(f"autonomous{auto_capacity}", auto_capacity, IDLE_TURNS, ("autonomous",), main),
    ]
    for idle in IDLE_SWEEP[:1] if args.smoke else IDLE_SWEEP:
        if sweep > 0:  # --sweep-conversations 0 skips the idle-turns sweep
            out.append(Setting(f"idle{idle}", args.capacity, idle, ("workflow", "hybrid"), sweep))
    return out


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print()
    header = (
        f"{'setting':<14} {'mode':<10} {'conv':>4} {'RR':>6} {'RR3T':>6} {'avg':>6} {'peak':>5} "
        f"{'hit':>6} {'ret':>6} {'held':>6} {'memmiss':>7} {'tok/turn':>9} {'vs list':>8}"
    )
    print(header)
    for name, modes in results.items():
        for mode, s in modes.items():
            tok = s["tool_tokens_per_turn"]
            print(
                f"{name:<14} {mode:<10} {s['conversations']:>4} {s['removal_ratio'] or 0:>6.3f} "
                f"{s['avg_removal_ratio_3t'] or 0:>6.3f} {s['working_set_avg']:>6.1f} "
                f"{s['working_set_peak']:>5} {s['hit_rate'] or 0:>6.3f} {s['returned_rate'] or 0:>6.3f} "
                f"{s['held_before_find_rate'] or 0:>6.3f} {s['memory_misses']:>7} "
                f"{tok['working_set_avg']:>9.0f} {tok['working_set_avg_vs_listing'] or 0:>8.4f}"
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--conversations", type=int, default=None, help=f"per mode ({CONVERSATIONS})")
    parser.add_argument(
        "--sweep-conversations",
        type=int,
        default=None,
        help=f"per idle-turns setting ({SWEEP_CONVERSATIONS})",
    )
    parser.add_argument("--turns", type=int, default=None, help=f"turns per conversation ({TURNS})")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_SERVERS} servers, tiny conversations")
    parser.add_argument("--concurrency", type=int, default=2, help="conversations in flight at once (2)")
    parser.add_argument("--code", choices=("head", "worktree"), default="head")
    parser.add_argument("--find-limit", type=int, default=LIMIT, help=f"find_tools limit per turn ({LIMIT})")
    parser.add_argument(
        "--capacity",
        type=int,
        default=CAPACITY,
        help=f"working-set capacity of the workflow/hybrid setting ({CAPACITY})",
    )
    parser.add_argument("--json", type=Path, default=None, help="where to save (default: see above)")
    args = parser.parse_args(argv)
    if args.conversations is None:
        args.conversations = SMOKE_CONVERSATIONS if args.smoke else CONVERSATIONS
    if args.sweep_conversations is None:
        args.sweep_conversations = SMOKE_CONVERSATIONS if args.smoke else SWEEP_CONVERSATIONS
    turns = args.turns or (SMOKE_TURNS if args.smoke else TURNS)
    signal.signal(signal.SIGTERM, _on_sigterm)
    for name in ("REDIS_URL", "TOOLGATE_REDIS_URL"):  # working sets in process memory
        os.environ.pop(name, None)

    data = shared_data() / "toolbench"
    queries = list(load_queries(data / "queries.jsonl").queries)
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="toolgate-memory-replay-"))
    started = time.perf_counter()
    completed = False
    results: dict[str, dict[str, Any]] = {}
    setup: dict[str, float] = {}
    log_errors: dict[str, list[str]] = {}
    settings = settings_for(args)
    try:
        tools_path = data / "tools.jsonl"
        if args.smoke:
            tools_path, queries = smoke_subset(tools_path, queries, SMOKE_SERVERS, workdir / "tools.jsonl")
        code = gateway_code(args.code, workdir)
        entries = server_entries(tools_path)
        server_of = {f"{r['server']}/{r['name']}": str(r["server"]) for r in read_tool_rows(tools_path)}
        corpus_listing = listing_tokens(load_tools(tools_path).tools)
        conversations = build_conversations(queries, server_of, args.conversations, turns, SEED)
        print(
            f"{len(entries)} servers, {len(queries)} queries, {len(conversations)} conversations x {turns} turns; "
            f"gateway code: {code.source} {code.commit[:10]}; workdir {workdir}",
            flush=True,
        )
        data_dir = workdir / "gateway"
        data_dir.mkdir()
        with multihost(procs, tools_path, len(entries), workdir) as port:
            t0 = time.perf_counter()
            process, url = restart(procs, None, data_dir, code, settings[0], workdir)

            async def prepare() -> tuple[ToolMap, dict[str, int]]:
                async with httpx.AsyncClient(base_url=url, timeout=1800) as http:
                    await import_servers(http, port, entries)
                    return await map_tools(http, entries), (await definitions(http))[0]

            mapping, tokens = anyio.run(prepare)
            setup["import_and_index_s"] = round(time.perf_counter() - t0, 1)
            listing = sum(tokens.values())
            print(
                f"gateway ready with {mapping.catalog_tools} tools in {setup['import_and_index_s']} s; "
                f"listing every tool: {listing} tokens",
                flush=True,
            )
            for number, setting in enumerate(settings):
                if number:
                    t0 = time.perf_counter()
                    process, url = restart(procs, process, data_dir, code, setting, workdir)

                    async def ready(url: str = url) -> None:
                        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
                            await wait_index(http)

                    anyio.run(ready)
                    setup[f"restart_{setting.name}_s"] = round(time.perf_counter() - t0, 1)
                results[setting.name] = anyio.run(
                    run_setting,
                    setting,
                    conversations[: setting.conversations],
                    url,
                    mapping,
                    tokens,
                    listing,
                    max(1, args.concurrency),
                    args.find_limit,
                )
            procs.stop(process)
            for setting in settings:
                log_errors[f"gateway {setting.name}"] = error_lines(workdir / f"gateway-{setting.name}.log")
        log_errors["multihost"] = error_lines(workdir / "multihost.log")
        completed = True
    finally:
        procs.stop_all()
        if completed:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"logs kept in {workdir}", file=sys.stderr)
    duration = time.perf_counter() - started
    kinds = [t.kind for c in conversations for t in c]
    doc: dict[str, Any] = {
        "benchmark": "memory_replay",
        "command": "python -m bench.memory_replay" + "".join(" " + shlex.quote(a) for a in sys.argv[1:]),
        "what": "MemTool-style replay: 100-turn conversations of multi-tool ToolBench tasks (turn i needs "
        "tool i) with topic switches and interruptions, through the gateway's real find_tools, call_tool "
        "and forget_tools over MCP, per memory mode and idle-turns setting",
        "smoke": args.smoke,
        "gateway_code": {
            "source": code.source,
            "commit": code.commit,
            "checkout_files_differing_from_head": code.dirty,
        },
        "data": {
            "servers": len(entries),
            "catalog_tools": mapping.catalog_tools,
            "queries": len(queries),
            "conversations": len(conversations),
            "turns_per_conversation": turns,
            "task_turns": kinds.count("task"),
            "interruption_turns": kinds.count("interruption"),
            "tasks_started": sum(t.kind == "task" and t.step == 0 for c in conversations for t in c),
            "labelled_tools_unmapped": len(mapping.unmapped),
        },
        "settings": {
            "seed": SEED,
            "find_limit": args.find_limit,
            "interruption_probability": INTERRUPTION_P,
            "gateway_env": {s.name: gateway_env(s) for s in settings},
            "gateway_pythonhashseed": GATEWAY_HASH_SEED,
            "working_sets": "process memory (no REDIS_URL)",
            "conversations_per_setting": {s.name: s.conversations for s in settings},
            "concurrency": max(1, args.concurrency),
            "call_arguments": "required properties only: enum[0], strings 'x', numbers 1, booleans true",
            "autonomous_model": "on 'the working set is full', forget_tools with every least recently used "
            "tool the message lists (the gateway lists 10, or as many as must go), then find once more",
        },
        "definitions": {
            "turn_text": "the full text of the turn's ToolBench query on every turn of its task (the agent "
            "re-searches the request it is working through); no per-tool text is derived from labels",
            "added": "tools that joined the working set in the turn: the find's memory.added plus a tool "
            "call_tool added (read back from /admin/conversations)",
            "removed": "tools that left in the turn: the find's memory.removed (gateway pruning) plus "
            "forget_tools removals (the simulated model, autonomous mode)",
            "removal_ratio": "sum(removed) / sum(added) over every turn of every conversation",
            "avg_removal_ratio_3t": "for each window of 3 consecutive turns of a conversation (sliding, step "
            "1), sum(removed)/sum(added) in the window; averaged over the windows with sum(added) > 0",
            "working_set": "tools in the working set after the turn (read back from the admin API); avg over "
            "all turns, peak over all turns",
            "hit_rate": "turns whose needed tool was returned by the turn's find or is in the working set "
            "after the find, / turns",
            "hit_rate_first_turns": "hit rate over the first turn of each request (a task's step 0, or an "
            "interruption), where only that turn's find can hit; hit_rate_later_turns: task turns with step >= 1",
            "returned_rate": "turns whose needed tool was among the find's cards",
            "held_before_find_rate": "task turns after a task's first (step >= 2) whose needed tool was already in the working set before "
            "the turn's find (what a client listing the working set would see without searching)",
            "memory_misses": "turns missed although an earlier find of the conversation (any turn, any "
            "query) had returned the needed tool, so a set that kept it would have hit; retrieval_misses: the "
            "other misses (no find of the conversation ever returned the tool)",
            "tool_tokens": f"per turn, the sum over the working set of tool_definition_tokens(exposed name, "
            f"description, input schema as compact JSON) from retrieval.tokens ({tokenizer_name()}), with "
            "the definitions the gateway holds (admin API); listing_every_tool: the same sum over every "
            "catalog tool (ToolBench tools + one echo per server)",
        },
        "listing_tokens": {
            "catalog_every_tool": listing,
            "data_corpus_listing_tokens": corpus_listing,
            "data_corpus_note": "retrieval.tokens.listing_tokens over the ToolBench data tools (ToolBench "
            "ids as names, data schemas; no echo tools)",
            "tokenizer": tokenizer_name(),
        },
        "results": results,
        "targets": {
            "workflow_idle3": {
                "removal_ratio>=0.90": (results[f"idle{IDLE_TURNS}"]["workflow"]["removal_ratio"] or 0)
                >= 0.90,
                "hit_rate>=0.90": (results[f"idle{IDLE_TURNS}"]["workflow"]["hit_rate"] or 0) >= 0.90,
                "peak<=40": results[f"idle{IDLE_TURNS}"]["workflow"]["working_set_peak"] <= 40,
            }
        },
        "setup_s": setup,
        "log_errors": {k: v for k, v in log_errors.items() if v},
        "duration_s": round(duration, 1),
        "machine": machine(),
    }
    print_table(results)
    print(f"{duration:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        print(f"saved {args.json}")
    elif not args.smoke:
        print(f"saved {save('memory_replay', doc)}")


if __name__ == "__main__":
    try:
        with suppress(BrokenPipeError):
            main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: every started process is already stopped
        print("interrupted", file=sys.stderr)
        sys.exit(130)
