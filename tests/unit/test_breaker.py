"""The circuit breaker's state machine and the retry helper, on a hand-driven clock."""

from __future__ import annotations

import asyncio

import pytest

from engine.breaker import BreakerState, CircuitBreaker, backoff_delay, retry
from engine.errors import BackendUnavailable, CircuitOpen, StorageError
from engine.health import probe, with_circuits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Service:
    """An operation that fails while ``down`` and counts its calls."""

    def __init__(self) -> None:
        self.down = False
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.down:
            raise BackendUnavailable("svc", "connection refused")
        return "pong"


async def test_opens_after_threshold_then_refuses_without_calling() -> None:
    clock, service = Clock(), Service()
    breaker = CircuitBreaker("svc", failure_threshold=3, reset_timeout_s=10, clock=clock)
    service.down = True
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await breaker.call(service)
        assert breaker.state is BreakerState.CLOSED
    with pytest.raises(BackendUnavailable):
        await breaker.call(service)
    assert breaker.state is BreakerState.OPEN
    assert service.calls == 3

    with pytest.raises(CircuitOpen, match="circuit open after 3 failures"):
        await breaker.call(service)
    assert service.calls == 3  # refused without asking the service


async def test_half_open_lets_one_trial_through_and_closes_on_success() -> None:
    clock, service = Clock(), Service()
    breaker = CircuitBreaker("svc", failure_threshold=1, reset_timeout_s=10, clock=clock)
    service.down = True
    with pytest.raises(BackendUnavailable):
        await breaker.call(service)
    clock.now += 9.9
    assert breaker.state is BreakerState.OPEN
    clock.now += 0.1
    assert breaker.state is BreakerState.HALF_OPEN

    assert breaker.allow() is True  # the one trial
    assert breaker.allow() is False  # everyone else waits for its outcome
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0

    service.down = False
    assert await breaker.call(service) == "pong"


async def test_failed_trial_reopens_for_a_full_timeout() -> None:
    clock, service = Clock(), Service()
    breaker = CircuitBreaker("svc", failure_threshold=2, reset_timeout_s=5, clock=clock)
    service.down = True
    for _ in range(2):
        with pytest.raises(BackendUnavailable):
            await breaker.call(service)
    clock.now += 5
    with pytest.raises(BackendUnavailable):
        await breaker.call(service)  # the trial, which fails
    assert breaker.state is BreakerState.OPEN
    clock.now += 4
    with pytest.raises(CircuitOpen):
        await breaker.call(service)
    assert service.calls == 3
    clock.now += 1
    service.down = False
    assert await breaker.call(service) == "pong"
    assert breaker.snapshot().state is BreakerState.CLOSED


async def test_success_resets_the_count_and_other_errors_do_not_count() -> None:
    breaker = CircuitBreaker("svc", failure_threshold=2, reset_timeout_s=5, clock=Clock())
    service = Service()
    service.down = True
    with pytest.raises(BackendUnavailable):
        await breaker.call(service)
    service.down = False
    await breaker.call(service)
    assert breaker.consecutive_failures == 0

    async def bad_input() -> None:
        raise StorageError("WRONGTYPE")

    for _ in range(5):
        with pytest.raises(StorageError):
            await breaker.call(bad_input)
    assert breaker.state is BreakerState.CLOSED


async def test_timeout_counts_as_a_failure_and_is_backend_unavailable() -> None:
    breaker = CircuitBreaker("slow", failure_threshold=1, reset_timeout_s=60, variable="SLOW_URL")

    async def hang() -> None:
        await asyncio.sleep(10)

    with pytest.raises(BackendUnavailable, match=r"no answer within 0\.05s") as caught:
        await breaker.call(hang, timeout_s=0.05)
    assert caught.value.variable == "SLOW_URL"
    assert breaker.state is BreakerState.OPEN
    assert "no answer" in (breaker.snapshot().last_error or "")


async def test_a_cancelled_trial_gives_the_trial_back() -> None:
    clock = Clock()
    breaker = CircuitBreaker("svc", failure_threshold=1, reset_timeout_s=1, clock=clock)
    breaker.record_failure("down")
    clock.now += 1
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(10)

    task = asyncio.create_task(breaker.call(slow))
    await started.wait()
    assert breaker.allow() is False
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.allow() is True


def test_backoff_grows_exponentially_is_capped_and_jittered() -> None:
    assert [backoff_delay(n, base_s=1, max_s=8, jitter=lambda: 0.0) for n in range(5)] == [
        0.5,
        1,
        2,
        4,
        4,
    ]
    assert [backoff_delay(n, base_s=1, max_s=8, jitter=lambda: 1.0) for n in range(5)] == [1, 2, 4, 8, 8]


async def test_retry_is_bounded_and_sleeps_the_backoff() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    service = Service()
    service.down = True
    with pytest.raises(BackendUnavailable):
        await retry(service, attempts=4, base_s=0.1, max_s=0.3, sleep=sleep, jitter=lambda: 1.0)
    assert service.calls == 4
    assert slept == pytest.approx([0.1, 0.2, 0.3])

    flaky = Service()
    flaky.down = True

    async def recovers() -> str:
        if flaky.calls == 2:
            flaky.down = False
        return await flaky()

    assert await retry(recovers, attempts=5, sleep=sleep) == "pong"
    assert flaky.calls == 3


async def test_retry_does_not_retry_other_errors_or_an_open_circuit() -> None:
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise StorageError("bad row")

    with pytest.raises(StorageError):
        await retry(broken, attempts=3, sleep=lambda s: asyncio.sleep(0))
    assert calls == 1

    breaker = CircuitBreaker("svc", failure_threshold=1, reset_timeout_s=60)
    breaker.record_failure("down")
    service = Service()
    with pytest.raises(CircuitOpen):
        await retry(lambda: breaker.call(service), attempts=3, sleep=lambda s: asyncio.sleep(0))
    assert service.calls == 0


# --- health from breakers -----------------------------------------------------------------


async def test_health_goes_degraded_then_down_then_ok_with_the_circuits() -> None:
    clock = Clock()
    primary = CircuitBreaker("LLM openai", failure_threshold=1, reset_timeout_s=10, clock=clock)
    backup = CircuitBreaker("LLM ollama", failure_threshold=1, reset_timeout_s=10, clock=clock)
    probed = await probe("llm", "openai > ollama", Service())
    assert probed.status == "ok"

    assert with_circuits(probed, [primary.snapshot(), backup.snapshot()]) == probed

    primary.record_failure("BackendUnavailable: connection refused")
    one_open = with_circuits(probed, [primary.snapshot(), backup.snapshot()])
    assert one_open.status == "degraded"
    assert one_open.detail == "LLM openai: circuit open (BackendUnavailable: connection refused)"

    backup.record_failure("LLMTimeout: no first token within 5s")
    assert with_circuits(probed, [primary.snapshot(), backup.snapshot()]).status == "down"

    clock.now += 10  # half-open: the next call is a trial, so not every circuit is open
    assert with_circuits(probed, [primary.snapshot(), backup.snapshot()]).status == "degraded"
    primary.record_success()
    backup.record_success()
    assert with_circuits(probed, [primary.snapshot(), backup.snapshot()]).status == "ok"

    failing = Service()
    failing.down = True
    down = await probe("llm", "openai", failing)
    assert with_circuits(down, [primary.snapshot()]).status == "down"
