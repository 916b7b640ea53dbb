"""Build the retriever the settings describe: embedder, vector index, pipeline settings.

Blocking (model loading, opening the index): callers run it in a worker thread.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from retrieval.embedder import EmbedderError, load_embedder, resolve_model_path
from retrieval.index import IndexInUseError, IndexMismatchError, VectorIndex, open_index
from retrieval.pipeline import VECTOR_NAMES, Embedder, RetrievalSettings, Retriever

from .settings import Settings

logger = logging.getLogger(__name__)


class RetrievalSetupError(Exception):
    """The embedder or the index cannot be opened; the message says what to change."""


def index_path(settings: Settings) -> Path:
    """The embedded index's directory (derived data: rebuilt from the registry when lost)."""
    return settings.data_dir / "index"


def retrieval_settings(settings: Settings) -> RetrievalSettings:
    # The intent stage follows TOOLGATE_INTENT_PARSER, so `toolgate eval` and `search` rank
    # as find_tools does.
    chosen = dataclasses.replace(
        RetrievalSettings(),
        intent=settings.intent_parser != "off",
        optimize_after=settings.index_optimize_after,
    )
    if settings.retrieval_pool is None:
        return chosen
    return dataclasses.replace(chosen, pool_size=settings.retrieval_pool)


def check_model(settings: Settings) -> None:
    """Fail fast, before any server starts, when the embedding model cannot be found."""
    try:
        resolve_model_path(settings.embedding_model)
    except EmbedderError as exc:
        raise RetrievalSetupError(f"TOOLGATE_EMBEDDING_MODEL: {exc}") from None


def build_embedder(settings: Settings) -> Embedder:
    try:
        return load_embedder(
            settings.embedding_model, settings.embedding_runtime, settings.embedding_cache_dir
        )
    except EmbedderError as exc:
        raise RetrievalSetupError(f"TOOLGATE_EMBEDDING_MODEL: {exc}") from None


@dataclass
class OpenedIndex:
    index: VectorIndex
    private_dir: Path | None = None  # a throwaway index, removed on close

    def close(self) -> None:
        self.index.close()
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)


def build_index(settings: Settings, dim: int) -> OpenedIndex:
    """The Qdrant server's collection when QDRANT_URL is set, else the embedded index.

    An embedded index built for another vector layout (another model's dimension) is derived
    data, so it is dropped and rebuilt; a server collection is left alone and reported. The
    embedded engine admits one process: a second one (`toolgate stdio` beside `toolgate serve`
    on the same data directory) gets a private index of its own, built from the registry."""
    path = index_path(settings)
    try:
        return OpenedIndex(_open(settings, path, dim))
    except IndexInUseError:
        private = Path(tempfile.mkdtemp(prefix="toolgate-index-"))
        logger.warning(
            "the index at %s is open in another toolgate process; this one indexes into %s", path, private
        )
        return OpenedIndex(_open(settings, private / "index", dim), private)
    except IndexMismatchError as exc:
        if settings.qdrant_url:
            raise RetrievalSetupError(
                f"Qdrant collection {settings.qdrant_collection!r} does not fit the embedder ({exc}); "
                "set TOOLGATE_QDRANT_COLLECTION to a new name or delete the collection"
            ) from None
        logger.warning("the index at %s was built for another embedder (%s); rebuilding it", path, exc)
        shutil.rmtree(path)
        return OpenedIndex(_open(settings, path, dim))
    except OSError as exc:
        raise RetrievalSetupError(f"cannot open the index at {path}: {exc}") from None


def _open(settings: Settings, path: Path, dim: int) -> VectorIndex:
    if not settings.qdrant_url:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return open_index(
            settings.qdrant_url,
            path,
            dim=dim,
            vector_names=VECTOR_NAMES,
            collection=settings.qdrant_collection,
            api_key=settings.qdrant_api_key,
        )
    except (IndexMismatchError, IndexInUseError, OSError):
        raise
    except Exception as exc:  # the Qdrant client's connection errors have no common base
        if settings.qdrant_url:
            raise RetrievalSetupError(f"cannot reach Qdrant at {settings.qdrant_url}: {exc}") from None
        raise


@dataclass
class RetrievalHandle:
    retriever: Retriever
    opened: OpenedIndex

    def close(self) -> None:
        self.opened.close()


def build_retriever(settings: Settings) -> RetrievalHandle:
    embedder = build_embedder(settings)
    opened = build_index(settings, embedder.dim)
    return RetrievalHandle(Retriever(embedder, opened.index, retrieval_settings(settings)), opened)
