"""Reading ``GET /api/health`` of a running app, and waiting for a background change, for tests of
components going down and back."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp

QUICK_BREAKER_SETTINGS: dict[str, Any] = {
    "web_enabled": True,  # for GET /api/health
    "web_port": 0,
    "breaker_failures": 2,
    "breaker_reset_s": 3.0,  # long enough that a busy machine still sees the circuit open
    "platform_retries": 1,
    "platform_backoff_s": 0.05,
    "platform_timeout_s": 1.0,
}
"""Settings for a platform's breaker tests: its circuit opens after two failed calls and lets a
trial through after three seconds; a call is retried once, quickly, and times out after a second."""


async def until(condition: Callable[[], object], what: str = "the condition", limit_s: float = 30.0) -> None:
    """Wait until ``condition()`` is true, polling; bounded, so a change that never happens fails
    the test (saying ``what`` it waited for)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        await asyncio.sleep(0.05)


async def api_health(app: Any) -> dict[str, Any]:
    """The body of the app's ``GET /api/health`` (the web adapter must be on: ``web_port=0``)."""
    async with aiohttp.ClientSession() as session, session.get(app.web.url + "api/health") as response:
        body: dict[str, Any] = await response.json()
        return body


async def wait_health(app: Any, component: str, status: str, within_s: float = 15.0) -> dict[str, Any]:
    """Poll ``GET /api/health`` until ``component`` has ``status``; the body that showed it."""
    body: dict[str, Any] = {}
    try:
        async with asyncio.timeout(within_s):
            while True:
                body = await api_health(app)
                if body["components"].get(component, {}).get("status") == status:
                    return body
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{component} never became {status}: {body.get('components')}") from None


class LogWatch(logging.Handler):
    """The messages logged by one logger while it is attached; ``wait_for`` one of them."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.DEBUG)
        self._logger = logging.getLogger(logger)
        self.messages: list[str] = []
        self._logged = asyncio.Event()

    def __enter__(self) -> LogWatch:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self._logged.set()

    @property
    def text(self) -> str:
        return "\n".join(self.messages)

    async def wait_for(self, text: str, within_s: float = 15.0) -> None:
        """Until a message containing ``text`` is logged."""
        async with asyncio.timeout(within_s):
            while text not in self.text:
                self._logged.clear()
                await self._logged.wait()
