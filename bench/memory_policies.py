"""Working-set rules compared offline, on rankings the real gateway produced.

    python -m bench.memory_policies [--collect] [--rankings PATH] [--conversations 20]
                                    [--limits 10,12,15] [--capacity 40] [--idle 3]

``bench.memory_replay`` drives every turn through the gateway (minutes per setting). With
conversation learning off a query's ranking does not depend on the conversation, so the same
turns can be replayed in process: ``--collect`` asks a fresh gateway (the replay's catalog:
``bench.multihost`` serving the ToolBench tools, a ``git archive`` of HEAD) for each
ToolBench query's top 100 once and saves them; the replay then runs the gateway's own rule
functions (``gateway.conversations.fresh_first``, ``gateway.memory.policy.workflow_turn``,
``record_call``) turn by turn, as ``GatewayServices._find_tools`` and
``ConversationMemory.on_find``/``on_call`` do in workflow mode. Conversations are
``bench.memory_replay.build_conversations``'s (same seed).

Rules compared: which held tools a find counts as returned again, ``above_fresh`` (the
gateway's: every held match ranked above the last fresh card) or ``top_limit`` (the earlier
rule: only held matches in the plain top ``limit``). At find limit 15, capacity 40, 20
conversations, the offline replay gave hit 0.913 where the live replay (10 conversations)
measured 0.914; with the earlier rule at limit 10, 0.8815 against the live 0.882.
Saves bench/results/memory_policies.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx
from mcp import Client

from bench.common import machine, save, shared_data
from bench.memory_replay import SEED, TURNS, Turn, build_conversations
from bench.replay_support import (
    Processes,
    call,
    cards,
    gateway_code,
    import_servers,
    map_tools,
    multihost,
    read_tool_rows,
    server_entries,
    start_gateway,
)
from gateway.conversations import fresh_first
from gateway.memory.policy import PruneRules, record_call, workflow_turn
from gateway.memory.store import WorkingSet
from gateway.services import MAX_HELD_SKIPPED
from retrieval.corpus import Query, load_queries

Refresh = Literal["above_fresh", "top_limit"]
DEPTH = 100  # deeper than any find of the replay: limit + MAX_HELD_SKIPPED
DEFAULT_RANKINGS = Path(tempfile.gettempdir()) / "toolgate-memory-rankings.json"


@dataclass(frozen=True)
class Rankings:
    exposed: dict[str, str]  # ToolBench id -> exposed name
    ranked: dict[str, list[tuple[str, float]]]  # query id -> (exposed name, score), best first


def collect(queries: Sequence[Query], tools_path: Path) -> Rankings:
    """Each query's top DEPTH from a fresh gateway (no conversation, learning off)."""
    procs = Processes()
    workdir = Path(tempfile.mkdtemp(prefix="toolgate-memory-policies-"))
    entries = server_entries(tools_path)
    env = {"TOOLGATE_LEARN_FROM_CALLS": "false", "TOOLGATE_FIND_LIMIT_MAX": str(DEPTH)}
    try:
        with multihost(procs, tools_path, len(entries), workdir) as port:
            (workdir / "gateway").mkdir()
            code = gateway_code("head", workdir)
            _, url = start_gateway(procs, workdir / "gateway", code, env, workdir / "gateway.log")

            async def run() -> Rankings:
                async with httpx.AsyncClient(base_url=url, timeout=1800) as http:
                    await import_servers(http, port, entries)
                    mapping = await map_tools(http, entries)
                ranked: dict[str, list[tuple[str, float]]] = {}
                errors: list[str] = []
                async with Client(f"{url}/mcp", read_timeout_seconds=300) as client:
                    for query in queries:
                        result, _ = await call(
                            client, "find_tools", {"query": query.text, "limit": DEPTH}, errors
                        )
                        found = cards(result)
                        if found is None:
                            raise RuntimeError(f"find failed for {query.id}: {errors[-1:]}")
                        ranked[query.id] = [(str(c["name"]), float(c["score"])) for c in found]
                return Rankings(mapping.exposed, ranked)

            return anyio.run(run)
    finally:
        procs.stop_all()


def simulate(
    conversations: Sequence[Sequence[Turn]],
    rankings: Rankings,
    *,
    limit: int,
    capacity: int,
    idle_turns: int,
    refresh: Refresh,
) -> dict[str, Any]:
    """Workflow mode over the conversations: hit rate, removal ratio, peak, memory misses."""
    rules = PruneRules(idle_turns=idle_turns, capacity=capacity)
    turns = hits = added = removed = peak = memory_misses = firsts = first_hits = empty_finds = 0
    for conversation in conversations:
        working_set = WorkingSet()
        ever_returned: set[str] = set()
        for turn in conversation:
            needed = rankings.exposed.get(turn.needed)
            held = frozenset(working_set.tools)
            ranked = rankings.ranked[turn.query_id][: min(limit + len(held), limit + MAX_HELD_SKIPPED)]
            score = dict(ranked)
            fresh, matched = fresh_first([name for name, _ in ranked], held, limit)
            empty_finds += not fresh
            if not fresh and matched:  # the set holds every match: the best are shown again
                fresh, matched = matched[:limit], matched[limit:]
            if refresh == "top_limit":
                top = {name for name, _ in ranked[:limit]}
                matched = [name for name in matched if name in top]
            number = working_set.turn + 1
            step = workflow_turn(
                working_set,
                turn=number,
                now=float(number),
                hits={name: score[name] for name in fresh + matched},
                rules=rules,
            )
            working_set = step.working_set
            added += len(step.added)
            removed += len(step.removed)
            hit = needed in fresh or needed in working_set.tools
            memory_misses += not hit and needed in ever_returned
            ever_returned.update(fresh)
            turns += 1
            hits += hit
            if turn.step == 0:
                firsts += 1
                first_hits += hit
            if hit and needed is not None:  # the model calls it: on_call adds it, room allowing
                absent = needed not in working_set.tools
                if not (absent and len(working_set) >= capacity):
                    working_set = record_call(working_set, needed, now=float(number))
                    added += absent
            peak = max(peak, len(working_set))
    return {
        "turns": turns,
        "hit_rate": round(hits / turns, 4) if turns else None,
        "hit_rate_first_turns": round(first_hits / firsts, 4) if firsts else None,
        "removal_ratio": round(removed / added, 4) if added else None,
        "working_set_peak": peak,
        "memory_misses": memory_misses,
        "misses": turns - hits,
        "finds_with_no_fresh_card": empty_finds,
    }


def _load(path: Path) -> Rankings:
    raw = json.loads(path.read_text())
    ranked = {qid: [(str(n), float(s)) for n, s in rows] for qid, rows in raw["ranked"].items()}
    return Rankings(dict(raw["exposed"]), ranked)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--collect", action="store_true", help="rank every query through a fresh gateway first"
    )
    parser.add_argument("--rankings", type=Path, default=DEFAULT_RANKINGS, help=f"({DEFAULT_RANKINGS})")
    parser.add_argument("--conversations", type=int, default=20)
    parser.add_argument("--limits", default="10,12,15", help="find limits, comma-separated")
    parser.add_argument("--capacity", type=int, default=40)
    parser.add_argument("--idle", type=int, default=3, help="idle turns")
    args = parser.parse_args(argv)

    data = shared_data() / "toolbench"
    tools_path = data / "tools.jsonl"
    queries = list(load_queries(data / "queries.jsonl").queries)
    if args.collect or not args.rankings.exists():
        started = time.perf_counter()
        rankings = collect(queries, tools_path)
        payload = {"exposed": rankings.exposed, "ranked": rankings.ranked}
        args.rankings.write_text(json.dumps(payload))
        print(f"ranked {len(rankings.ranked)} queries in {time.perf_counter() - started:.0f} s", flush=True)
    else:
        rankings = _load(args.rankings)
    server_of = {f"{r['server']}/{r['name']}": str(r["server"]) for r in read_tool_rows(tools_path)}
    conversations = build_conversations(queries, server_of, args.conversations, TURNS, SEED)
    rows: list[dict[str, Any]] = []
    for limit in (int(x) for x in args.limits.split(",")):
        for refresh in ("above_fresh", "top_limit"):
            found = simulate(
                conversations,
                rankings,
                limit=limit,
                capacity=args.capacity,
                idle_turns=args.idle,
                refresh=refresh,
            )
            rows.append({"limit": limit, "refresh": refresh, **found})
            print(
                f"limit {limit:>3} {refresh:<12} hit {found['hit_rate']} (first {found['hit_rate_first_turns']})  "
                f"RR {found['removal_ratio']}  peak {found['working_set_peak']}  "
                f"memory misses {found['memory_misses']}",
                flush=True,
            )
    result: Mapping[str, Any] = {
        "benchmark": "memory_policies",
        "command": "python -m bench.memory_policies " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {"conversations": args.conversations, "capacity": args.capacity, "idle_turns": args.idle},
        "rows": rows,
        "machine": machine(),
    }
    print(f"saved {save('memory_policies', dict(result))}")


if __name__ == "__main__":
    main()
