"""Plain data crossing the registry's boundary: how to reach a server, and what it lists."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Self
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .naming import SEPARATOR, SERVER_NAME_RE

TransportName = Literal["stdio", "http", "sse"]


class ServerSpec(BaseModel):
    """How to reach one upstream MCP server. Validated before anything is written."""

    # Validation messages must not quote the input: it holds credentials.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    name: str = Field(description="Unique; 1-32 of [A-Za-z0-9_-], no '__'. Prefixes exposed tool names.")
    transport: TransportName = "stdio"
    description: str = ""
    category: str | None = Field(
        None, min_length=1, max_length=64, description="Free label for find_tools' category filter."
    )
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not SERVER_NAME_RE.match(value) or SEPARATOR in value:
            raise ValueError(
                "server name must be 1-32 characters of letters, digits, '_' or '-', start with a "
                f"letter or digit, and not contain '{SEPARATOR}'"
            )
        return value

    @model_validator(mode="after")
    def _transport_fields(self) -> Self:
        if self.transport == "stdio":
            if not self.command or not self.command.strip():
                raise ValueError("a stdio server needs 'command'")
            if self.url:
                raise ValueError("a stdio server takes 'command', not 'url'")
        else:
            if not self.url:
                raise ValueError(f"a {self.transport} server needs 'url'")
            parsed = urlparse(self.url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise ValueError("'url' must be an absolute http:// or https:// URL")
            if self.command:
                raise ValueError(f"a {self.transport} server takes 'url', not 'command'")
        return self

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # repr/str (and so any log line or traceback showing a spec) name credentials only.
        for name, value in super().__repr_args__():
            if name in ("env", "headers") and isinstance(value, dict):
                value = {key: "<redacted>" for key in value}
            yield name, value

    def connection_key(self) -> tuple[Any, ...]:
        """What identifies a live connection: change any of it and the pool reconnects."""
        return (
            self.transport,
            self.command,
            tuple(self.args),
            tuple(sorted(self.env.items())),
            self.cwd,
            self.url,
            tuple(sorted(self.headers.items())),
        )


@dataclass(frozen=True, slots=True)
class UpstreamTool:
    """One tool as an upstream server lists it."""

    name: str
    description: str = ""
    title: str | None = None
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    annotations: dict[str, Any] | None = None
