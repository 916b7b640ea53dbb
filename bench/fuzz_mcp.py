"""Fuzz the MCP endpoint with malformed frames; no frame may crash the gateway or get a 5xx
without a JSON-RPC error body.

    python -m bench.fuzz_mcp --frames 10000         # starts its own gateway, saves the report
    python -m bench.fuzz_mcp --url http://h:p --key tg_...   # against a running one

Frames (seeded, so a failure can be replayed): JSON-RPC with wrong types, huge and odd ids,
deep nesting, oversized bodies, invalid UTF-8, unknown methods, batches, missing or wrong
protocol headers, bogus sessions, foreign origins, hostile tool arguments, raw bytes. The
tests run a smoke mode of it (tests/test_fuzz_smoke.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

PROTOCOL = "2025-11-25"
MODERN = "2026-07-28"
_BASE_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class Frame:
    kind: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()  # base headers to leave out


@dataclass
class Report:
    frames: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    kind_statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)  # 5xx without a JSON-RPC error
    transport_errors: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "kinds": dict(sorted(self.kinds.items())),
            "statuses_by_kind": {
                kind: {str(st): n for (k, st), n in sorted(self.kind_statuses.items()) if k == kind}
                for kind in sorted(self.kinds)
            },
            "failures": len(self.failures),
            "failure_examples": self.failures[:20],
            "transport_errors": len(self.transport_errors),
            "transport_error_examples": self.transport_errors[:20],
            "seconds": round(self.seconds, 2),
        }


def _rpc(method: Any, params: Any = None, id_: Any = 1, **extra: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, **extra}
    if id_ is not _NO_ID:
        message["id"] = id_
    if params is not _NO_PARAMS:
        message["params"] = params
    return message


_NO_ID = object()
_NO_PARAMS = object()


def _odd_value(rng: random.Random) -> Any:
    return rng.choice(
        [
            None,
            True,
            -1,
            0,
            2**63,
            10**100,
            1e308,
            -0.0,
            "",
            "x" * rng.choice([1, 100, 10_000]),
            "\u0000\ud7ff\ufffd",
            [],
            [1, "a", None],
            {},
            {"__proto__": {"admin": True}},
            {"$ref": "#"},
        ]
    )


def _nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"a": value}
    return value


def _meta_call(rng: random.Random) -> dict[str, Any]:
    name = rng.choice(["find_tools", "call_tool", "forget_tools", "nope", "", "x" * 5000, "../../etc/passwd"])
    arguments = rng.choice(
        [
            {"query": _odd_value(rng)},
            {"query": "weather", "limit": _odd_value(rng)},
            {"query": "q" * 200_000},
            {"name": _odd_value(rng), "arguments": _odd_value(rng)},
            {"name": "time__get_current_time", "arguments": {"timezone": _odd_value(rng)}},
            {"names": [_odd_value(rng)] * rng.choice([1, 5000]), "conversation": _odd_value(rng)},
            {"query": "x", "conversation": "c" * 10_000},
            {"query": "x", "mode": _odd_value(rng), "server": _odd_value(rng), "read_only": "yes"},
            _odd_value(rng),
            _nested(rng.choice([50, 500])),
        ]
    )
    return _rpc("tools/call", {"name": name, "arguments": arguments}, rng.randrange(10**6))


def _modern(kind: str, message: dict[str, Any]) -> Frame:
    """A 2026-07-28 request that passes the transport's checks (protocol header, method and name
    headers, the `_meta` envelope), so the oddities inside reach the gateway's own handlers."""
    params = message.get("params")
    if isinstance(params, dict):
        params.setdefault("_meta", {}).update(
            {
                "io.modelcontextprotocol/protocolVersion": MODERN,
                "io.modelcontextprotocol/clientCapabilities": {},
            }
        )
    headers = {"MCP-Protocol-Version": MODERN}
    if _header_safe(message.get("method")):
        headers["Mcp-Method"] = message["method"]
    if isinstance(params, dict) and _header_safe(params.get("name")):
        headers["Mcp-Name"] = params["name"][:1000]
    return Frame(kind, json.dumps(message).encode(), headers)


def _header_safe(value: Any) -> bool:
    return isinstance(value, str) and value.isascii() and value.isprintable()


def _rewrap(frame: Frame, rng: random.Random, session: str | None) -> Frame:
    """Send half of the JSON-RPC frames as 2026-07-28 requests and a third inside a 2025-11-25
    session, so that their oddities get past the transport to the handlers behind it."""
    if (
        "MCP-Protocol-Version" in frame.headers
        or frame.kind in ("headers", "initialize")
        or len(frame.body) > 2**20
    ):
        return frame
    try:
        message = json.loads(frame.body)
    except (ValueError, RecursionError):
        return frame
    if not isinstance(message, dict) or "method" not in message:
        return frame
    roll = rng.random()
    if roll < 0.5:
        return _modern(frame.kind, message)
    if roll < 0.85 and session is not None:
        headers = {"Mcp-Session-Id": session, "MCP-Protocol-Version": PROTOCOL}
        return Frame(frame.kind, frame.body, headers, frame.drop)
    return frame


async def _legacy_session(client: httpx.AsyncClient, headers: dict[str, str]) -> str | None:
    """Open one 2025-11-25 session (initialize + initialized) for the session-bound frames."""
    init = _rpc(
        "initialize",
        {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "fuzz", "version": "1"}},
    )
    response = await client.post("/mcp/", json=init, headers={**_BASE_HEADERS, **headers})
    session = response.headers.get("mcp-session-id")
    if session is None:
        return None
    sent = {**_BASE_HEADERS, **headers, "Mcp-Session-Id": session, "MCP-Protocol-Version": PROTOCOL}
    await client.post("/mcp/", json=_rpc("notifications/initialized", {}, _NO_ID), headers=sent)
    return session


def _generators() -> dict[str, Callable[[random.Random], Frame]]:
    def encode(message: Any) -> bytes:
        return json.dumps(message).encode()

    return {
        "wrong-types": lambda r: Frame(
            "wrong-types",
            encode(_rpc(_odd_value(r) if r.random() < 0.5 else "tools/list", _odd_value(r), _odd_value(r))),
        ),
        "odd-ids": lambda r: Frame(
            "odd-ids",
            encode(_rpc("tools/list", {}, r.choice([10**100, -(2**70), 1.5, "", "i" * 10_000, [1], {}]))),
        ),
        "bad-jsonrpc": lambda r: Frame(
            "bad-jsonrpc",
            encode(
                r.choice(
                    [
                        {"jsonrpc": "1.0", "method": "tools/list", "id": 1},
                        {"method": "tools/list", "id": 1},
                        {"jsonrpc": "2.0", "id": 1},
                        {"jsonrpc": "2.0", "result": {}, "id": 1},
                        {"jsonrpc": "2.0", "error": {"code": "x"}, "id": 1},
                        _rpc("tools/list", _NO_PARAMS, _NO_ID),
                        [],
                        [_rpc("tools/list")] * r.choice([1, 2, 500]),
                        "string",
                        12,
                        None,
                    ]
                )
            ),
        ),
        "deep-nesting": lambda r: Frame(
            "deep-nesting",
            encode(
                _rpc("tools/call", {"name": "find_tools", "arguments": _nested(r.choice([100, 900])), "x": 1})
            )
            if r.random() < 0.5
            else b'{"jsonrpc":"2.0","id":1,"method":"tools/list","params":'
            + b'{"a":' * (n := r.choice([2_000, 20_000, 200_000]))
            + b"1"
            + b"}" * n
            + b"}",
        ),
        "oversized": lambda r: Frame(
            "oversized",
            encode(
                _rpc(
                    "tools/call",
                    {"name": "find_tools", "arguments": {"query": "q" * r.choice([2, 9, 30]) * 2**20}},
                )
            ),
        ),
        "invalid-utf8": lambda r: Frame(
            "invalid-utf8",
            b'{"jsonrpc":"2.0","id":1,"method":"tools/'
            + bytes(r.randrange(128, 256) for _ in range(8))
            + b'"}',
        ),
        "not-json": lambda r: Frame(
            "not-json",
            r.choice([b"", b"{", b"}{", b"null", b"\x00\x01\x02", b'{"jsonrpc":"2.0",', b"[" * 10_000])
            + bytes(r.randrange(256) for _ in range(r.randrange(64))),
        ),
        "unknown-method": lambda r: Frame(
            "unknown-method",
            encode(
                _rpc(
                    r.choice(
                        [
                            "tools/lis",
                            "rpc.discover",
                            "resources/read",
                            "prompts/get",
                            "x" * 1000,
                            "../..",
                            "ping",
                        ]
                    ),
                    {},
                    r.randrange(1000),
                )
            ),
        ),
        "headers": lambda r: Frame(
            "headers",
            encode(_rpc("tools/list", {})),
            r.choice(
                [
                    {"MCP-Protocol-Version": "1999-01-01"},
                    {"MCP-Protocol-Version": "x" * 500},
                    {"Mcp-Session-Id": "not-a-session"},
                    {"Mcp-Session-Id": "s" * 5000},
                    {"Origin": "http://evil.example"},
                    {"Content-Type": "text/plain"},
                    {"Accept": "text/html"},
                    {"Authorization": "Bearer " + "A" * 8000},
                    {"Authorization": "Basic Zm9vOmJhcg=="},
                    {"Authorization": "Bearer tg_" + "x" * 43},
                ]
            ),
            drop=r.choice([(), ("Accept",), ("Content-Type",), ("Accept", "Content-Type")]),
        ),
        "tool-arguments": lambda r: _modern("tool-arguments", _meta_call(r)),
        "tool-arguments-legacy": lambda r: Frame("tool-arguments-legacy", encode(_meta_call(r))),
        "wrong-types-modern": lambda r: _modern(
            "wrong-types-modern",
            _rpc(r.choice(["tools/list", "tools/call", "server/discover"]), _odd_value(r), _odd_value(r)),
        ),
        "initialize": lambda r: Frame(
            "initialize",
            encode(
                _rpc(
                    "initialize",
                    r.choice(
                        [
                            {},
                            {
                                "protocolVersion": _odd_value(r),
                                "capabilities": _odd_value(r),
                                "clientInfo": _odd_value(r),
                            },
                            {
                                "protocolVersion": PROTOCOL,
                                "capabilities": {},
                                "clientInfo": {"name": "f", "version": "1"},
                            },
                        ]
                    ),
                )
            ),
        ),
        "random-bytes": lambda r: Frame(
            "random-bytes", bytes(r.randrange(256) for _ in range(r.randrange(1, 4096)))
        ),
    }


def _is_jsonrpc_error(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict) and "code" in parsed["error"]


async def fuzz(
    base_url: str,
    *,
    frames: int,
    seed: int = 0,
    headers: dict[str, str] | None = None,
    concurrency: int = 8,
    progress: Callable[[int], None] | None = None,
) -> Report:
    """Send `frames` malformed frames to `<base_url>/mcp/` and judge every answer."""
    rng = random.Random(seed)
    generators = list(_generators().values())
    report = Report()
    started = time.perf_counter()
    queue: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize=concurrency * 2)
    auth = headers or {}

    async def worker(client: httpx.AsyncClient) -> None:
        while (frame := await queue.get()) is not None:
            sent = {k: v for k, v in {**_BASE_HEADERS, **auth}.items() if k not in frame.drop}
            sent.update(frame.headers)
            try:
                response = await client.post("/mcp/", content=frame.body, headers=sent)
                status, body = response.status_code, response.content
            except httpx.HTTPError as exc:
                report.transport_errors.append({"kind": frame.kind, "error": f"{type(exc).__name__}: {exc}"})
                continue
            finally:
                report.frames += 1
                report.kinds[frame.kind] += 1
                if progress is not None:
                    progress(report.frames)
            report.statuses[status] += 1
            report.kind_statuses[(frame.kind, status)] += 1
            if status >= 500 and not _is_jsonrpc_error(body):
                report.failures.append(
                    {
                        "kind": frame.kind,
                        "status": status,
                        "request": frame.body[:200].decode("latin-1"),
                        "response": body[:300].decode("latin-1"),
                    }
                )

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        session = await _legacy_session(client, auth)
        workers = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        for _ in range(frames):
            await queue.put(_rewrap(rng.choice(generators)(rng), rng, session))
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
    report.seconds = time.perf_counter() - started
    return report


def main() -> None:
    from bench.common import GatewayProcess, free_port, machine, save

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="fuzz a running gateway instead of starting one")
    parser.add_argument("--key", help="API key for --url")
    args = parser.parse_args()
    gateway = None
    if args.url is None:
        key = "tg_" + "f" * 43
        gateway = GatewayProcess(
            Path(tempfile.mkdtemp(prefix="toolgate-fuzz-")),
            free_port(),
            {"TOOLGATE_AUTH": "required", "TOOLGATE_ADMIN_KEY": key, "TOOLGATE_LOG_LEVEL": "ERROR"},
        )
        url, headers = gateway.url, {"Authorization": f"Bearer {key}"}
    else:
        url, headers = args.url, ({"Authorization": f"Bearer {args.key}"} if args.key else {})
    try:
        step = max(1, args.frames // 20)
        report = asyncio.run(
            fuzz(
                url,
                frames=args.frames,
                seed=args.seed,
                headers=headers,
                progress=lambda n: (
                    print(f"  {n}/{args.frames} frames", flush=True) if n % step == 0 else None
                ),
            )
        )
        alive = httpx.get(f"{url}/healthz", timeout=10).status_code == 200
    finally:
        if gateway is not None:
            gateway.stop()
    result = {"machine": machine(), "seed": args.seed, "gateway_alive_after": alive, **report.to_dict()}
    path = save("fuzz_mcp", result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
