"""Admin REST API for API keys: create (the plaintext key is returned once), list, get, revoke.

No response after creation carries the key or its hash; only its display prefix.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from registry.keys import InvalidKeyError, KeyStore, is_active, make_scope, scope_of
from registry.models import ApiKey, utcnow

from .admin_params import RowId

router = APIRouter(prefix="/admin/keys", tags=["keys"])


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=128, description="What the key is for.")
    role: Literal["admin", "client"] = Field("client", description="client: /mcp only; admin: everything.")
    servers: list[str] | None = Field(None, description="Scope: the tools of these servers (with `tools`).")
    tools: list[str] | None = Field(None, description="Scope: these exposed tool names (with `servers`).")
    expires_in_days: float | None = Field(None, gt=0, le=36_500, description="Unset: never expires.")


class KeyScopeOut(BaseModel):
    servers: list[str]
    tools: list[str]


class KeyOut(BaseModel):
    id: int
    name: str
    role: str
    prefix: str = Field(description="The first characters of the key, to tell keys apart.")
    scope: KeyScopeOut | None = Field(description="null: every tool.")
    active: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="The API key. Shown only in this response: store it now.")


def key_out(row: ApiKey) -> KeyOut:
    """The public view of a key row (no secret, no hash)."""
    scope = scope_of(row)
    return KeyOut(
        id=row.id,
        name=row.name,
        role=row.role,
        prefix=row.prefix,
        scope=None if scope is None else KeyScopeOut(servers=list(scope.servers), tools=list(scope.tools)),
        active=is_active(row),
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        last_used_at=row.last_used_at,
    )


def _keys(request: Request) -> KeyStore:
    keys: KeyStore = request.app.state.api_keys
    return keys


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
async def create_key(body: KeyCreate, request: Request) -> KeyCreated | JSONResponse:
    """Create a key. The response holds the plaintext key; it is not stored and never shown again."""
    expires = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days is not None else None
    try:
        scope = make_scope(body.servers, body.tools)
        row, plaintext = await _keys(request).create(body.name, body.role, scope, expires)
    except InvalidKeyError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=422)
    return KeyCreated(**key_out(row).model_dump(), key=plaintext)


@router.get("", response_model=list[KeyOut])
async def list_keys(request: Request) -> list[KeyOut]:
    """Every key, revoked and expired ones too (see `active`)."""
    return [key_out(row) for row in await _keys(request).list_keys()]


@router.get("/{key_id}", response_model=KeyOut)
async def get_key(key_id: RowId, request: Request) -> KeyOut:
    return key_out(await _keys(request).get(key_id))


@router.delete("/{key_id}", response_model=KeyOut)
async def revoke_key(key_id: RowId, request: Request) -> KeyOut:
    """Revoke a key: refused at once on this replica, and on others within the key cache's few
    seconds. Revoking twice keeps the first time."""
    row = await _keys(request).revoke(key_id)
    authenticator = getattr(request.app.state, "authenticator", None)
    if authenticator is not None:
        authenticator.forget_keys()
    return key_out(row)
