"""Build and tear down the gateway's resources: database, upstream pool, catalog, background sync.

Shared by the HTTP app (its lifespan) and the stdio front door, so both run the same gateway.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx

from migrations.runner import upgrade
from registry.db import create_engine, create_sessionmaker
from registry.repository import Registry
from registry.review import ReviewPolicy
from registry.secrets import CredentialCipher, CredentialsKeyError, load_key_file
from retrieval.intent_llm import LLMSettings

from .catalog import IntentConfig
from .conversations import ConversationMemory
from .demo import demo_specs
from .learning import Learner, open_learner
from .memory import open_store
from .memory.policy import PruneRules
from .registry_watch import RegistryWatcher
from .retrieval_setup import build_retriever
from .services import GatewayService
from .settings import Settings, SettingsError
from .upstream import UpstreamPool
from .upstream_policy import UpstreamPolicy

logger = logging.getLogger(__name__)


async def migrate(settings: Settings) -> None:
    """Apply Alembic migrations (blocking work, so off the event loop)."""
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await anyio.to_thread.run_sync(upgrade, settings.resolved_database_url)


def credentials_cipher(settings: Settings) -> CredentialCipher:
    """The cipher of upstream credentials at rest: `TOOLGATE_CREDENTIALS_KEY` when set, else a
    key file in the data directory, created on first start. A bad key stops the start."""
    configured = settings.credentials_key.get_secret_value().strip() if settings.credentials_key else ""
    source = "TOOLGATE_CREDENTIALS_KEY"
    if not configured:
        path = settings.data_dir / "credentials.key"
        if settings.database_url:
            logger.warning(
                "TOOLGATE_CREDENTIALS_KEY is not set: upstream credentials are encrypted with the "
                "key in %s; every replica sharing DATABASE_URL needs the same key, so set "
                "TOOLGATE_CREDENTIALS_KEY",
                path,
            )
        source = f"{path} (TOOLGATE_CREDENTIALS_KEY unset)"
        try:
            configured = load_key_file(path)
        except OSError as exc:
            raise SettingsError(
                f"invalid settings:\n  {source}: cannot read or create it ({exc.strerror}): "
                "set TOOLGATE_CREDENTIALS_KEY"
            ) from None
    try:
        return CredentialCipher(configured)
    except CredentialsKeyError as exc:
        raise SettingsError(f"invalid settings:\n  {source}: {exc}") from None


def intent_config(settings: Settings, client: httpx.AsyncClient | None) -> IntentConfig:
    """The intent stage as configured; ``client`` serves the llm parser's endpoint."""
    if settings.intent_parser != "llm":
        return IntentConfig(settings.intent_parser)
    llm = LLMSettings(
        url=settings.intent_llm_url or "",  # both required by Settings in llm mode
        model=settings.intent_llm_model or "",
        api_key=settings.intent_llm_api_key,
        timeout=settings.intent_llm_timeout_s,
    )
    return IntentConfig("llm", llm, client)


async def _sync_forever(service: GatewayService, interval: float) -> None:
    while True:
        await anyio.sleep(interval)
        reports = await service.sync_all()
        failed = [r.server for r in reports if not r.ok]
        logger.info("periodic sync: %d servers, %d failed %s", len(reports), len(failed), failed or "")


@asynccontextmanager
async def gateway_runtime(
    settings: Settings, *, sync_on_start: bool = True, follow_registry: bool = True
) -> AsyncIterator[GatewayService]:
    """Everything the gateway needs, alive for the duration of the `async with` block."""
    cipher = credentials_cipher(settings)  # first: a bad key must stop us before any work
    with cipher.redactor.installed():  # no log record of this process carries a credential
        async with _gateway_runtime(
            settings, cipher, sync_on_start=sync_on_start, follow_registry=follow_registry
        ) as service:
            yield service


@asynccontextmanager
async def _gateway_runtime(
    settings: Settings, cipher: CredentialCipher, *, sync_on_start: bool, follow_registry: bool
) -> AsyncIterator[GatewayService]:
    if settings.migrate_on_start:
        await migrate(settings)
    retrieval = await anyio.to_thread.run_sync(build_retriever, settings)
    engine = create_engine(settings.resolved_database_url)
    store = open_store(settings.redis_url, ttl_s=settings.memory_ttl_s, capacity=settings.memory_capacity)
    # Only the llm intent parser talks HTTP; one pooled client serves all its requests.
    llm_client = httpx.AsyncClient() if settings.intent_parser == "llm" else None
    # With Redis, a find on one replica and the call on another still teach the usage vectors.
    learner: Learner | None = None
    if settings.learn_from_calls:
        learner = open_learner(settings.redis_url, max_uses=settings.learn_max_uses)
    try:
        registry = Registry(create_sessionmaker(engine), cipher)
        policy = UpstreamPolicy.from_settings(
            settings.upstream_allow_private or "", settings.stdio_commands or ""
        )
        await registry.seal_credentials()  # plaintext rows from before encryption, key rotation

        async def tools_changed(name: str) -> None:
            await service.on_tools_changed(name)

        async with UpstreamPool(
            connect_timeout=settings.connect_timeout_s,
            call_timeout=settings.call_timeout_s,
            concurrency=settings.upstream_concurrency,
            idle_timeout=settings.upstream_idle_s,
            max_sessions=settings.upstream_max_sessions,
            on_tools_changed=tools_changed,
            circuit_failures=settings.circuit_failures,
            circuit_cooldown_s=settings.circuit_cooldown_s,
            drain_timeout=settings.shutdown_drain_s,
            max_result_bytes=settings.max_result_bytes,
            connect_check=policy.check,
        ) as pool:
            service = GatewayService(
                registry,
                pool,
                retrieval.retriever,
                sync_concurrency=settings.sync_concurrency,
                learner=learner,
                intent=intent_config(settings, llm_client),
                policy=policy,
                review=ReviewPolicy(
                    quarantine_flagged=settings.quarantine_flagged,
                    pin=settings.pin_definitions,
                    pin_changes=settings.pin_changes,
                ),
                memory=ConversationMemory(
                    store,
                    mode=settings.memory_mode,
                    rules=PruneRules(
                        idle_turns=settings.memory_idle_turns,
                        min_relevance=settings.memory_min_relevance,
                        capacity=settings.memory_capacity,
                    ),
                    fresh_results=settings.memory_fresh_results,
                ),
            )
            await service.catalog.refresh()
            if settings.demo:
                outcome = await service.import_servers(demo_specs(settings.data_dir))
                logger.info(
                    "demo registry: %d created, %d updated, %d unchanged; %d tools",
                    len(outcome.result.created),
                    len(outcome.result.updated),
                    len(outcome.result.unchanged),
                    len(service.catalog),
                )
            async with anyio.create_task_group() as group:
                group.start_soon(service.learning.run)  # records uses; drains what is left on exit
                if sync_on_start:
                    group.start_soon(service.sync_all)  # upstreams may have changed while we were down
                if settings.sync_interval_s > 0:
                    group.start_soon(_sync_forever, service, settings.sync_interval_s)
                if follow_registry and settings.registry_watch_s > 0:  # what other replicas change
                    watcher = RegistryWatcher(registry, service.catalog, interval_s=settings.registry_watch_s)
                    group.start_soon(watcher.run)
                try:
                    yield service
                finally:
                    group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):  # flush the index even when the app is cancelled
            await engine.dispose()
            await store.aclose()
            if learner is not None:
                await learner.aclose()
            if llm_client is not None:
                await llm_client.aclose()
            await anyio.to_thread.run_sync(retrieval.close)
