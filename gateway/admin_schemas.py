"""Request and response bodies of the admin REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from registry.models import Server, Tool
from registry.review import is_approved
from registry.secrets import REDACTED, mask_url, redacted, scrub
from registry.specs import TransportName
from registry.sync import SyncReport

_REPLACES_MAP = (
    "Replaces the whole map (write-only: responses show names only). A value of "
    f"'{REDACTED}' keeps the stored value of that name; {{}} removes every entry."
)


class ServerUpdate(BaseModel):
    """Fields to change; absent fields stay as they are. The name cannot change."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    transport: TransportName | None = None
    description: str | None = None
    category: str | None = None
    command: str | None = None
    args: list[str] | None = None
    env: dict[str, str] | None = Field(None, description="Environment of a stdio server. " + _REPLACES_MAP)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] | None = Field(None, description="HTTP headers sent upstream. " + _REPLACES_MAP)
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
    held: int = Field(0, description="Changed definitions held for approval (pinning).")
    reverted: int = Field(0, description="Pending definitions dropped because the upstream reverted.")
    flagged: int = Field(0, description="Newly scanned definitions with a high or medium finding.")
    quarantined: int = Field(0, description="Tools taken out of service until an admin approves them.")
    released: int = Field(0, description="Tools back in service.")
    error: str | None
    duration_s: float

    @classmethod
    def of(cls, report: SyncReport, secrets: list[str] | None = None) -> SyncOut:
        """`secrets`: the server's credential values, scrubbed from the error if present."""
        d = report.diff
        return cls(
            server_id=report.server_id,
            server=report.server,
            ok=report.ok,
            created=d.created,
            updated=d.updated,
            deleted=d.deleted,
            unchanged=d.unchanged,
            held=d.held,
            reverted=d.reverted,
            flagged=d.flagged,
            quarantined=d.quarantined,
            released=d.released,
            error=scrub(report.error, secrets or []) if report.error else None,
            duration_s=round(report.duration_s, 4),
        )


_SERVER_EXAMPLE: dict[str, Any] = {
    "id": 1,
    "name": "github",
    "description": "",
    "category": None,
    "transport": "stdio",
    "command": "npx",
    "args": ["-y", "@modelcontextprotocol/server-github"],
    "env": {"GITHUB_TOKEN": REDACTED},
    "env_keys": ["GITHUB_TOKEN"],
    "cwd": None,
    "url": None,
    "headers": {},
    "header_names": [],
    "enabled": True,
    "status": "ok",
    "last_sync_at": "2026-01-01T00:00:00Z",
    "last_error": None,
    "tool_count": 26,
    "flagged_count": 0,
    "pending_count": 0,
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
    "sync": None,
}


class ServerOut(BaseModel):
    """A server as the API shows it. Credential values (env, headers) are write-only: they are
    encrypted at rest and never returned, only their names with a redacted marker. The URL, also
    encrypted at rest, is shown with its password and query values masked."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SERVER_EXAMPLE]})

    id: int
    name: str
    description: str
    category: str | None
    transport: str
    command: str | None
    args: list[str]
    env: dict[str, str] = Field(description=f"The names of the environment variables set, each '{REDACTED}'.")
    env_keys: list[str]
    cwd: str | None
    url: str | None
    headers: dict[str, str] = Field(description=f"The names of the headers set, each '{REDACTED}'.")
    header_names: list[str]
    enabled: bool
    status: str
    last_sync_at: datetime | None
    last_error: str | None
    tool_count: int | None = None
    flagged_count: int | None = Field(None, description="Tools with poisoning findings.")
    pending_count: int | None = Field(None, description="Tools with a changed definition awaiting approval.")
    created_at: datetime
    updated_at: datetime
    sync: SyncOut | None = None

    @classmethod
    def of(
        cls,
        server: Server,
        *,
        tool_count: int | None = None,
        sync: SyncReport | None = None,
        review: tuple[int, int] | None = None,
    ) -> ServerOut:
        """`review`: (flagged, pending) tool counts of the server."""
        # The row's env/headers are decrypted in memory (or still sealed when unreadable):
        # only their names leave. Errors are scrubbed again in case a row predates scrubbing.
        secrets = [*server.env.values(), *server.headers.values(), *([server.url] if server.url else [])]
        return cls(
            id=server.id,
            name=server.name,
            description=server.description,
            category=server.category,
            transport=server.transport,
            command=server.command,
            args=list(server.args),
            env=redacted(server.env),
            env_keys=sorted(server.env),
            cwd=server.cwd,
            url=mask_url(server.url) if server.url else None,
            headers=redacted(server.headers),
            header_names=sorted(server.headers),
            enabled=server.enabled,
            status=server.status,
            last_sync_at=server.last_sync_at,
            last_error=scrub(server.last_error, secrets) if server.last_error else None,
            tool_count=tool_count,
            flagged_count=review[0] if review is not None else None,
            pending_count=review[1] if review is not None else None,
            created_at=server.created_at,
            updated_at=server.updated_at,
            sync=SyncOut.of(sync, secrets) if sync is not None else None,
        )


class FindingOut(BaseModel):
    rule: str
    severity: str = Field(description="high, medium or low")
    where: str = Field(description="Which part of the definition: description, input_schema.properties.x...")
    excerpt: str = Field(description="The matching text, shortened, invisible characters made visible.")


class PendingOut(BaseModel):
    """A changed upstream definition waiting for approval; the live one keeps serving (or the
    tool is out of service, with pin_changes=disable) until an admin approves or rejects it."""

    title: str | None
    description: str
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    annotations: dict[str, Any] | None
    definition_hash: str
    findings: list[FindingOut]
    changed: list[str] = Field(description="The fields that differ from the live definition.")
    seen_at: datetime | None


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
    enabled: bool = Field(description="The admin's own switch.")
    findings: list[FindingOut] | None = Field(
        description="Poisoning findings of the live definition; null: not scanned yet."
    )
    severity: str | None = Field(description="The worst finding over the live and pending definitions.")
    quarantined: bool = Field(description="Out of service until an admin approves the definition.")
    approved: bool = Field(description="The live definition is the approved one.")
    pending: PendingOut | None
    first_seen_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, tool: Tool) -> ToolOut:
        pending = tool.pending
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
            findings=[FindingOut.model_validate(f) for f in tool.findings]
            if tool.findings is not None
            else None,
            severity=tool.severity,
            quarantined=tool.quarantined,
            approved=is_approved(tool),
            pending=PendingOut.model_validate(pending) if pending is not None else None,
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
