"""The chat LLM as the memory jobs use it: off the reply path, short, cheap and bounded.

:class:`BackgroundLLM` asks the engine's LLM port for one complete answer with a low
temperature, a bounded ``max_tokens`` and an overall timeout, and takes a slot of a shared
:class:`CallBudget` (at most ``calls_per_minute`` calls in any 60 s) before each call, waiting
for one when the budget is spent. A failed or timed-out call returns ``None``: every caller
has a rule-based path to fall back on, so a down LLM never stops memory care.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from engine.errors import BackendUnavailable, LLMError
from engine.events import ChatMessage
from engine.ports import LLM

logger = logging.getLogger(__name__)

WINDOW_S = 60.0


class CallBudget:
    """At most ``calls_per_minute`` calls in any sliding 60-second window.

    ``clock`` and ``sleep`` are injectable so the bound can be checked without waiting.
    """

    def __init__(
        self,
        calls_per_minute: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if calls_per_minute < 1:
            raise ValueError("calls_per_minute must be at least 1")
        self.calls_per_minute = calls_per_minute
        self._clock = clock
        self._sleep = sleep
        self._calls: deque[float] = deque()
        self._lock = asyncio.Lock()

    def _forget_old(self, now: float) -> None:
        while self._calls and self._calls[0] <= now - WINDOW_S:
            self._calls.popleft()

    def available(self) -> bool:
        """Whether a call could start now without waiting."""
        self._forget_old(self._clock())
        return len(self._calls) < self.calls_per_minute

    async def acquire(self) -> None:
        """Take a slot, waiting until the oldest call of the window is a minute old if needed."""
        async with self._lock:
            while True:
                now = self._clock()
                self._forget_old(now)
                if len(self._calls) < self.calls_per_minute:
                    self._calls.append(now)
                    return
                await self._sleep(self._calls[0] + WINDOW_S - now)


class BackgroundLLM:
    """One bounded completion at a time for the memory jobs; ``None`` when the LLM fails."""

    def __init__(
        self,
        llm: LLM,
        budget: CallBudget,
        *,
        max_tokens: int = 256,
        temperature: float = 0.1,
        timeout_s: float = 30.0,
    ) -> None:
        self._llm = llm
        self.budget = budget
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.calls = 0
        self.failures = 0

    async def complete(self, messages: Sequence[ChatMessage]) -> str | None:
        """The LLM's whole answer, or None when it failed, timed out or said nothing."""
        await self.budget.acquire()
        self.calls += 1
        parts: list[str] = []
        stream: AsyncIterator[str] | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                stream = self._llm.stream(messages, max_tokens=self.max_tokens, temperature=self.temperature)
                async for chunk in stream:
                    parts.append(chunk)
        except (LLMError, BackendUnavailable) as exc:
            self.failures += 1
            logger.warning("memory LLM call failed: %s", exc)
            return None
        except TimeoutError:
            self.failures += 1
            logger.warning("memory LLM call gave no complete answer within %gs", self.timeout_s)
            return None
        finally:  # a stream left early (timeout) lets go of its connection at once
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()
        text = "".join(parts).strip()
        return text or None
