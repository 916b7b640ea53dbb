"""API keys: generation, hashing and their repository.

A key is ``tg_`` + 32 random bytes (urlsafe base64). Only its SHA-256 hash is stored, with a
short display prefix: keys this random need no slow KDF, since no dictionary attack applies.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import anyio
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .errors import NotFoundError
from .models import ApiKey, utcnow
from .naming import EXPOSED_NAME_RE, SERVER_NAME_RE

KEY_PREFIX = "tg_"
DISPLAY_CHARS = 10  # "tg_" + 7 characters: enough to tell keys apart, useless to guess one
KeyRole = Literal["admin", "client"]
KEY_ROLES: tuple[KeyRole, ...] = ("admin", "client")
_SHIELD_S = 30.0
_KEY_RE = re.compile(r"^tg_[A-Za-z0-9_-]{43}$")


class InvalidKeyError(ValueError):
    """A key's name, role or scope is not acceptable."""


def generate_key() -> str:
    """A new plaintext API key."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def looks_like_key(token: str) -> bool:
    """Whether ``token`` has the shape of a key this gateway issues (cheap check before a lookup)."""
    return _KEY_RE.match(token) is not None


def hash_key(plaintext: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def display_prefix(plaintext: str) -> str:
    """The part of a key that may be shown and logged."""
    return plaintext[:DISPLAY_CHARS]


@dataclass(frozen=True, slots=True)
class KeyScope:
    """Servers and exposed tool names a key may reach (either grants a tool)."""

    servers: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()

    def as_json(self) -> dict[str, list[str]]:
        return {"servers": list(self.servers), "tools": list(self.tools)}


def make_scope(servers: Sequence[str] | None, tools: Sequence[str] | None) -> KeyScope | None:
    """A validated scope, or None (every tool) when neither list is given."""
    if servers is None and tools is None:
        return None
    servers, tools = sorted(set(servers or ())), sorted(set(tools or ()))
    if not servers and not tools:
        raise InvalidKeyError("a scope needs at least one server or tool (omit both for every tool)")
    bad = [s for s in servers if not SERVER_NAME_RE.match(s)] + [
        t for t in tools if not EXPOSED_NAME_RE.match(t)
    ]
    if bad:
        raise InvalidKeyError(f"not a server or tool name: {bad}")
    return KeyScope(tuple(servers), tuple(tools))


def scope_of(key: ApiKey) -> KeyScope | None:
    """The stored scope of a key."""
    if key.scope is None:
        return None
    return KeyScope(tuple(key.scope.get("servers", ())), tuple(key.scope.get("tools", ())))


def is_active(key: ApiKey, now: datetime | None = None) -> bool:
    """Neither revoked nor expired."""
    now = now or utcnow()
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


class KeyStore:
    """The ``api_keys`` table. Each method is one short transaction."""

    def __init__(self, sessions: Callable[[], AsyncSession], *, write_lock: anyio.Lock | None = None) -> None:
        """``write_lock``: the registry's SQLite writer queue, so key writes never interleave
        with a registry transaction (SQLite fails such a transaction rather than waiting)."""
        self._sessions = sessions
        self._write_lock = write_lock

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncSession]:
        # Not cancelled midway (as the registry does): an abandoned driver call can hang the
        # connection's close; the deadline bounds a dead database.
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _SHIELD_S):
            async with self._sessions() as session:
                yield session

    @asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncSession]:
        lock: AbstractAsyncContextManager[object] = self._write_lock or nullcontext()
        with anyio.CancelScope(shield=True, deadline=anyio.current_time() + _SHIELD_S):
            async with lock, self._sessions() as session, session.begin():
                yield session

    async def create(
        self,
        name: str,
        role: str,
        scope: KeyScope | None = None,
        expires_at: datetime | None = None,
    ) -> tuple[ApiKey, str]:
        """Store a new key; returns its row and the plaintext, which is not kept anywhere."""
        name = name.strip()
        if not 1 <= len(name) <= 128:
            raise InvalidKeyError("a key name must be 1-128 characters")
        if role not in KEY_ROLES:
            raise InvalidKeyError(f"role must be one of {list(KEY_ROLES)}")
        if expires_at is not None and expires_at <= utcnow():
            raise InvalidKeyError("expires_at must be in the future")
        plaintext = generate_key()
        row = ApiKey(
            name=name,
            role=role,
            key_hash=hash_key(plaintext),
            prefix=display_prefix(plaintext),
            scope=scope.as_json() if scope is not None else None,
            expires_at=expires_at,
        )
        async with self._writing() as session:
            session.add(row)
        return row, plaintext

    async def list_keys(self) -> list[ApiKey]:
        """Every key, oldest first (revoked and expired ones too)."""
        async with self._reading() as session:
            return list((await session.scalars(select(ApiKey).order_by(ApiKey.id))).all())

    async def get(self, key_id: int) -> ApiKey:
        async with self._reading() as session:
            row = await session.get(ApiKey, key_id)
        if row is None:
            raise NotFoundError(f"no API key with id {key_id}")
        return row

    async def revoke(self, key_id: int) -> ApiKey:
        """Mark a key revoked (idempotent: the first revocation time is kept)."""
        async with self._writing() as session:
            row = await session.get(ApiKey, key_id)
            if row is None:
                raise NotFoundError(f"no API key with id {key_id}")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
        return row

    async def find(self, plaintext: str) -> ApiKey | None:
        """The key row for a presented key (active or not), by hash."""
        async with self._reading() as session:
            found = await session.scalars(select(ApiKey).where(ApiKey.key_hash == hash_key(plaintext)))
            return found.first()

    async def touch(self, key_id: int, when: datetime | None = None) -> bool:
        """Record a use (callers rate-limit this: it is a write). Bookkeeping only, so it is
        skipped (False) rather than queued behind a registry write on SQLite."""
        if self._write_lock is not None and self._write_lock.locked():
            return False
        async with self._writing() as session:
            await session.execute(
                update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when or utcnow())
            )
        return True
