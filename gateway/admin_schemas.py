"""Request and response bodies of the admin REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from registry.models import Server, Tool
from registry.specs import TransportName
from registry.sync import SyncReport


class ServerUpdate(BaseModel):
    """Fields to change; absent fields stay as they are. The name cannot change."""

    model_config = ConfigDict(extra="forbid")

    transport: TransportName | None = None
    description: str | None = None
    category: str | None = None
    command: str | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = None
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] | None = None
    enabled: bool | None = None


class ToolUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool


class SyncOut(BaseModel):
    server_id: int
    server: str
    ok: bool
    created: int
    updated: int
    deleted: int
    unchanged: int
    error: str | None
    duration_s: float

    @classmethod
    def of(cls, report: SyncReport) -> SyncOut:
        d = report.diff
        return cls(
            server_id=report.server_id,
            server=report.server,
            ok=report.ok,
            created=d.created,
            updated=d.updated,
            deleted=d.deleted,
            unchanged=d.unchanged,
            error=report.error,
            duration_s=round(report.duration_s, 4),
        )


class ServerOut(BaseModel):
    """A server as the API shows it. Secret values (env, headers) are never returned: only
    their names."""

    id: int
    name: str
    description: str
    category: str | None
    transport: str
    command: str | None
    args: list[str]
    env_keys: list[str]
    cwd: str | None
    url: str | None
    header_names: list[str]
    enabled: bool
    status: str
    last_sync_at: datetime | None
    last_error: str | None
    tool_count: int | None = None
    created_at: datetime
    updated_at: datetime
    sync: SyncOut | None = None

    @classmethod
    def of(
        cls, server: Server, *, tool_count: int | None = None, sync: SyncReport | None = None
    ) -> ServerOut:
        return cls(
            id=server.id,
            name=server.name,
            description=server.description,
            category=server.category,
            transport=server.transport,
            command=server.command,
            args=list(server.args),
            env_keys=sorted(server.env),
            cwd=server.cwd,
            url=server.url,
            header_names=sorted(server.headers),
            enabled=server.enabled,
            status=server.status,
            last_sync_at=server.last_sync_at,
            last_error=server.last_error,
            tool_count=tool_count,
            created_at=server.created_at,
            updated_at=server.updated_at,
            sync=SyncOut.of(sync) if sync is not None else None,
        )


class ToolOut(BaseModel):
    id: int
    server_id: int
    server: str
    name: str
    exposed_name: str
    title: str | None
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    annotations: dict[str, Any] | None
    definition_hash: str
    enabled: bool
    first_seen_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, tool: Tool) -> ToolOut:
        return cls(
            id=tool.id,
            server_id=tool.server_id,
            server=tool.server.name,
            name=tool.name,
            exposed_name=tool.exposed_name,
            title=tool.title,
            description=tool.description,
            input_schema=tool.input_schema,
            output_schema=tool.output_schema,
            annotations=tool.annotations,
            definition_hash=tool.definition_hash,
            enabled=tool.enabled,
            first_seen_at=tool.first_seen_at,
            updated_at=tool.updated_at,
        )


class ExamplesIn(BaseModel):
    """Queries a tool answers; each counts as a use of it (Tool2Vec usage evidence)."""

    model_config = ConfigDict(extra="forbid")

    queries: list[Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]] = (
        Field(min_length=1, max_length=1000)
    )


class ToolExamples(ExamplesIn):
    tool: str = Field(min_length=1, description="The tool's exposed name.")


class ExamplesImport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    examples: list[ToolExamples] = Field(min_length=1, max_length=10_000)


class UsageOut(BaseModel):
    tool: str
    recorded: int = 0
    usage_count: int


class ToolList(BaseModel):
    total: int
    limit: int
    offset: int
    tools: list[ToolOut]


class ImportOut(BaseModel):
    created: list[str]
    updated: list[str]
    unchanged: list[str]
    syncs: list[SyncOut] = Field(default_factory=list)
