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
from retrieval.intent_llm import LLMSettings

from .catalog import IntentConfig
from .conversations import ConversationMemory
from .demo import demo_specs
from .learning import UsageLearner
from .memory import open_store
from .memory.policy import PruneRules
from .retrieval_setup import build_retriever
from .services import GatewayService
from .settings import Settings
from .upstream import UpstreamPool

logger = logging.getLogger(__name__)


async def migrate(settings: Settings) -> None:
    """Apply Alembic migrations (blocking work, so off the event loop)."""
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    await anyio.to_thread.run_sync(upgrade, settings.resolved_database_url)


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
async def gateway_runtime(settings: Settings, *, sync_on_start: bool = True) -> AsyncIterator[GatewayService]:
    """Everything the gateway needs, alive for the duration of the `async with` block."""
    if settings.migrate_on_start:
        await migrate(settings)
    retrieval = await anyio.to_thread.run_sync(build_retriever, settings)
    engine = create_engine(settings.resolved_database_url)
    store = open_store(settings.redis_url, ttl_s=settings.memory_ttl_s, capacity=settings.memory_capacity)
    # Only the llm intent parser talks HTTP; one pooled client serves all its requests.
    llm_client = httpx.AsyncClient() if settings.intent_parser == "llm" else None
    try:
        registry = Registry(create_sessionmaker(engine))

        async def tools_changed(name: str) -> None:
            await service.on_tools_changed(name)

        async with UpstreamPool(
            connect_timeout=settings.connect_timeout_s,
            call_timeout=settings.call_timeout_s,
            concurrency=settings.upstream_concurrency,
            idle_timeout=settings.upstream_idle_s,
            on_tools_changed=tools_changed,
        ) as pool:
            learner = UsageLearner(max_uses=settings.learn_max_uses) if settings.learn_from_calls else None
            service = GatewayService(
                registry,
                pool,
                retrieval.retriever,
                sync_concurrency=settings.sync_concurrency,
                learner=learner,
                intent=intent_config(settings, llm_client),
                memory=ConversationMemory(
                    store,
                    mode=settings.memory_mode,
                    rules=PruneRules(
                        idle_turns=settings.memory_idle_turns,
                        min_relevance=settings.memory_min_relevance,
                        capacity=settings.memory_capacity,
                    ),
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
                if sync_on_start:
                    group.start_soon(service.sync_all)  # upstreams may have changed while we were down
                if settings.sync_interval_s > 0:
                    group.start_soon(_sync_forever, service, settings.sync_interval_s)
                try:
                    yield service
                finally:
                    group.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):  # flush the index even when the app is cancelled
            await engine.dispose()
            await store.aclose()
            if llm_client is not None:
                await llm_client.aclose()
            await anyio.to_thread.run_sync(retrieval.close)
