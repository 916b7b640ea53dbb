"""The embedders on the real bundled model: torch (the reference) and its ONNX exports."""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from retrieval import embedder as embedder_module
from retrieval.embedder import (
    CALIBRATION_TEXTS,
    CHECK_TEXTS,
    Embedder,
    EmbedderError,
    OnnxEmbedder,
    TorchEmbedder,
    encode_async,
    export_onnx,
    export_path,
    is_complete_export,
    load_embedder,
    load_onnx,
    resolve_model_path,
)
from tests.support import ROOT, shared_data

pytestmark = pytest.mark.anyio

RUNTIMES = ["torch", "onnx-int8", "onnx-fp32"]
# fp32 is the same computation as torch; int8 may move a vector by quantisation error.
MIN_COSINE = {"onnx-int8": 0.98, "onnx-fp32": 0.999}


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One export cache for the whole run, so each variant is exported once."""
    return tmp_path_factory.mktemp("embedders")


@pytest.fixture(scope="session")
def torch_embedder() -> TorchEmbedder:
    return TorchEmbedder()


@pytest.fixture(scope="session")
def int8_embedder(cache_dir: Path) -> OnnxEmbedder:
    return load_onnx(quantize=True, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def fp32_embedder(cache_dir: Path) -> OnnxEmbedder:
    return load_onnx(quantize=False, cache_dir=cache_dir)


@pytest.fixture(params=RUNTIMES)
def any_embedder(request: pytest.FixtureRequest) -> Embedder:
    name = {"torch": "torch_embedder", "onnx-int8": "int8_embedder", "onnx-fp32": "fp32_embedder"}
    found: Embedder = request.getfixturevalue(name[request.param])
    return found


@pytest.fixture(scope="session")
def real_texts() -> list[str]:
    """A fixed sample of ToolBench tool texts (name and description, as written, empty ones
    included) and user queries."""
    folder = shared_data() / "toolbench"
    tools = [json.loads(line) for line in (folder / "tools.jsonl").read_text().splitlines() if line]
    queries = [
        json.loads(line)["query"] for line in (folder / "queries.jsonl").read_text().splitlines() if line
    ]
    rng = random.Random(7)
    sample = rng.sample(tools, 200)
    return [f"{t['name']}: {t['description']}" for t in sample] + rng.sample(queries, 100)


@pytest.fixture(scope="session")
def torch_real_vectors(torch_embedder: TorchEmbedder, real_texts: list[str]) -> np.ndarray:
    """The reference vectors, computed once: torch is the slow runtime."""
    return torch_embedder.encode(real_texts)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1))


def test_shape_dtype_and_unit_rows(any_embedder: Embedder) -> None:
    vectors = any_embedder.encode(["list open pull requests", "", "x" * 5000])
    assert vectors.shape == (3, any_embedder.dim) == (3, 384)
    assert vectors.dtype == np.float32
    assert vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vectors).all()


def test_empty_input_gives_zero_rows(any_embedder: Embedder) -> None:
    vectors = any_embedder.encode([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


def test_a_single_str_is_refused(any_embedder: Embedder) -> None:
    with pytest.raises(TypeError):
        any_embedder.encode("a str is a sequence of one-letter texts")


def test_deterministic_and_independent_of_order(any_embedder: Embedder) -> None:
    texts = ["convert 20 USD to EUR", "get_stock_price: latest quote", "", "weather in Oslo"]
    first = any_embedder.encode(texts, batch_size=2)
    np.testing.assert_array_equal(first, any_embedder.encode(texts, batch_size=2))
    reversed_rows = any_embedder.encode(texts[::-1], batch_size=2)[::-1]
    np.testing.assert_allclose(first, reversed_rows, atol=1e-5)


def test_token_counts_are_the_models_truncated_lengths(
    any_embedder: Embedder,
    torch_embedder: TorchEmbedder,
    real_texts: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Indexing sorts by these counts; every runtime counts the same word pieces, special
    tokens included, and a long text counts as its truncated length."""
    texts = ["", "weather in Oslo", "get_stock_price: latest quote", "word " * 2000, *real_texts[:50]]
    counts = any_embedder.token_counts(texts)
    assert counts[:3] == [2, 5, 10]  # [CLS] ... [SEP]; "get", "_", "stock", "_", "price", ":", ...
    assert counts[3] == 256  # all-MiniLM-L6-v2's max_seq_length
    assert all(2 <= c <= 256 for c in counts)
    assert any_embedder.token_counts([]) == []
    # The same counts whatever the runtime (one tokenizer, one truncation rule).
    assert counts == torch_embedder.token_counts(texts)
    # Counted a slice at a time (the tokenizer's output is large): the slices line up.
    monkeypatch.setattr(embedder_module, "_COUNT_SLICE", 4)
    assert any_embedder.token_counts(texts) == counts


def test_semantic_sanity(any_embedder: Embedder) -> None:
    query, weather, email = any_embedder.encode(
        [
            "Will it rain in Berlin tomorrow afternoon?",
            "get_forecast: Hourly weather forecast (rain, temperature, wind) for a city.",
            "send_email: Send an email to a recipient with a subject and a body.",
        ]
    )
    assert float(query @ weather) > float(query @ email) + 0.2


@pytest.mark.parametrize("runtime", ["onnx-int8", "onnx-fp32"])
def test_onnx_matches_torch_on_real_texts(
    runtime: str, request: pytest.FixtureRequest, torch_real_vectors: np.ndarray, real_texts: list[str]
) -> None:
    exported: OnnxEmbedder = request.getfixturevalue(
        "int8_embedder" if runtime == "onnx-int8" else "fp32_embedder"
    )
    found = cosines(torch_real_vectors, exported.encode(real_texts))
    print(f"{runtime}: min cosine {found.min():.4f}, mean {found.mean():.4f} over {len(found)} texts")
    worst = int(found.argmin())
    assert found.min() >= MIN_COSINE[runtime], f"{found.min():.4f} on {real_texts[worst]!r}"


def test_single_text_path_matches_batches(fp32_embedder: OnnxEmbedder, int8_embedder: OnnxEmbedder) -> None:
    texts = ["find a vegan restaurant nearby", "kubectl_get_pods: list pods", ""]
    single = np.vstack([fp32_embedder.encode([t]) for t in texts])
    np.testing.assert_allclose(single, fp32_embedder.encode(texts), atol=1e-5)
    # Dynamic int8 scales activations per batch, so batch-mates move a vector slightly.
    single = np.vstack([int8_embedder.encode([t]) for t in texts])
    assert cosines(single, int8_embedder.encode(texts)).min() >= 0.98


def test_model_ids_name_model_runtime_and_quantisation(
    torch_embedder: TorchEmbedder, int8_embedder: OnnxEmbedder, fp32_embedder: OnnxEmbedder
) -> None:
    ids = [torch_embedder.model_id, int8_embedder.model_id, fp32_embedder.model_id]
    assert len(set(ids)) == 3
    assert len({i.split("/")[0] for i in ids}) == 1  # same model, same fingerprint
    assert ids[0].startswith("all-MiniLM-L6-v2@")
    assert "int8" in ids[1]
    assert "fp32" in ids[2]


def test_export_records_its_check_against_torch(int8_embedder: OnnxEmbedder) -> None:
    info = json.loads((int8_embedder.export_dir / "export.json").read_text())
    assert info["check_texts"] == len(CHECK_TEXTS) >= 50
    assert 0.98 <= info["min_cosine"] <= info["mean_cosine"] <= 1.0
    assert info["quantized"] is True
    # Every MatMul is int8; the 12 LayerNorm outputs they read (6 layers x attention and
    # feed-forward inputs) were smoothed first.
    assert info["fp32_nodes"] == []
    assert len(info["smoothed_inputs"]) == 12


def test_calibration_texts_are_not_check_texts() -> None:
    """The smoothing scales are fitted on CALIBRATION_TEXTS; the check must not see them."""
    assert len(CALIBRATION_TEXTS) >= 20
    assert not set(CALIBRATION_TEXTS) & set(CHECK_TEXTS)


def test_smoothing_keeps_the_fp32_function(tmp_path: Path, fp32_embedder: OnnxEmbedder) -> None:
    """Smoothing only moves scale between activations and weights: in fp32 the vectors stay."""
    smoothed_dir = tmp_path / "smoothed"
    smoothed_dir.mkdir()
    (smoothed_dir / "tokenizer.json").write_bytes((fp32_embedder.export_dir / "tokenizer.json").read_bytes())
    tokenizer = embedder_module._load_tokenizer(
        smoothed_dir / "tokenizer.json", fp32_embedder.info["max_length"]
    )
    smoothed = embedder_module._smooth(
        fp32_embedder.export_dir / "model.onnx", smoothed_dir / "model.onnx", tokenizer
    )
    assert len(smoothed) == 12
    rescaled = OnnxEmbedder(smoothed_dir, fp32_embedder.info)
    texts = ["convert 20 USD to EUR", "", "kubectl_get_pods: list pods in a namespace", *CHECK_TEXTS[:8]]
    np.testing.assert_allclose(rescaled.encode(texts), fp32_embedder.encode(texts), atol=1e-4)


def test_auto_picks_int8_when_it_passes_the_check(cache_dir: Path, int8_embedder: OnnxEmbedder) -> None:
    chosen = load_embedder(runtime="auto", cache_dir=cache_dir)
    assert isinstance(chosen, OnnxEmbedder)
    assert chosen.model_id == int8_embedder.model_id


def test_auto_falls_back_to_torch_and_says_why(
    cache_dir: Path, int8_embedder: OnnxEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="retrieval.embedder"):
        chosen = load_embedder(runtime="auto", cache_dir=cache_dir, min_cosine=1.01)
    assert isinstance(chosen, TorchEmbedder)
    assert "using torch" in caplog.text
    assert "below 1.0100" in caplog.text


def test_export_is_reused(cache_dir: Path, int8_embedder: OnnxEmbedder) -> None:
    model_file = int8_embedder.export_dir / "model.onnx"
    before = model_file.stat().st_mtime_ns
    again = load_onnx(quantize=True, cache_dir=cache_dir)
    assert again.export_dir == int8_embedder.export_dir
    assert model_file.stat().st_mtime_ns == before
    assert [p.name for p in cache_dir.iterdir() if "int8" in p.name] == [int8_embedder.export_dir.name]


def test_loading_an_existing_export_does_not_import_torch(
    cache_dir: Path, int8_embedder: OnnxEmbedder
) -> None:
    script = (
        "import sys; from pathlib import Path; from retrieval.embedder import load_embedder; "
        f"e = load_embedder(runtime='auto', cache_dir=Path({str(cache_dir)!r})); "
        "print(type(e).__name__, 'torch' in sys.modules, e.encode(['hello']).shape)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["OnnxEmbedder", "False", "(1,", "384)"]


@pytest.fixture
def failing_quantizer(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(source: Path, target: Path) -> list[str]:
        target.write_bytes(source.read_bytes()[:1000])  # a half-written file, then the failure
        raise RuntimeError("simulated failure halfway through the export")

    monkeypatch.setattr(embedder_module, "_quantize", fail)


def test_failed_export_leaves_nothing(
    tmp_path: Path, torch_embedder: TorchEmbedder, failing_quantizer: None
) -> None:
    model = resolve_model_path("default")
    target = export_path(model, tmp_path, quantize=True)
    with pytest.raises(EmbedderError, match="simulated failure"):
        export_onnx(model, target, quantize=True)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone too


def test_crashed_export_is_not_usable(tmp_path: Path) -> None:
    """A process killed mid-export (no cleanup runs) leaves only a hidden temporary directory,
    which is never loaded; the next load exports afresh."""
    script = (
        "import os, sys; from pathlib import Path; import retrieval.embedder as m\n"
        "def crash(source, target):\n"
        "    target.write_bytes(b'half')\n"
        "    os._exit(3)\n"
        "m._quantize = crash\n"
        f"m.load_onnx(quantize=True, cache_dir=Path({str(tmp_path)!r}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=240)
    assert done.returncode == 3, done.stderr
    target = export_path(resolve_model_path("default"), tmp_path, quantize=True)
    assert not target.exists()
    assert not is_complete_export(target)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1
    assert leftovers[0].startswith(f".{target.name}.tmp-")


@pytest.mark.parametrize("runtime", ["auto", "onnx", "torch"])
@pytest.mark.parametrize("model", ["no-such-org/no-such-model", "./no/such/dir", "not a valid name!"])
def test_bad_model_raises_embedder_error(
    model: str, runtime: Literal["auto", "onnx", "torch"], tmp_path: Path
) -> None:
    with pytest.raises(EmbedderError) as raised:
        load_embedder(model, runtime=runtime, cache_dir=tmp_path)
    assert repr(model)[1:-1] in str(raised.value)


def test_a_directory_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match=r"no config\.json"):
        load_embedder(str(tmp_path), runtime="torch")


async def test_encode_async_runs_in_a_worker_thread(int8_embedder: OnnxEmbedder) -> None:
    texts = ["book a table for two tonight", "restaurant_reservation: reserve a table"]
    vectors = await encode_async(int8_embedder, texts)
    np.testing.assert_array_equal(vectors, int8_embedder.encode(texts))
    assert (await encode_async(int8_embedder, [])).shape == (0, 384)


def test_batches_cap_long_texts_by_attention_size() -> None:
    from retrieval.embedder import _ATTENTION_BUDGET, _batches

    rows = [[1] * n for n in [3] * 100 + [256] * 40]
    order = list(range(len(rows)))
    batches = list(_batches(order, rows, 64))
    assert [i for batch in batches for i in batch] == order  # every row once, in order
    assert all(len(batch) <= 64 for batch in batches)
    for batch in batches:
        width = max(len(rows[i]) for i in batch)
        assert len(batch) == 1 or len(batch) * width * width <= _ATTENTION_BUDGET
    assert len(batches[0]) == 64  # short texts still fill whole batches
    assert max(len(b) for b in batches if len(rows[b[0]]) == 256) == _ATTENTION_BUDGET // (256 * 256)


def test_batches_cut_where_lengths_are_sparse() -> None:
    from retrieval.embedder import _RUN_PIECES, _batches

    # Many texts of one length fill a batch; a few of spread lengths (new servers' texts
    # beside a chunk of short tool texts) go in narrower batches instead of one padded to 60.
    lengths = [12] * 70 + [25, 26, 30, 38, 39, 40, 41, 52, 60]
    rows = [[1] * n for n in lengths]
    order = list(range(len(rows)))
    batches = list(_batches(order, rows, 64))
    assert [i for batch in batches for i in batch] == order
    assert [len(b) for b in batches[:2]] == [64, 6]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    one_tail = 6 * 12 + 9 * 60  # the six short ones and the spread ones in one batch
    assert padded + _RUN_PIECES * (len(batches) - 2) < 64 * 12 + one_tail
    for batch in batches:
        widths = [lengths[i] for i in batch]
        # no row joined a batch whose earlier rows it widened by more than a run costs
        assert all(k * (widths[k] - widths[k - 1]) <= _RUN_PIECES for k in range(1, len(widths)))


_ARENA_PROBE = """
import json, sys
from pathlib import Path
from retrieval.embedder import load_onnx

def rss_mb():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS"))
    return int(line.split()[1]) / 1024

wide = json.loads(sys.stdin.read())
embedder = load_onnx(quantize=True, cache_dir=Path(sys.argv[1]))
embedder.encode(wide, batch_size=64)
held = rss_mb()
embedder.release_memory()
print(json.dumps([held, rss_mb()]))
"""


def test_release_memory_hands_back_the_runtimes_arena(
    int8_embedder: OnnxEmbedder, real_texts: list[str], cache_dir: Path
) -> None:
    """After wide batches onnxruntime keeps its arena (~100 MB for these); indexing releases
    it before the graph build. Measured in a fresh process: in this one, what earlier tests
    left in the C heap decides whether freed pages show in the resident set (CI saw none go).
    Vectors stay the same afterwards."""
    wide = [" ".join([text] * 6) for text in real_texts[:64]]  # ~256 word pieces each
    first = int8_embedder.encode(wide, batch_size=64)  # the fixture also makes the export
    probe = subprocess.run(
        [sys.executable, "-c", _ARENA_PROBE, str(cache_dir)],
        input=json.dumps(wide),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    held, released = json.loads(probe.stdout.strip().splitlines()[-1])
    assert held - released > 40, (held, released)
    int8_embedder.release_memory()
    np.testing.assert_array_equal(int8_embedder.encode(wide, batch_size=64), first)
