"""PlatformGuard: retries of transient failures only, a timeout per attempt, the circuit, and the
health line built from them."""

from __future__ import annotations

import asyncio

import pytest

from adapters.guard import PlatformGuard
from engine.breaker import BreakerState
from engine.errors import BackendUnavailable, CircuitOpen


class Flaky(Exception):
    """A transient failure of the platform."""


class Refused(Exception):
    """The platform refused the request (a 4xx): not worth retrying."""


def guard(**options: float) -> PlatformGuard:
    values: dict[str, float] = {
        "timeout_s": 1.0,
        "retries": 2,
        "backoff_s": 0.001,
        "breaker_failures": 2,
        "breaker_reset_s": 3600,
    }
    values.update(options)
    return PlatformGuard(
        "chat",
        service="Chat API",
        timeout_s=values["timeout_s"],
        retries=int(values["retries"]),
        backoff_s=values["backoff_s"],
        breaker_failures=int(values["breaker_failures"]),
        breaker_reset_s=values["breaker_reset_s"],
        variable="CHAT_URL",
    )


class Api:
    """Fails the first ``failures`` calls with ``error``, then answers."""

    def __init__(self, failures: int, error: Exception | None = None) -> None:
        self.failures = failures
        self.error = error or Flaky("503")
        self.calls = 0

    async def send(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "sent"


async def test_transient_failures_are_retried_within_the_limit() -> None:
    g, api = guard(), Api(failures=2)
    assert await g.call(api.send, transient=(Flaky,)) == "sent"
    assert api.calls == 3
    assert g.retried == 1
    assert g.breaker.consecutive_failures == 0
    assert g.health().status == "ok"


async def test_too_many_failures_raise_the_last_one_and_count_once() -> None:
    g, api = guard(), Api(failures=10)
    with pytest.raises(Flaky):
        await g.call(api.send, transient=(Flaky,))
    assert api.calls == 3  # the first try and PLATFORM_RETRIES=2
    assert g.breaker.consecutive_failures == 1
    health = g.health()
    assert health.status == "degraded"
    assert "last send failed (Flaky: 503)" in health.detail


async def test_refusals_are_neither_retried_nor_counted() -> None:
    g, api = guard(), Api(failures=1, error=Refused("403"))
    with pytest.raises(Refused):
        await g.call(api.send, transient=(Flaky,))
    assert api.calls == 1
    assert g.breaker.consecutive_failures == 0


async def test_a_hanging_call_times_out_and_is_retried() -> None:
    g = guard(timeout_s=0.05)
    calls = 0

    async def hangs_once() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.Event().wait()
        return "sent"

    assert await g.call(hangs_once) == "sent"
    assert calls == 2


async def test_an_open_circuit_refuses_at_once_and_says_down() -> None:
    g, api = guard(retries=0), Api(failures=10)
    for _ in range(2):
        with pytest.raises(Flaky):
            await g.call(api.send, transient=(Flaky,))
    assert g.breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as refused:
        await g.call(api.send, transient=(Flaky,))
    assert isinstance(refused.value, BackendUnavailable)
    assert refused.value.variable == "CHAT_URL"
    assert api.calls == 2
    health = g.health()
    assert health.status == "down"
    assert "Chat API: circuit open" in health.detail


async def test_health_names_the_connection() -> None:
    g = guard()
    g.mode = "gateway"
    assert g.health().status == "ok"
    g.connection_changed(True)
    assert (g.health().status, g.health().detail) == ("ok", "gateway connected")
    g.connection_changed(False, "connection reset")
    assert (g.health().status, g.health().detail) == ("degraded", "gateway disconnected (connection reset)")
    g.connection_changed(True)
    assert g.health().status == "ok"


def test_retries_must_not_be_negative() -> None:
    with pytest.raises(ValueError):
        PlatformGuard("chat", service="Chat API", retries=-1)
