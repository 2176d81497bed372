"""python-telegram-bot's HTTP transport (its ``BaseRequest`` seam) with the platform guard.

:class:`GuardedRequest` carries every Bot API call except ``getUpdates``: each goes through the
Telegram :class:`adapters.guard.PlatformGuard` (a timeout, retries with backoff of network
errors, timeouts and 5xx answers, and the circuit breaker). While the circuit is open a call
fails at once with :class:`TelegramUnavailable`, a ``NetworkError`` that the adapter's
``telegram_call`` turns into ``BackendUnavailable`` like any other outage.

:class:`WatchedRequest` carries ``getUpdates`` (long polling) unguarded — the updater retries
polling with its own backoff — and tells the guard whether polling works, for the health line.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from telegram._utils.defaultvalue import DEFAULT_NONE
from telegram._utils.types import ODVInput
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

from adapters.guard import PlatformGuard
from engine.errors import BackendUnavailable, CircuitOpen


class TelegramUnavailable(NetworkError):
    """A Bot API call refused without trying: Telegram's circuit is open."""


class _ServerError(Exception):
    """A 5xx answer, retried like a network error; given back to PTB when retries run out."""

    def __init__(self, code: int, payload: bytes) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code
        self.payload = payload


Send = Callable[[], Awaitable[tuple[int, bytes]]]


class _ForwardingRequest(BaseRequest):
    """``inner`` with :meth:`_forward` around each call, for ``guard``."""

    def __init__(self, inner: BaseRequest, guard: PlatformGuard) -> None:
        self._inner = inner
        self._guard = guard

    @property
    def read_timeout(self) -> float | None:
        return self._inner.read_timeout

    async def initialize(self) -> None:
        await self._inner.initialize()

    async def shutdown(self) -> None:
        await self._inner.shutdown()

    async def do_request(  # noqa: PLR0917 (PTB's signature)
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODVInput[float] = DEFAULT_NONE,
        write_timeout: ODVInput[float] = DEFAULT_NONE,
        connect_timeout: ODVInput[float] = DEFAULT_NONE,
        pool_timeout: ODVInput[float] = DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        send = functools.partial(
            self._inner.do_request,
            url,
            method,
            request_data,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            connect_timeout=connect_timeout,
            pool_timeout=pool_timeout,
        )
        return await self._forward(send)

    async def _forward(self, send: Send) -> tuple[int, bytes]:
        raise NotImplementedError


class GuardedRequest(_ForwardingRequest):
    """``inner`` with ``guard`` around each call."""

    async def _forward(self, send: Send) -> tuple[int, bytes]:
        async def attempt() -> tuple[int, bytes]:
            code, payload = await send()
            if code >= 500:
                raise _ServerError(code, payload)
            return code, payload

        try:
            return await self._guard.call(attempt, transient=(NetworkError, _ServerError))
        except _ServerError as exc:
            return exc.code, exc.payload  # PTB raises its NetworkError for it
        except CircuitOpen as exc:
            raise TelegramUnavailable(exc.detail) from exc
        except BackendUnavailable as exc:  # the guard's own timeout
            raise TimedOut(exc.detail) from exc


class WatchedRequest(_ForwardingRequest):
    """``inner`` as it is, reporting to ``guard`` whether its calls (long polls) succeed."""

    async def _forward(self, send: Send) -> tuple[int, bytes]:
        try:
            code, payload = await send()
        except NetworkError as exc:
            self._guard.connection_changed(False, f"{type(exc).__name__}: {exc}")
            raise
        if code >= 500:
            self._guard.connection_changed(False, f"HTTP {code}")
        elif 200 <= code < 300:
            self._guard.connection_changed(True)
        return code, payload
