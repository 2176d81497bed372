"""Outgoing calls to a chat platform's API, and the platform's health.

Each platform adapter (Discord, Telegram, Slack) sends its replies through one
:class:`PlatformGuard`, which gives every call

* a timeout (``PLATFORM_TIMEOUT_S``): a call that hangs counts as a failure;
* bounded retries with exponential backoff and jitter (``PLATFORM_RETRIES``,
  ``PLATFORM_BACKOFF_S``) for the failures the adapter calls transient (server errors,
  network errors, timeouts), never for refusals such as 400/403;
* a circuit breaker (``BREAKER_FAILURES``, ``BREAKER_RESET_S``): once that many sends in a
  row failed (after their retries), sends fail at once with ``CircuitOpen`` and a logged
  error instead of each waiting out its timeouts; after the reset time one trial send goes
  through, and its success closes the circuit again.

:meth:`PlatformGuard.health` is the platform's line in ``/api/health``, ``/status`` and
``whisperengine doctor``: ``down`` while the circuit is open, ``degraded`` while the
connection that brings messages in (gateway, polling, socket) is lost or the last send
failed, ``ok`` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from engine.breaker import BreakerState, CircuitBreaker, retry
from engine.errors import BackendUnavailable
from engine.health import ComponentHealth, Status, with_circuits

if TYPE_CHECKING:
    from config.settings import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

BACKOFF_MAX_S = 8.0


class PlatformGuard:
    """Timeout, retries with backoff and a circuit breaker around one platform's API calls."""

    def __init__(
        self,
        platform: str,
        *,
        service: str,
        timeout_s: float = 20.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        breaker_failures: int = 3,
        breaker_reset_s: float = 30.0,
        variable: str | None = None,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must not be negative")
        self.platform = platform
        self.service = service
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.variable = variable
        self.breaker = CircuitBreaker(
            service, failure_threshold=breaker_failures, reset_timeout_s=breaker_reset_s, variable=variable
        )
        self.mode = ""
        """How messages come in (gateway, polling, webhook, socket, events), for the health line."""
        self.connected: bool | None = None
        """Whether that connection is up; None where there is none to watch (webhooks)."""
        self.connection_error: str | None = None
        self.connection_check: Callable[[], bool] | None = None
        """Asked by :meth:`health` for the connection's state, where the SDK can tell it."""
        self.retried = 0
        """Calls that succeeded only after a retry, since start."""
        self._ever_connected = False

    def __repr__(self) -> str:
        return f"PlatformGuard({self.platform!r}, {self.breaker!r})"

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        transient: tuple[type[BaseException], ...] = (),
    ) -> T:
        """Run ``operation`` through the breaker, with a timeout per attempt and retries of
        ``transient`` failures (and timeouts). Raises ``CircuitOpen`` at once while the circuit
        is open; otherwise the last failure, as the operation raised it (a timeout as
        ``BackendUnavailable``)."""
        attempts = 0

        async def attempt() -> T:
            nonlocal attempts
            attempts += 1
            try:
                async with asyncio.timeout(self.timeout_s):
                    return await operation()
            except TimeoutError as exc:
                raise BackendUnavailable(
                    self.service, f"no answer within {self.timeout_s:g}s", variable=self.variable
                ) from exc

        retry_on = (*transient, BackendUnavailable)

        async def with_retries() -> T:
            return await retry(
                attempt,
                attempts=self.retries + 1,
                base_s=self.backoff_s,
                max_s=max(BACKOFF_MAX_S, self.backoff_s),
                retry_on=retry_on,
            )

        result = await self.breaker.call(with_retries, failures=retry_on)
        if attempts > 1:
            self.retried += 1
            logger.info("%s answered after %d attempts", self.service, attempts)
        return result

    def connection_changed(self, connected: bool, error: str | None = None) -> None:
        """The adapter saw its incoming connection come up or go down."""
        if connected and self.connected is False and self._ever_connected:
            logger.info("%s: the %s connection is back", self.platform, self.mode or "api")
        self._ever_connected = self._ever_connected or connected
        self.connected = connected
        self.connection_error = None if connected else error

    def health(self) -> ComponentHealth:
        if self.connection_check is not None:
            up = self.connection_check()
            if up != self.connected:
                self.connection_changed(up, None if up else "the connection is closed; reconnecting")
        status: Status = "ok"
        details: list[str] = []
        mode = self.mode or "api"
        if self.connected is False:
            status = "degraded"
            details.append(
                f"{mode} disconnected" + (f" ({self.connection_error})" if self.connection_error else "")
            )
        elif self.connected:
            details.append(f"{mode} connected")
        snapshot = self.breaker.snapshot()
        if snapshot.consecutive_failures and snapshot.state is BreakerState.CLOSED:
            status = "degraded"
            details.append(f"last send failed ({snapshot.last_error})")
        checked = ComponentHealth(self.platform, status, f"{self.platform} {mode}", "; ".join(details))
        return with_circuits(checked, [snapshot])


def platform_guard(platform: str, settings: Settings, *, service: str, variable: str | None) -> PlatformGuard:
    """The guard of one platform, as the settings configure it."""
    return PlatformGuard(
        platform,
        service=service,
        timeout_s=settings.platform_timeout_s,
        retries=settings.platform_retries,
        backoff_s=settings.platform_backoff_s,
        breaker_failures=settings.breaker_failures,
        breaker_reset_s=settings.breaker_reset_s,
        variable=variable,
    )
