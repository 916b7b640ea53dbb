"""`toolgate keys create|list|revoke`: API keys, straight on the registry database.

No running gateway is needed; migrations are applied first, as `toolgate db upgrade` does.
A revoked key is refused by running gateways within their key cache's few seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import anyio

from registry.db import create_engine, create_sessionmaker
from registry.errors import NotFoundError
from registry.keys import KEY_ROLES, InvalidKeyError, KeyStore, make_scope
from registry.models import utcnow

from .admin_keys import key_out
from .settings import Settings

T = TypeVar("T")


def add_parser(commands: Any) -> None:
    """Register `keys` and its subcommands on the top-level parser."""
    keys = commands.add_parser("keys", help="manage API keys (create, list, revoke)")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key and print it (shown only once)")
    create.add_argument("--name", required=True, help="what the key is for")
    create.add_argument("--role", choices=KEY_ROLES, default="client", help="client: /mcp only (default)")
    create.add_argument(
        "--server", action="append", dest="servers", metavar="S", help="scope: this server's tools"
    )
    create.add_argument("--tool", action="append", dest="tools", metavar="T", help="scope: this exposed tool")
    create.add_argument("--expires-in-days", type=float, metavar="D", help="default: never expires")
    create.add_argument("--json", action="store_true", help="print the key and its record as JSON")
    listing = actions.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--json", action="store_true", help="print JSON")
    revoke = actions.add_parser("revoke", help="revoke a key by id")
    revoke.add_argument("id", type=int)
    actions.add_parser(
        "gen-credentials-key",
        help="print a new Fernet key for TOOLGATE_CREDENTIALS_KEY (upstream credentials at rest)",
    )


def _with_keys(settings: Settings, work: Callable[[KeyStore], Awaitable[T]]) -> T:
    from migrations.runner import upgrade

    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)

    async def main() -> T:
        engine = create_engine(settings.resolved_database_url)
        try:
            return await work(KeyStore(create_sessionmaker(engine)))
        finally:
            await engine.dispose()

    return anyio.run(main)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run one `toolgate keys` subcommand; returns the exit status."""
    if args.keys_command == "gen-credentials-key":
        from registry.secrets import new_key

        print(new_key())  # nothing else on stdout: KEY=$(toolgate keys gen-credentials-key)
        return 0
    try:
        if args.keys_command == "create":
            return _create(args, settings)
        if args.keys_command == "list":
            return _list(args, settings)
        return _revoke(args, settings)
    except (InvalidKeyError, NotFoundError) as exc:
        print(f"toolgate keys {args.keys_command}: {exc}", file=sys.stderr)
        return 2


def _create(args: argparse.Namespace, settings: Settings) -> int:
    days = args.expires_in_days
    if days is not None and not 0 < days <= 36_500:
        raise InvalidKeyError("--expires-in-days must be more than 0 and at most 36500")
    scope = make_scope(args.servers, args.tools)
    expires = utcnow() + timedelta(days=days) if days is not None else None
    row, plaintext = _with_keys(settings, lambda keys: keys.create(args.name, args.role, scope, expires))
    record = key_out(row)
    if args.json:
        print(json.dumps({**record.model_dump(mode="json"), "key": plaintext}, indent=2))
        return 0
    where = "every tool" if record.scope is None else json.dumps(record.scope.model_dump())
    until = f", expires {record.expires_at:%Y-%m-%d %H:%M} UTC" if record.expires_at else ""
    print(f"created key {record.id} {record.name!r} ({record.role}, {where}{until})", file=sys.stderr)
    print("store it now: it is not shown again", file=sys.stderr)
    print(plaintext)  # alone on stdout, so `KEY=$(toolgate keys create ...)` works
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    rows = [key_out(row) for row in _with_keys(settings, lambda keys: keys.list_keys())]
    if args.json:
        print(json.dumps([row.model_dump(mode="json") for row in rows], indent=2))
        return 0
    if not rows:
        print("no API keys")
        return 0
    for row in rows:
        state = "active" if row.active else "revoked" if row.revoked_at else "expired"
        scope = "all tools" if row.scope is None else f"servers={row.scope.servers} tools={row.scope.tools}"
        used = f"{row.last_used_at:%Y-%m-%d %H:%M}" if row.last_used_at else "never"
        print(
            f"{row.id:>4}  {row.prefix}…  {row.role:<6}  {state:<7}  {row.name}  ({scope}; last used {used})"
        )
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    row = _with_keys(settings, lambda keys: keys.revoke(args.id))
    print(f"revoked key {row.id} {row.name!r} ({row.prefix}…)")
    return 0
