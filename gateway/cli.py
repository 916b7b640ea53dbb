"""The `toolgate` command line."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio

from . import cli_eval, cli_keys, cli_ops
from .logs import configure_logging
from .settings import Settings, SettingsError, load_settings

# The collector's default first threshold (700 allocations) makes a sync of 1,000 servers
# spend ~5.4 of its ~21 s of CPU in collections, mostly walking the MCP client sessions and the
# catalog, which live for the whole process. 20,000 cut that to ~1 s (first sync 21 -> 16 s of
# CPU, unchanged re-sync 9.3 -> 7.8 s); garbage in reference cycles just waits a little longer.
_GC_THRESHOLDS = (20_000, 20, 10)


def _tune_gc() -> None:
    gc.set_threshold(*_GC_THRESHOLDS)


def _serve(settings: Settings) -> int:
    import uvicorn
    from sse_starlette.sse import AppStatus

    # sse-starlette ends every SSE response the moment uvicorn gets SIGTERM, which would lose
    # the result of a call in flight on a 2025-11-25 session; uvicorn's graceful timeout
    # (TOOLGATE_SHUTDOWN_DRAIN_S) bounds open streams instead.
    AppStatus.disable_automatic_graceful_drain()  # type: ignore[no-untyped-call]

    from .app import create_app

    _tune_gc()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        # uvicorn's own loggers go through our handler (JSON with the request id when asked).
        log_config=None,
        # In-flight requests get TOOLGATE_SHUTDOWN_DRAIN_S to finish: a long import or sync
        # must not hold a shutdown forever, and the registry's transactions are atomic, so
        # cutting them off loses nothing half-written.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_drain_s)),
    )
    return 0


def _stdio(settings: Settings) -> int:
    from mcp.server.stdio import stdio_server

    from .frontdoor import build_mcp_server
    from .runtime import gateway_runtime

    _tune_gc()

    async def main() -> None:
        async with gateway_runtime(settings) as service:
            server = build_mcp_server(
                service,
                default_limit=settings.find_limit_default,
                max_limit=settings.find_limit_max,
                listing=settings.tools_listing,
            )
            async with stdio_server() as (read, write):
                await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
    return 0


def _db_upgrade(settings: Settings) -> int:
    from migrations.runner import upgrade

    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)
    print(f"database is at the latest revision ({_redact(settings.resolved_database_url)})")
    return 0


def _redact(url: str) -> str:
    """Hide a password in a database URL before printing it."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _import(settings: Settings, path: Path) -> int:
    from registry.importer import ImportFileError, parse_import_text

    from .runtime import gateway_runtime

    try:
        specs = parse_import_text(path.read_bytes())
    except OSError as exc:
        print(f"toolgate import: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    except ImportFileError as exc:
        print(f"toolgate import: {path}: {exc}\nnothing was imported", file=sys.stderr)
        return 2

    async def main() -> dict[str, Any]:
        async with gateway_runtime(settings, sync_on_start=False, follow_registry=False) as service:
            outcome = await service.import_servers(specs)
            return {
                "created": outcome.result.created,
                "updated": outcome.result.updated,
                "unchanged": outcome.result.unchanged,
                "syncs": [_report(r) for r in outcome.reports],
            }

    print(json.dumps(anyio.run(main), indent=2))
    return 0


def _sync(settings: Settings, name: str | None) -> int:
    from .runtime import gateway_runtime

    async def main() -> list[dict[str, Any]]:
        async with gateway_runtime(settings, sync_on_start=False, follow_registry=False) as service:
            if name is None:
                return [_report(r) for r in await service.sync_all()]
            server = await service.registry.find_server(name)
            if server is None:
                raise SystemExit(f"toolgate sync: no server named {name!r}")
            return [_report(await service.sync_server(server.id))]

    reports = anyio.run(main)
    print(json.dumps(reports, indent=2))
    return 0 if all(r["ok"] for r in reports) else 1


def _search(settings: Settings, args: argparse.Namespace) -> int:
    from .catalog import SearchFilters
    from .runtime import gateway_runtime

    if not args.query.strip():
        print("toolgate search: the query is empty", file=sys.stderr)
        return 2
    filters = SearchFilters(server=args.server, category=args.category, read_only=args.read_only)

    async def main() -> list[dict[str, Any]]:
        quiet = settings.model_copy(update={"sync_interval_s": 0, "demo": False})
        async with gateway_runtime(quiet, sync_on_start=False, follow_registry=False) as service:
            hits = (await service.find_tools(args.query, args.limit, filters)).hits
            return [
                {
                    "rank": rank,
                    "name": hit.tool.exposed_name,
                    "server": hit.tool.server,
                    "score": round(hit.score, 5),
                    "stages": dict(hit.stages),
                    "why": hit.why,
                    "description": hit.tool.description,
                }
                for rank, hit in enumerate(hits, 1)
            ]

    rows = anyio.run(main)
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no tools match")
        return 0
    for row in rows:
        stages = "  ".join(f"{k}={v}" for k, v in row["stages"].items())
        print(f"{row['rank']:>2}. {row['name']}  score={row['score']}  [{stages}]")
        print(f"    {row['why']}")
        description = " ".join(row["description"].split())
        print(f"    {description[:160]}{'...' if len(description) > 160 else ''}")
    return 0


def _report(report: Any) -> dict[str, Any]:
    data = asdict(report)
    data["duration_s"] = round(data["duration_s"], 3)
    return data


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toolgate", description="MCP tool-retrieval gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve /mcp (streamable HTTP) and the admin API")
    serve.add_argument("--host", help="bind address (TOOLGATE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (TOOLGATE_PORT, default 8080)")
    serve.add_argument("--demo", action="store_true", help="register the demo servers on start")

    stdio = commands.add_parser("stdio", help="serve the MCP front door on stdin/stdout")
    stdio.add_argument("--demo", action="store_true", help="register the demo servers on start")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply migrations up to the latest revision")

    imp = commands.add_parser("import", help='import servers from an {"mcpServers": ...} file and sync them')
    imp.add_argument("file", type=Path)

    sync = commands.add_parser("sync", help="sync one server (by name) or all of them now")
    sync.add_argument("server", nargs="?")

    search = commands.add_parser(
        "search", help="rank the registered tools for a query, with the score breakdown"
    )
    search.add_argument("query")
    search.add_argument("--limit", type=int, default=10, choices=range(1, 201), metavar="N")
    search.add_argument("--server", help="only tools of this server")
    search.add_argument("--category", help="only tools of servers in this category")
    search.add_argument(
        "--read-only",
        dest="read_only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="only tools that declare readOnlyHint true (--no-read-only: false)",
    )
    search.add_argument("--json", action="store_true", help="print JSON")

    cli_eval.add_parser(commands)
    cli_keys.add_parser(commands)
    cli_ops.add_parser(commands)
    return parser


_REPORT_COMMANDS = ("search", "eval", "keys", "servers", "doctor")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None) is not None:
        overrides["port"] = args.port
    if getattr(args, "demo", False):
        overrides["demo"] = True
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"toolgate: {exc}", file=sys.stderr)
        return 2
    # Report commands print results; INFO lines (migrations, sync) would drown them.
    quiet = args.command in _REPORT_COMMANDS and "TOOLGATE_LOG_LEVEL" not in os.environ
    # stderr only: on `toolgate stdio`, stdout carries the MCP protocol.
    configure_logging("WARNING" if quiet else settings.log_level, settings.log_format)
    from .retrieval_setup import RetrievalSetupError, check_model

    try:
        if args.command in ("serve", "stdio", "import", "sync", "search"):
            check_model(settings)
        return _dispatch(args, settings)
    except SettingsError as exc:  # found only at start-up, e.g. an unreadable key file
        print(f"toolgate {args.command}: {exc}", file=sys.stderr)
        return 2
    except RetrievalSetupError as exc:
        print(f"toolgate {args.command}: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        return _serve(settings)
    if args.command == "stdio":
        return _stdio(settings)
    if args.command == "db":
        return _db_upgrade(settings)
    if args.command == "import":
        return _import(settings, args.file)
    if args.command == "search":
        return _search(settings, args)
    if args.command == "eval":
        return cli_eval.run(args, settings)
    if args.command == "keys":
        return cli_keys.run(args, settings)
    if args.command in cli_ops.COMMANDS:
        return cli_ops.run(args, settings)
    return _sync(settings, args.server)


if __name__ == "__main__":
    sys.exit(main())
