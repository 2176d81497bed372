"""ResilientLLM's per-backend circuit breakers, with the real OpenAI client against two fake
LLM servers, one of which goes down and comes back."""

from __future__ import annotations

import pytest

from engine.breaker import BreakerState
from engine.errors import LLMError
from engine.events import ChatMessage
from engine.llm import ResilientLLM
from inference.openai_chat import OpenAIChat
from tests.fakes.llm_server import FakeLLMServer

PROMPT = [ChatMessage("user", "hello")]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backend(server: FakeLLMServer) -> OpenAIChat:
    return OpenAIChat(base_url=server.openai_base_url, api_key="k", model="fake-model", timeout_s=5.0)


async def reply(llm: ResilientLLM) -> str:
    return "".join([chunk async for chunk in llm.stream(PROMPT, max_tokens=20, temperature=0.0)])


async def no_sleep(_: float) -> None:
    return None


async def test_a_dead_primary_is_skipped_until_its_trial_succeeds() -> None:
    clock = Clock()
    async with FakeLLMServer(reply="from primary") as primary, FakeLLMServer(reply="from backup") as backup:
        llm = ResilientLLM(
            [backend(primary), backend(backup)],
            timeout_s=5.0,
            max_retries=1,
            sleep=no_sleep,
            breaker_failures=2,
            breaker_reset_s=30.0,
            clock=clock,
        )
        await llm.start()
        try:
            assert await reply(llm) == "from primary"
            await primary.down()
            assert await reply(llm) == "from backup"  # two failed attempts: the circuit opens
            stats = llm.stats()[0]
            assert stats.circuit is BreakerState.OPEN
            tried = stats.attempts

            for _ in range(3):
                assert await reply(llm) == "from backup"
            assert llm.stats()[0].attempts == tried  # skipped: not even one attempt

            await primary.up()
            clock.now += 29.0
            assert await reply(llm) == "from backup"  # still open
            clock.now += 1.0
            assert llm.stats()[0].circuit is BreakerState.HALF_OPEN
            assert await reply(llm) == "from primary"  # the trial went through and closed it
            assert llm.stats()[0].circuit is BreakerState.CLOSED
        finally:
            await llm.aclose()


async def test_every_circuit_open_fails_fast_and_a_failed_trial_reopens() -> None:
    clock = Clock()
    async with FakeLLMServer(reply="hi") as only:
        llm = ResilientLLM(
            [backend(only)],
            timeout_s=5.0,
            max_retries=0,
            sleep=no_sleep,
            breaker_failures=1,
            breaker_reset_s=10.0,
            clock=clock,
        )
        await llm.start()
        try:
            await only.down()
            with pytest.raises(LLMError):
                await reply(llm)
            assert llm.stats()[0].circuit is BreakerState.OPEN
            tried = llm.stats()[0].attempts
            with pytest.raises(LLMError, match="circuit open"):
                await reply(llm)
            assert llm.stats()[0].attempts == tried

            clock.now += 10.0
            with pytest.raises(LLMError):
                await reply(llm)  # the trial, still down
            assert llm.stats()[0].attempts == tried + 1
            assert llm.stats()[0].circuit is BreakerState.OPEN
        finally:
            await llm.aclose()
