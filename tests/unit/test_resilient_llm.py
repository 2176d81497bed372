"""ResilientLLM: fallback order, retries with backoff, timeouts, no retry after a chunk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import pytest

from engine.errors import BackendUnavailable, LLMError, LLMTimeout
from engine.events import ChatMessage
from engine.llm import ResilientLLM

PROMPT = [ChatMessage("user", "hello")]


@dataclass
class Step:
    """What one call to ``stream()`` does: yield ``chunks``, then raise ``error`` or hang."""

    chunks: Sequence[str] = ()
    error: Exception | None = None
    hang: bool = False


@dataclass
class ScriptedLLM:
    """A test double of the LLM port that follows a script, one step per call."""

    name: str
    script: list[Step] = field(default_factory=list)
    default: Step = field(default_factory=lambda: Step(chunks=("ok",)))
    calls: int = 0
    closed: int = 0
    events: list[str] = field(default_factory=list)
    called: asyncio.Event = field(default_factory=asyncio.Event)

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        self.calls += 1
        self.called.set()
        step = self.script.pop(0) if self.script else self.default
        return self._run(step)

    async def _run(self, step: Step) -> AsyncGenerator[str, None]:
        try:
            for chunk in step.chunks:
                await asyncio.sleep(0)
                yield chunk
            if step.hang:
                await asyncio.Event().wait()
            if step.error is not None:
                raise step.error
        finally:
            self.closed += 1

    async def start(self) -> None:
        self.events.append("start")

    async def aclose(self) -> None:
        self.events.append("aclose")

    async def ping(self) -> None:
        if self.default.error is not None:
            raise BackendUnavailable(self.name, "down")


def down(name: str = "x") -> Step:
    return Step(error=BackendUnavailable(name, "connection refused"))


def status_error(status: int) -> LLMError:
    error = LLMError(f"HTTP {status}")
    error.status = status  # type: ignore[attr-defined]
    return error


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def resilient(*backends: ScriptedLLM, sleeps: Sleeps | None = None, **kwargs: float) -> ResilientLLM:
    options: dict[str, float] = {"timeout_s": 5.0, "backoff_s": 0.5, "backoff_max_s": 8.0}
    options.update(kwargs)
    return ResilientLLM(
        backends,
        timeout_s=options.pop("timeout_s"),
        sleep=sleeps or Sleeps(),
        jitter=lambda: 1.0,
        **options,  # type: ignore[arg-type]
    )


async def collect(llm: ResilientLLM) -> str:
    return "".join([c async for c in llm.stream(PROMPT, max_tokens=16, temperature=0.5)])


async def test_first_backend_answers() -> None:
    a, b = ScriptedLLM("a", [Step(chunks=("Hel", "lo"))]), ScriptedLLM("b")
    llm = resilient(a, b)
    assert await collect(llm) == "Hello"
    assert llm.last_backend == "a"
    assert (a.calls, b.calls) == (1, 0)
    assert a.closed == 1


async def test_each_stream_names_its_backend() -> None:
    a = ScriptedLLM("a", [down("a")] * 3)
    b = ScriptedLLM("b")
    llm = resilient(a, b, max_retries=2)
    first = llm.stream(PROMPT, max_tokens=16, temperature=0.5)
    assert first.backend is None
    assert [c async for c in first] == ["ok"]
    assert first.backend == "b"
    second = llm.stream(PROMPT, max_tokens=16, temperature=0.5)
    assert [c async for c in second] == ["ok"]
    assert second.backend == "a"  # a probe of the failed primary succeeded
    assert first.backend == "b"


async def test_falls_back_in_order_after_retries() -> None:
    a = ScriptedLLM("a", default=down("a"))
    b = ScriptedLLM("b", default=down("b"))
    c = ScriptedLLM("c", default=Step(chunks=("from c",)))
    llm = resilient(a, b, c, max_retries=2)
    assert await collect(llm) == "from c"
    assert llm.last_backend == "c"
    assert (a.calls, b.calls, c.calls) == (3, 3, 1)
    stats = {s.name: s for s in llm.stats()}
    assert stats["a"].consecutive_failures == 3
    assert stats["a"].last_error is not None and "connection refused" in stats["a"].last_error
    assert stats["c"].consecutive_failures == 0 and stats["c"].successes == 1


async def test_retries_then_succeeds_with_exponential_backoff() -> None:
    sleeps = Sleeps()
    a = ScriptedLLM("a", [Step(error=LLMError("boom")), Step(error=LLMError("boom")), Step(chunks=("ok",))])
    llm = resilient(a, sleeps=sleeps, max_retries=2, backoff_s=0.5)
    assert await collect(llm) == "ok"
    assert a.calls == 3
    assert sleeps.delays == [0.5, 1.0]
    assert llm.stats()[0].consecutive_failures == 0


async def test_retry_count_is_bounded() -> None:
    sleeps = Sleeps()
    a = ScriptedLLM("a", default=Step(error=LLMError("boom")))
    llm = resilient(a, sleeps=sleeps, max_retries=4, backoff_s=1.0, backoff_max_s=3.0)
    with pytest.raises(LLMError):
        await collect(llm)
    assert a.calls == 5
    assert sleeps.delays == [1.0, 2.0, 3.0, 3.0]  # capped at backoff_max_s


async def test_jitter_keeps_delay_between_half_and_full() -> None:
    sleeps = Sleeps()
    a = ScriptedLLM("a", default=Step(error=LLMError("boom")))
    llm = ResilientLLM([a], timeout_s=5, max_retries=1, backoff_s=2.0, sleep=sleeps, jitter=lambda: 0.0)
    with pytest.raises(LLMError):
        await collect(llm)
    assert sleeps.delays == [1.0]


async def test_no_retry_after_first_chunk() -> None:
    a = ScriptedLLM("a", [Step(chunks=("partial ",), error=BackendUnavailable("a", "reset"))])
    b = ScriptedLLM("b")
    llm = resilient(a, b)
    received: list[str] = []
    with pytest.raises(LLMError) as caught:
        async for chunk in llm.stream(PROMPT, max_tokens=16, temperature=0.5):
            received.append(chunk)
    assert received == ["partial "]
    assert "mid-stream" in str(caught.value)
    assert (a.calls, b.calls) == (1, 0)


async def test_llm_error_after_first_chunk_is_raised_as_is() -> None:
    a = ScriptedLLM("a", [Step(chunks=("x",), error=LLMError("model crashed"))])
    llm = resilient(a, ScriptedLLM("b"))
    with pytest.raises(LLMError, match="model crashed"):
        await collect(llm)
    assert a.calls == 1


async def test_first_token_timeout_moves_to_next_backend() -> None:
    a = ScriptedLLM("a", default=Step(hang=True))
    b = ScriptedLLM("b", default=Step(chunks=("fallback",)))
    llm = resilient(a, b, timeout_s=5.0, first_token_timeout_s=0.05, max_retries=2)
    assert await collect(llm) == "fallback"
    assert a.calls == 1  # a timeout is not retried on the same backend
    assert a.closed == 1  # the hung stream was closed
    assert llm.stats()[0].last_error is not None and "LLMTimeout" in llm.stats()[0].last_error


async def test_overall_deadline_after_first_chunk_raises_timeout() -> None:
    a = ScriptedLLM("a", [Step(chunks=("start",), hang=True)])
    b = ScriptedLLM("b")
    llm = resilient(a, b, timeout_s=0.1)
    received: list[str] = []
    with pytest.raises(LLMTimeout, match="not finished within"):
        async for chunk in llm.stream(PROMPT, max_tokens=16, temperature=0.5):
            received.append(chunk)
    assert received == ["start"]
    assert (a.calls, b.calls) == (1, 0)
    assert a.closed == 1


async def test_all_fail_summarises_every_backend() -> None:
    a = ScriptedLLM("alpha", default=down("alpha"))
    b = ScriptedLLM("beta", default=Step(error=LLMError("HTTP 500: overloaded")))
    llm = resilient(a, b, max_retries=1)
    with pytest.raises(LLMError) as caught:
        await collect(llm)
    assert not isinstance(caught.value, LLMTimeout)
    message = str(caught.value)
    assert "alpha" in message and "connection refused" in message
    assert "beta" in message and "overloaded" in message
    assert llm.last_backend is None


async def test_all_fail_with_timeout_last_raises_llm_timeout() -> None:
    a = ScriptedLLM("a", default=down("a"))
    b = ScriptedLLM("b", default=Step(hang=True))
    llm = resilient(a, b, first_token_timeout_s=0.05, max_retries=0)
    with pytest.raises(LLMTimeout) as caught:
        await collect(llm)
    assert "a:" in str(caught.value) and "b:" in str(caught.value)


async def test_client_errors_are_not_retried_on_the_same_backend() -> None:
    a = ScriptedLLM("a", default=Step(error=status_error(401)))
    b = ScriptedLLM("b", default=Step(chunks=("ok",)))
    llm = resilient(a, b, max_retries=3)
    assert await collect(llm) == "ok"
    assert a.calls == 1


async def test_rate_limits_are_retried() -> None:
    a = ScriptedLLM("a", [Step(error=status_error(429))], default=Step(chunks=("ok",)))
    llm = resilient(a, max_retries=2)
    assert await collect(llm) == "ok"
    assert a.calls == 2


async def test_backend_that_failed_last_call_gets_one_probe() -> None:
    a = ScriptedLLM("a", default=down("a"))
    b = ScriptedLLM("b")
    llm = resilient(a, b, max_retries=2)
    await collect(llm)
    assert a.calls == 3
    await collect(llm)
    assert a.calls == 4  # one probe, no retries, while it keeps failing
    a.default = Step(chunks=("back",))
    assert await collect(llm) == "back"
    assert llm.last_backend == "a"
    a.default = down("a")
    a.script = [down("a")]
    await collect(llm)
    assert a.calls == 8  # healthy again: full retries


async def test_single_backend_keeps_its_retries() -> None:
    a = ScriptedLLM("a", default=down("a"))
    llm = resilient(a, max_retries=1)
    for _ in range(2):
        with pytest.raises(LLMError):
            await collect(llm)
    assert a.calls == 4


async def test_cancellation_propagates_and_closes_the_backend_stream() -> None:
    a = ScriptedLLM("a", default=Step(hang=True))
    b = ScriptedLLM("b")
    llm = resilient(a, b, timeout_s=60.0)
    task = asyncio.create_task(collect(llm))
    await a.called.wait()
    await asyncio.sleep(0)  # let the backend's stream start hanging
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.closed == 1
    assert b.calls == 0


async def test_abandoned_stream_closes_the_backend_stream() -> None:
    a = ScriptedLLM("a", default=Step(chunks=("one", "two", "three")))
    llm = resilient(a)
    stream = llm.stream(PROMPT, max_tokens=16, temperature=0.5)
    assert await anext(stream) == "one"
    await stream.aclose()
    assert a.closed == 1


async def test_other_exceptions_are_not_swallowed() -> None:
    a = ScriptedLLM("a", default=Step(error=ValueError("a bug")))
    b = ScriptedLLM("b")
    with pytest.raises(ValueError, match="a bug"):
        await collect(resilient(a, b))
    assert b.calls == 0


async def test_empty_reply_is_a_success() -> None:
    a = ScriptedLLM("a", default=Step(chunks=()))
    llm = resilient(a, ScriptedLLM("b"))
    assert await collect(llm) == ""
    assert llm.last_backend == "a"


async def test_ping_succeeds_if_any_backend_answers() -> None:
    ok = ScriptedLLM("ok")
    dead = ScriptedLLM("dead", default=down("dead"))
    await resilient(dead, ok).ping()
    with pytest.raises(BackendUnavailable, match="dead"):
        await resilient(dead).ping()


async def test_lifecycle_starts_in_order_and_closes_in_reverse() -> None:
    log: list[str] = []
    a, b = ScriptedLLM("a", events=log), ScriptedLLM("b", events=log)
    llm = resilient(a, b)
    await llm.start()
    await llm.aclose()
    assert log == ["start", "start", "aclose", "aclose"]
    assert llm.name == "a > b"


def test_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        ResilientLLM([], timeout_s=1)
