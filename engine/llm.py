"""Backend-independent LLM policy: ordered fallback, bounded retries, timeouts.

:class:`ResilientLLM` implements the :class:`engine.ports.LLM` port on top of several
backends (``inference/``), tried in order.

Retries
    Per backend, a failure raised *before the first chunk* (``LLMError``,
    ``BackendUnavailable``) is retried up to ``max_retries`` times with exponential
    backoff and jitter, then the next backend is tried. Two kinds of failure move on to
    the next backend at once instead of retrying the same one: a timeout (retrying a
    hung server multiplies the user's wait) and a client error that will not change on
    retry (an ``LLMError`` whose ``status`` is a 4xx other than 408/409/425/429,
    e.g. 401 bad key, 404 unknown model). A backend whose previous call failed outright
    gets a single attempt, without retries, until it succeeds again: a dead primary costs
    one quick attempt per reply rather than a full backoff sequence.

    With ``breaker_failures`` set, each backend also has a circuit breaker
    (``engine/breaker.py``): after that many failed attempts in a row the backend is skipped
    outright (no attempt, no timeout) until ``breaker_reset_s`` has passed; then one reply
    tries it once (half-open), and its outcome closes or re-opens the circuit. When every
    backend's circuit is open the reply fails at once.

    Once a chunk has been handed to the caller nothing is retried (it would repeat
    text): the failure is raised as ``LLMError`` (``LLMTimeout`` for a timeout).

Timeouts (per attempt)
    * ``first_token_timeout_s`` (default: ``timeout_s``) bounds the wait for the first
      chunk;
    * ``timeout_s`` is the attempt's overall deadline: the whole stream, first token
      included, must be finished ``timeout_s`` after the request was sent.
    Time the caller spends between chunks (rendering, editing a message) counts too:
    the deadline is wall-clock.

When every backend failed, ``LLMError`` is raised (``LLMTimeout`` when the last
failure was a timeout) whose message lists each backend's last failure. Any other
exception (a bug, cancellation) propagates at once. Closing the stream early
(``aclose()``), or cancelling its consumer, closes the backend's stream immediately.

``stream()`` returns an :class:`LLMStream`, whose ``backend`` names the backend that
answered; ``stats()`` gives per-backend health for a status page.

Tools
    ``stream_with_tools()`` is the same policy for a request that offers tools
    (:class:`engine.ports.ToolCallingLLM`): the stream also yields the model's tool calls,
    and a tool call counts as a first chunk. A backend that cannot call tools (llama.cpp in
    process) is asked the plain way: it answers without tools (and without the results of
    earlier rounds, which its prompt format has no place for).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from engine.breaker import BreakerSnapshot, BreakerState, CircuitBreaker, backoff_delay
from engine.errors import BackendUnavailable, LLMError, LLMTimeout
from engine.events import ChatMessage
from engine.ports import LLM, ToolCall, ToolCallingLLM, ToolRound, ToolSpec

logger = logging.getLogger(__name__)

_RETRYABLE_4XX = frozenset({408, 409, 425, 429})

SleepFn = Callable[[float], Awaitable[None]]
ChunkT = TypeVar("ChunkT")
Opener = Callable[[LLM], AsyncIterator[ChunkT]]


@dataclass(frozen=True, slots=True)
class BackendStats:
    """A snapshot of one backend's health, for a status page."""

    name: str
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    """Failed attempts since the last stream that produced a chunk."""
    last_error: str | None = None
    last_error_at: float | None = None
    """Unix time of the last failure."""
    last_success_at: float | None = None
    """Unix time of the last stream that produced a chunk."""
    circuit: BreakerState | None = None
    """The backend's circuit breaker state; None without breakers."""


class _Health:
    __slots__ = (
        "attempts",
        "consecutive_failures",
        "failed_last_call",
        "failures",
        "last_error",
        "last_error_at",
        "last_success_at",
        "successes",
    )

    def __init__(self) -> None:
        self.attempts = 0
        self.successes = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.failed_last_call = False
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_success_at: float | None = None

    def failed(self, error: str) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = error
        self.last_error_at = time.time()

    def succeeded(self) -> None:
        self.successes += 1
        self.consecutive_failures = 0
        self.failed_last_call = False
        self.last_success_at = time.time()


def _describe(exc: BaseException) -> str:
    """``"LLMTimeout: no first token within 5s"`` — short, one line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _retry_same_backend(exc: Exception) -> bool:
    if isinstance(exc, LLMTimeout):
        return False
    status = exc.status if isinstance(exc, LLMError) else None
    return not (isinstance(status, int) and 400 <= status < 500 and status not in _RETRYABLE_4XX)


class LLMStream(Generic[ChunkT]):
    """What :meth:`ResilientLLM.stream` returns: an async iterator of text chunks (and tool
    calls, from ``stream_with_tools``) that also says which backend produced them. ``backend``
    is set when the first chunk arrives; unlike ``ResilientLLM.last_backend`` it is not shared
    between concurrent replies."""

    __slots__ = ("_chunks", "backend")

    def __init__(self) -> None:
        self.backend: str | None = None
        self._chunks: AsyncGenerator[ChunkT, None] | None = None

    def __aiter__(self) -> LLMStream[ChunkT]:
        return self

    async def __anext__(self) -> ChunkT:
        assert self._chunks is not None
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        """Stop the reply early: closes the backend's stream now."""
        if self._chunks is not None:
            await self._chunks.aclose()


class ResilientLLM:
    """An :class:`engine.ports.LLM` that tries ``backends`` in order, with retries."""

    def __init__(
        self,
        backends: Sequence[LLM],
        *,
        timeout_s: float,
        first_token_timeout_s: float | None = None,
        max_retries: int = 2,
        backoff_s: float = 0.5,
        backoff_max_s: float = 8.0,
        sleep: SleepFn = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        breaker_failures: int | None = None,
        breaker_reset_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not backends:
            raise ValueError("ResilientLLM needs at least one backend")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self._backends = list(backends)
        self._timeout_s = timeout_s
        self._first_token_timeout_s = min(first_token_timeout_s or timeout_s, timeout_s)
        self._max_retries = max_retries
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._sleep = sleep
        self._jitter = jitter
        self._health = [_Health() for _ in self._backends]
        self._breakers: list[CircuitBreaker | None] = [
            CircuitBreaker(
                f"LLM {b.name}",
                failure_threshold=breaker_failures,
                reset_timeout_s=breaker_reset_s,
                clock=clock,
            )
            if breaker_failures
            else None
            for b in self._backends
        ]
        self.last_backend: str | None = None
        """Name of the backend that produced the latest reply (shared by concurrent replies:
        prefer the ``backend`` of the stream returned by :meth:`stream`)."""

    # --- port -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return " > ".join(b.name for b in self._backends)

    @property
    def backends(self) -> tuple[LLM, ...]:
        return tuple(self._backends)

    async def start(self) -> None:
        started: list[LLM] = []
        try:
            for backend in self._backends:
                await backend.start()
                started.append(backend)
        except BaseException:
            for backend in reversed(started):
                await backend.aclose()
            raise

    async def aclose(self) -> None:
        for backend in reversed(self._backends):
            await backend.aclose()

    async def ping(self) -> None:
        """Succeeds when at least one backend answers its ping."""
        failures: list[str] = []
        for backend in self._backends:
            try:
                await backend.ping()
            except (BackendUnavailable, LLMError) as exc:
                failures.append(f"{backend.name}: {_describe(exc)}")
            else:
                return
        raise BackendUnavailable("LLM", "; ".join(failures))

    def circuits(self) -> list[BreakerSnapshot]:
        """The backends' circuit breakers, in fallback order; empty without breakers."""
        return [breaker.snapshot() for breaker in self._breakers if breaker is not None]

    def stats(self) -> list[BackendStats]:
        """One snapshot per backend, in fallback order."""
        return [
            BackendStats(
                name=b.name,
                attempts=h.attempts,
                successes=h.successes,
                failures=h.failures,
                consecutive_failures=h.consecutive_failures,
                last_error=h.last_error,
                last_error_at=h.last_error_at,
                last_success_at=h.last_success_at,
                circuit=None if breaker is None else breaker.state,
            )
            for b, h, breaker in zip(self._backends, self._health, self._breakers, strict=True)
        ]

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> LLMStream[str]:
        """The reply's text chunks; the returned stream's ``backend`` names who produced it."""

        def plain(backend: LLM) -> AsyncIterator[str]:
            return backend.stream(messages, max_tokens=max_tokens, temperature=temperature)

        handle: LLMStream[str] = LLMStream()
        handle._chunks = self._stream(plain, handle)
        return handle

    def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec],
        rounds: Sequence[ToolRound],
        max_tokens: int,
        temperature: float,
        may_call: bool = True,
    ) -> LLMStream[str | ToolCall]:
        """The reply's text chunks and tool calls, offering ``tools`` (see "Tools" above)."""

        def with_tools(backend: LLM) -> AsyncIterator[str | ToolCall]:
            if isinstance(backend, ToolCallingLLM):
                return backend.stream_with_tools(
                    messages,
                    tools=tools,
                    rounds=rounds,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    may_call=may_call,
                )
            return backend.stream(messages, max_tokens=max_tokens, temperature=temperature)

        handle: LLMStream[str | ToolCall] = LLMStream()
        handle._chunks = self._stream(with_tools, handle)
        return handle

    async def _stream(
        self, open_stream: Opener[ChunkT], handle: LLMStream[ChunkT]
    ) -> AsyncGenerator[ChunkT, None]:
        failures: list[str] = []
        last_exc: Exception | None = None
        last_index = len(self._backends) - 1
        for index, (backend, health, breaker) in enumerate(
            zip(self._backends, self._health, self._breakers, strict=True)
        ):
            trial = breaker is not None and breaker.state is BreakerState.HALF_OPEN
            if breaker is not None and not breaker.allow():
                failures.append(f"{backend.name}: circuit open ({breaker.last_error})")
                continue
            probe_only = trial or (health.failed_last_call and index < last_index)
            attempts = 1 if probe_only else self._max_retries + 1
            for attempt in range(attempts):
                if attempt:
                    await self._sleep(self._backoff(attempt - 1))
                health.attempts += 1
                produced = False
                outcome_known = False
                chunks = self._attempt(backend, open_stream)
                try:
                    async for chunk in chunks:
                        if not produced:
                            produced = outcome_known = True
                            health.succeeded()
                            if breaker is not None:
                                breaker.record_success()
                            self.last_backend = handle.backend = backend.name
                        yield chunk
                except (LLMError, BackendUnavailable) as exc:
                    outcome_known = True
                    if breaker is not None:
                        breaker.record_failure(_describe(exc))
                    if produced:
                        health.failed(_describe(exc))
                        logger.warning("LLM %s failed mid-stream: %s", backend.name, _describe(exc))
                        if isinstance(exc, LLMError):
                            raise
                        raise LLMError(f"{backend.name} failed mid-stream: {_describe(exc)}") from exc
                    health.failed(_describe(exc))
                    last_exc = exc
                    logger.warning(
                        "LLM %s attempt %d/%d failed: %s", backend.name, attempt + 1, attempts, _describe(exc)
                    )
                    if not _retry_same_backend(exc):
                        break
                    if breaker is not None and breaker.state is not BreakerState.CLOSED:
                        break  # the circuit just opened: skip this backend from now on
                    continue
                finally:
                    if breaker is not None and not outcome_known:
                        breaker.release_trial()  # closed early or cancelled: no verdict
                    # Close the attempt now (not whenever the loop's finalizer gets to it),
                    # so an abandoned or cancelled stream stops its backend promptly.
                    await chunks.aclose()
                if not produced:
                    # An empty reply is a valid stream: count it as a success.
                    health.succeeded()
                    if breaker is not None:
                        breaker.record_success()
                    self.last_backend = handle.backend = backend.name
                return
            health.failed_last_call = True
            failures.append(f"{backend.name}: {_describe(last_exc) if last_exc else 'failed'}")
        summary = "all LLM backends failed: " + "; ".join(failures)
        if isinstance(last_exc, LLMTimeout):
            raise LLMTimeout(summary) from last_exc
        raise LLMError(summary) from last_exc

    # --- internals --------------------------------------------------------------------

    def _backoff(self, retry: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        return backoff_delay(retry, base_s=self._backoff_s, max_s=self._backoff_max_s, jitter=self._jitter)

    async def _attempt(self, backend: LLM, open_stream: Opener[ChunkT]) -> AsyncGenerator[ChunkT, None]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self._timeout_s
        first_deadline = started + self._first_token_timeout_s
        iterator = aiter(open_stream(backend))
        first = True
        try:
            while True:
                try:
                    async with asyncio.timeout_at(first_deadline if first else deadline):
                        chunk = await anext(iterator)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    if first:
                        raise LLMTimeout(
                            f"{backend.name}: no first token within {self._first_token_timeout_s:g}s"
                        ) from exc
                    raise LLMTimeout(
                        f"{backend.name}: reply not finished within {self._timeout_s:g}s"
                    ) from exc
                first = False
                yield chunk
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()
