"""Operations commands: `toolgate servers list` and `toolgate doctor`.

Both read the backends directly, without starting the gateway (no model load, no upstreams),
so they answer in about a second and work while the gateway itself is down.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import anyio

from .settings import Settings

COMMANDS = ("servers", "doctor")
Status = Literal["ok", "warn", "fail"]
_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str | None = None


def add_parser(commands: Any) -> None:
    servers = commands.add_parser("servers", help="registered upstream servers")
    server_commands = servers.add_subparsers(dest="servers_command", required=True)
    listing = server_commands.add_parser("list", help="list servers with status, tool count and last sync")
    listing.add_argument("--json", action="store_true", help="print JSON")

    doctor = commands.add_parser(
        "doctor", help="check every backend and the configuration; say what is wrong and how to fix it"
    )
    doctor.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "servers":
        return _servers_list(settings, as_json=args.json)
    return _doctor(settings, as_json=args.json)


# -- servers list --------------------------------------------------------------------------------


def _servers_list(settings: Settings, *, as_json: bool) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        rows = anyio.run(_server_rows, settings)
    except (SQLAlchemyError, OSError) as exc:
        print(
            f"toolgate servers list: cannot read the registry: {_one_line(exc)}\n"
            "run `toolgate doctor` to see what is wrong",
            file=sys.stderr,
        )
        return 2
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no servers registered (POST /admin/servers or `toolgate import FILE`)")
        return 0
    header = ("name", "transport", "enabled", "status", "tools", "last sync", "last error")
    table = [header] + [
        (
            r["name"],
            r["transport"],
            "yes" if r["enabled"] else "no",
            r["status"],
            str(r["tools"]),
            r["last_sync_at"] or "never",
            (r["last_error"] or "")[:60],
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())
    return 0


async def _server_rows(settings: Settings) -> list[dict[str, Any]]:
    from registry.db import create_engine, create_sessionmaker
    from registry.repository import Registry

    engine = create_engine(settings.resolved_database_url)
    try:
        registry = Registry(create_sessionmaker(engine))
        counts = await registry.tool_counts()
        return [
            {
                "id": server.id,
                "name": server.name,
                "transport": server.transport,
                "enabled": server.enabled,
                "status": server.status,
                "tools": counts.get(server.id, 0),
                "last_sync_at": server.last_sync_at.isoformat(timespec="seconds")
                if server.last_sync_at
                else None,
                "last_error": server.last_error,
            }
            for server in await registry.list_servers()
        ]
    finally:
        await engine.dispose()


# -- doctor --------------------------------------------------------------------------------------


def _doctor(settings: Settings, *, as_json: bool) -> int:
    checks = anyio.run(run_checks, settings)
    if as_json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for check in checks:
            print(f"{check.status.upper():<5} {check.name:<12} {check.detail}")
            if check.fix:
                print(f"{'':<5} {'':<12} fix: {check.fix}")
        failed = sum(c.status == "fail" for c in checks)
        warned = sum(c.status == "warn" for c in checks)
        print(f"\n{len(checks)} checks: {failed} failed, {warned} warnings")
    return 1 if any(c.status == "fail" for c in checks) else 0


async def run_checks(settings: Settings) -> list[Check]:
    """Every check, each bounded in time; one failing never hides the others."""
    checks: list[Check] = []
    probes: list[Callable[[Settings], Awaitable[list[Check]]]] = [
        _check_database,
        _check_redis,
        _check_index,
        _check_model,
        _check_auth,
        _check_credentials,
    ]
    for probe in probes:
        try:
            with anyio.fail_after(_TIMEOUT_S * 2):
                checks.extend(await probe(settings))
        except TimeoutError:
            checks.append(Check(probe.__name__.removeprefix("_check_"), "fail", "no answer in time"))
    return checks


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a SQLAlchemy URL (redis://, http://): hide any userinfo
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}" if "@" in rest else url


async def _check_database(settings: Settings) -> list[Check]:
    from sqlalchemy import text

    from migrations.runner import current_head
    from registry.db import create_engine

    url = settings.resolved_database_url
    where = _redacted(url)
    head = current_head()
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            try:
                found = await connection.execute(text("SELECT version_num FROM alembic_version"))
                revision = found.scalar()
            except Exception:  # no alembic_version table: never migrated
                revision = None
            checks = [_revision_check(where, revision, head)]
            if revision is not None:
                checks.extend(await _server_checks(connection))
            return checks
    except Exception as exc:  # drivers raise their own connection errors
        fix = (
            "check DATABASE_URL and that PostgreSQL is running and reachable"
            if settings.database_url
            else f"check that {settings.data_dir} is writable"
        )
        return [Check("database", "fail", f"cannot connect to {where}: {_one_line(exc)}", fix)]
    finally:
        await engine.dispose()


def _revision_check(where: str, revision: str | None, head: str | None) -> Check:
    if revision == head:
        return Check("database", "ok", f"{where} at revision {revision} (latest)")
    if revision is None:
        return Check(
            "database",
            "warn",
            f"{where} has no schema yet",
            "the gateway migrates on start, or run `toolgate db upgrade`",
        )
    return Check(
        "database",
        "warn",
        f"{where} at revision {revision}, latest is {head}",
        "run `toolgate db upgrade` (the gateway also migrates on start unless TOOLGATE_MIGRATE_ON_START=false)",
    )


async def _server_checks(connection: Any) -> list[Check]:
    """Registered servers that cannot work: failed last sync, stdio commands not installed."""
    from sqlalchemy import text

    rows = (
        await connection.execute(
            text("SELECT name, transport, command, enabled, status, last_error FROM servers")
        )
    ).all()
    enabled = [row for row in rows if row.enabled]
    checks = [Check("servers", "ok", f"{len(rows)} registered, {len(enabled)} enabled")]
    for row in enabled:
        if row.transport == "stdio" and row.command and shutil.which(row.command) is None:
            checks.append(
                Check(
                    f"server {row.name}",
                    "warn",
                    f"command {row.command!r} is not on PATH",
                    "install it, or PATCH /admin/servers/{id} with the full path",
                )
            )
        elif row.status == "error":
            checks.append(
                Check(
                    f"server {row.name}",
                    "warn",
                    f"last sync failed: {(row.last_error or '')[:200]}",
                    "fix the upstream, then `toolgate sync " + row.name + "`",
                )
            )
    return checks


async def _check_redis(settings: Settings) -> list[Check]:
    if not settings.redis_url:
        return [Check("redis", "ok", "not configured: working sets live in this process (one replica only)")]
    import redis.asyncio as redis

    where = _redacted(settings.redis_url)
    client = redis.Redis.from_url(
        settings.redis_url, socket_timeout=_TIMEOUT_S, socket_connect_timeout=_TIMEOUT_S
    )
    try:
        await client.ping()
        return [Check("redis", "ok", f"{where} answers PING")]
    except Exception as exc:  # connection, auth and protocol errors alike
        return [
            Check(
                "redis",
                "fail",
                f"{where}: {_one_line(exc)}",
                "check REDIS_URL and that Redis is running; unset it to keep working sets in process",
            )
        ]
    finally:
        await client.aclose()


async def _check_index(settings: Settings) -> list[Check]:
    if settings.qdrant_url:
        import httpx

        headers = {"api-key": settings.qdrant_api_key} if settings.qdrant_api_key else {}
        url = settings.qdrant_url.rstrip("/")
        try:
            async with httpx.AsyncClient(timeout=_TIMEOUT_S, headers=headers) as http:
                response = await http.get(f"{url}/collections/{settings.qdrant_collection}")
        except httpx.HTTPError as exc:
            return [Check("qdrant", "fail", f"cannot reach {url}: {_one_line(exc)}", "check QDRANT_URL")]
        if response.status_code == 404:
            return [
                Check(
                    "qdrant",
                    "ok",
                    f"{url} answers; collection {settings.qdrant_collection!r} is created on start",
                )
            ]
        if response.status_code in (401, 403):
            return [
                Check(
                    "qdrant",
                    "fail",
                    f"{url} refused the API key ({response.status_code})",
                    "check QDRANT_API_KEY",
                )
            ]
        if response.status_code != 200:
            return [
                Check(
                    "qdrant",
                    "fail",
                    f"{url} answered {response.status_code}",
                    "check the Qdrant server's logs",
                )
            ]
        points = response.json().get("result", {}).get("points_count")
        return [
            Check("qdrant", "ok", f"{url}, collection {settings.qdrant_collection!r} holds {points} points")
        ]
    from .retrieval_setup import index_path

    path = index_path(settings)
    parent = path if path.exists() else settings.data_dir
    probe = parent if parent.exists() else parent.parent
    if not probe.exists() or not _writable(probe):
        return [
            Check(
                "index", "fail", f"{probe} is not writable", "set TOOLGATE_DATA_DIR to a writable directory"
            )
        ]
    state = "exists" if path.exists() else "is built on first start"
    return [Check("index", "ok", f"embedded index at {path} {state}")]


def _writable(path: Any) -> bool:
    import os

    return os.access(path, os.W_OK)


async def _check_model(settings: Settings) -> list[Check]:
    from retrieval.embedder import EmbedderError, resolve_model_path

    try:
        path = resolve_model_path(settings.embedding_model)
    except EmbedderError as exc:
        return [Check("model", "fail", str(exc), "set TOOLGATE_EMBEDDING_MODEL to a local model directory")]
    return [Check("model", "ok", f"{settings.embedding_model} at {path}")]


async def _check_auth(settings: Settings) -> list[Check]:
    if settings.auth == "off":
        return [Check("auth", "warn", "auth is off: anyone who can reach the port is admin (loopback only)")]
    ways = []
    if settings.admin_key is not None:
        ways.append("TOOLGATE_ADMIN_KEY")
    if settings.jwt_secret is not None or settings.jwt_jwks_url:
        ways.append("JWT")
        if not settings.jwt_audience:
            return [
                Check(
                    "auth",
                    "warn",
                    "JWTs are accepted without an audience check",
                    "set TOOLGATE_JWT_AUDIENCE so tokens minted for other services are refused",
                )
            ]
    keys = await _active_keys(settings)
    if keys:
        ways.append(f"{keys} API key{'s' if keys != 1 else ''}")
    if not ways:
        return [
            Check(
                "auth",
                "fail",
                "auth is required but no credential can pass: no admin key, no JWT settings, no API keys",
                "`toolgate keys create --name admin --role admin`, or set TOOLGATE_ADMIN_KEY",
            )
        ]
    return [Check("auth", "ok", "required; accepted: " + ", ".join(ways))]


async def _active_keys(settings: Settings) -> int:
    from sqlalchemy import text

    from registry.db import create_engine

    engine = create_engine(settings.resolved_database_url)
    try:
        async with engine.connect() as connection:
            found = await connection.execute(text("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"))
            return int(found.scalar() or 0)
    except Exception:  # no database or no keys table yet: the database check says which
        return 0
    finally:
        await engine.dispose()


async def _check_credentials(settings: Settings) -> list[Check]:
    if settings.credentials_key is not None:
        return [Check("credentials", "ok", "upstream credentials encrypted with TOOLGATE_CREDENTIALS_KEY")]
    if settings.database_url:
        return [
            Check(
                "credentials",
                "warn",
                "no TOOLGATE_CREDENTIALS_KEY: the key file in the data dir encrypts upstream credentials, "
                "and replicas sharing this database cannot read each other's",
                "set TOOLGATE_CREDENTIALS_KEY to one Fernet key on every replica",
            )
        ]
    return [
        Check("credentials", "ok", f"upstream credentials encrypted with the key file in {settings.data_dir}")
    ]
