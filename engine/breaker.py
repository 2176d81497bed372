"""Circuit breakers and retries with backoff, for every call to an outside service.

:class:`CircuitBreaker` counts consecutive failures of one dependency::

    closed ──(failure_threshold failures in a row)──▶ open ──(reset_timeout_s)──▶ half-open
      ▲                                                 ▲                            │
      └────────────(the trial call succeeds)────────────┴──(the trial call fails)────┘

While open, calls are refused at once with :class:`engine.errors.CircuitOpen` (a
``BackendUnavailable``), so a dead service costs nothing instead of a timeout per call. Once
``reset_timeout_s`` has passed, exactly one trial call goes through (half-open); its outcome
closes or re-opens the breaker. A health probe may also report a success or a failure directly.

:func:`retry` runs an operation up to ``attempts`` times, sleeping an exponentially growing,
jittered delay (:func:`backoff_delay`) between attempts, for the failures it is told to retry.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from engine.errors import BackendUnavailable, CircuitOpen

logger = logging.getLogger(__name__)

T = TypeVar("T")

Clock = Callable[[], float]
SleepFn = Callable[[float], Awaitable[None]]


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's state, for health reports."""

    name: str
    state: BreakerState
    consecutive_failures: int
    last_error: str | None
    opened_for_s: float | None
    """How long the breaker has been open (or half-open); None while closed."""


class CircuitBreaker:
    """Closed → open after ``failure_threshold`` consecutive failures → half-open after
    ``reset_timeout_s``, letting one trial call through."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 3,
        reset_timeout_s: float = 30.0,
        variable: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_timeout_s <= 0:
            raise ValueError("reset_timeout_s must be positive")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout_s = reset_timeout_s
        self.variable = variable
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self.state.value})"

    @property
    def state(self) -> BreakerState:
        if (
            self._state is BreakerState.OPEN
            and self._opened_at is not None
            and self._clock() - self._opened_at >= self.reset_timeout_s
        ):
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def snapshot(self) -> BreakerSnapshot:
        opened_for = None if self._opened_at is None else self._clock() - self._opened_at
        return BreakerSnapshot(self.name, self.state, self._failures, self.last_error, opened_for)

    def allow(self) -> bool:
        """Whether a call may go through now. In half-open, only the first caller gets True
        (it must then report its outcome with :meth:`record_success` / :meth:`record_failure`)."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def record_success(self) -> None:
        if self._state is not BreakerState.CLOSED:
            logger.info("%s is answering again: circuit closed", self.name)
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def record_failure(self, error: str) -> None:
        self._failures += 1
        self.last_error = error
        was_trial = self._trial_running
        self._trial_running = False
        if was_trial or self._state is BreakerState.OPEN:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()  # wait a full reset timeout again
        elif self._failures >= self.failure_threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            logger.warning(
                "%s failed %d times in a row (%s): circuit open for %gs",
                self.name,
                self._failures,
                error,
                self.reset_timeout_s,
            )

    def release_trial(self) -> None:
        """Give back a half-open trial whose call ended without an outcome (it was cancelled)."""
        self._trial_running = False

    def refusal(self) -> CircuitOpen:
        remaining = 0.0
        if self._opened_at is not None:
            remaining = max(0.0, self.reset_timeout_s - (self._clock() - self._opened_at))
        detail = f"circuit open after {self._failures} failures (last: {self.last_error}); "
        detail += f"next try in {remaining:.0f}s" if remaining else "a trial call is running"
        return CircuitOpen(self.name, detail, variable=self.variable)

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        timeout_s: float | None = None,
        failures: tuple[type[BaseException], ...] = (BackendUnavailable,),
    ) -> T:
        """Run ``operation`` through the breaker.

        Refused with :class:`CircuitOpen` while open. An exception of ``failures`` counts as a
        failure and is raised; a timeout (``timeout_s``) counts as one too and is raised as
        ``BackendUnavailable``. Anything else (a caller's bad input) leaves the count as it was.
        """
        if not self.allow():
            raise self.refusal()
        outcome_known = False
        try:
            if timeout_s is None:
                result = await operation()
            else:
                try:
                    async with asyncio.timeout(timeout_s):
                        result = await operation()
                except TimeoutError as exc:
                    raise BackendUnavailable(
                        self.name, f"no answer within {timeout_s:g}s", variable=self.variable
                    ) from exc
        except failures as exc:
            outcome_known = True
            self.record_failure(_describe(exc))
            raise
        except BackendUnavailable as exc:  # our own timeout, when failures does not name it
            outcome_known = True
            self.record_failure(_describe(exc))
            raise
        except Exception:
            outcome_known = True
            self.release_trial()
            raise
        finally:
            if not outcome_known:
                self.release_trial()  # cancelled (or a success, recorded just below)
        self.record_success()
        return result


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def backoff_delay(
    retry_number: int, *, base_s: float, max_s: float, jitter: Callable[[], float] = random.random
) -> float:
    """The wait before retry ``retry_number`` (0 for the first retry): ``base_s * 2**n`` capped at
    ``max_s``, with "equal jitter" (half of it fixed, half random) so retrying clients spread out."""
    ceiling = min(max_s, base_s * (1 << retry_number))
    return ceiling / 2 + ceiling / 2 * jitter()


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = 3,
    base_s: float = 0.1,
    max_s: float = 2.0,
    retry_on: tuple[type[BaseException], ...] = (BackendUnavailable,),
    sleep: SleepFn = asyncio.sleep,
    jitter: Callable[[], float] = random.random,
) -> T:
    """Run ``operation`` at most ``attempts`` times, retrying only ``retry_on`` failures with
    exponential backoff and jitter; the last failure is raised. A :class:`CircuitOpen` refusal
    is never retried: the breaker already said the service is down."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(attempts):
        try:
            return await operation()
        except CircuitOpen:
            raise
        except retry_on as exc:
            if attempt == attempts - 1:
                raise
            delay = backoff_delay(attempt, base_s=base_s, max_s=max_s, jitter=jitter)
            logger.debug("attempt %d/%d failed (%s); retrying in %.2fs", attempt + 1, attempts, exc, delay)
            await sleep(delay)
    raise AssertionError("unreachable")
