"""SQLAlchemy models of the registry: upstream servers and the tools they expose."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")
# The same, with Python None stored as SQL NULL (not JSON null), so `IS NULL` filters work.
NullableJSON = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset on storage)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: use an aware UTC datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Transport(enum.StrEnum):
    STDIO = "stdio"
    HTTP = "http"  # streamable HTTP
    SSE = "sse"  # legacy HTTP+SSE


class ServerStatus(enum.StrEnum):
    NEW = "new"  # registered, never synced
    OK = "ok"  # last sync succeeded
    ERROR = "error"  # last sync failed; last_error says why


class Server(Base):
    __tablename__ = "servers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    category: Mapped[str | None] = mapped_column(String(64), default=None)
    transport: Mapped[str] = mapped_column(String(16))
    command: Mapped[str | None] = mapped_column(Text, default=None)
    args: Mapped[list[str]] = mapped_column(JSONType, default=list)
    env: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    cwd: Mapped[str | None] = mapped_column(Text, default=None)
    url: Mapped[str | None] = mapped_column(Text, default=None)
    headers: Mapped[dict[str, str]] = mapped_column(JSONType, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    status: Mapped[str] = mapped_column(String(16), default=ServerStatus.NEW.value)
    last_sync_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    tools: Mapped[list[Tool]] = relationship(
        back_populates="server", cascade="all, delete-orphan", passive_deletes=True
    )


class Tool(Base):
    __tablename__ = "tools"
    __table_args__ = (
        UniqueConstraint("server_id", "name", name="uq_tools_server_name"),
        Index("ix_tools_server_id", "server_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    server_id: Mapped[int] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(256))  # the upstream's own name
    exposed_name: Mapped[str] = mapped_column(String(64), unique=True)  # what clients see
    title: Mapped[str | None] = mapped_column(Text, default=None)
    description: Mapped[str] = mapped_column(Text, default="")
    input_schema: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    output_schema: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    annotations: Mapped[dict[str, Any] | None] = mapped_column(JSONType, default=None)
    definition_hash: Mapped[str] = mapped_column(String(64))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)  # the admin's own switch
    # Review (registry/review.py). Poisoning findings of the live definition (None: not yet
    # scanned); the worst severity over live and pending findings (None: clean).
    findings: Mapped[list[dict[str, str]] | None] = mapped_column(NullableJSON, default=None)
    severity: Mapped[str | None] = mapped_column(String(8), default=None)
    # Out of service until an admin approves (a high finding, or a held change with
    # pin_changes=disable); distinct from `enabled` so approval never re-enables a tool.
    quarantined: Mapped[bool] = mapped_column(Boolean, default=False)
    approved_hash: Mapped[str | None] = mapped_column(String(64), default=None)  # None: never approved
    # A changed upstream definition waiting for approval (fields, hash, findings, what changed).
    pending: Mapped[dict[str, Any] | None] = mapped_column(NullableJSON, default=None)
    rejected_hash: Mapped[str | None] = mapped_column(String(64), default=None)  # not held again
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    server: Mapped[Server] = relationship(back_populates="tools")


class ToolUsage(Base):
    """Evidence of use for a tool's usage vector: how many queries used it and the running sum
    of their embeddings (float32 bytes). One row per tool; deleted with the tool."""

    __tablename__ = "tool_usage"

    tool_id: Mapped[int] = mapped_column(ForeignKey("tools.id", ondelete="CASCADE"), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class RequestUse(Base):
    """One use of a tool by a request (a find's query that a successful call, or an example,
    counted): the request's key and query embedding (float32 bytes). The retriever's past
    requests (nearest-query votes, co-usage) are rebuilt from the newest rows at start and
    follow other replicas' rows; old rows are pruned. Deleted with the tool."""

    __tablename__ = "request_uses"
    __table_args__ = (
        UniqueConstraint("request", "tool_id", name="uq_request_uses_request_tool"),
        Index("ix_request_uses_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request: Mapped[str] = mapped_column(String(32))
    tool_id: Mapped[int] = mapped_column(ForeignKey("tools.id", ondelete="CASCADE"))
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(Base):
    """An API key: only its SHA-256 hash and a short display prefix are stored, never the key.
    ``scope`` is ``{"servers": [...], "tools": [...]}`` or None for every tool."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))  # admin | client
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scope: Mapped[dict[str, list[str]] | None] = mapped_column(JSONType, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
