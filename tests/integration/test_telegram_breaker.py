"""Telegram's circuit breaker, retries and timeout: the real python-telegram-bot client, in
``whisperengine run``'s code path, against the fake Bot API which fails (503), hangs, and
recovers; health is read through the real ``GET /api/health``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from adapters.telegram.adapter import TelegramAdapter
from engine.breaker import BreakerState
from tests.fakes.health import QUICK_BREAKER_SETTINGS, LogWatch, api_health, wait_health
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegram, running_telegram

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPLY = "Hello! Nice to hear from you."


@dataclass
class Bot:
    tg: FakeTelegram
    llm: FakeLLMServer
    app: Any
    adapter: TelegramAdapter


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bot]:
    async with FakeTelegram() as tg, FakeLLMServer(reply=REPLY) as llm:
        data_dir: Path = tmp_path_factory.mktemp("telegram-breaker")
        async with running_telegram(
            tg,
            llm.openai_base_url,
            data_dir,
            **QUICK_BREAKER_SETTINGS,
        ) as (app, adapter):
            yield Bot(tg, llm, app, adapter)


def texts(tg: FakeTelegram, chat: dict[str, Any]) -> list[str]:
    return tg.bot_texts(chat)


async def test_health_reports_polling_and_a_closed_circuit(bot: Bot) -> None:
    body = await wait_health(bot.app, "telegram", "ok")
    assert body["components"]["telegram"]["detail"] == "polling connected"


async def test_a_single_server_error_is_retried_and_the_reply_arrives(bot: Bot) -> None:
    tg = bot.tg
    alice = tg.user("Alice")
    chat = tg.private_chat(alice)
    tg.fail_calls(503, times=1, only=("sendMessage",))

    tg.send_text(chat, alice, "hello there")
    await tg.wait_for(lambda: texts(tg, chat) == [REPLY])

    assert tg.faulted == ["sendMessage"]
    assert bot.adapter.guard.breaker.state is BreakerState.CLOSED
    assert (await api_health(bot.app))["components"]["telegram"]["status"] == "ok"


async def test_a_hanging_call_times_out_and_is_retried(bot: Bot) -> None:
    tg = bot.tg
    bob = tg.user("Bob")
    chat = tg.private_chat(bob)
    tg.hang_calls(5.0, times=1, only=("sendMessage",))  # longer than PLATFORM_TIMEOUT_S=1

    tg.send_text(chat, bob, "are you there")
    await tg.wait_for(lambda: texts(tg, chat) == [REPLY])
    assert bot.adapter.guard.breaker.state is BreakerState.CLOSED


async def test_a_failing_api_opens_the_circuit_and_a_trial_closes_it(bot: Bot) -> None:
    tg, app, adapter = bot.tg, bot.app, bot.adapter
    dora = tg.user("Dora")
    chat = tg.private_chat(dora)
    tg.fail_calls(503)  # every call but getUpdates: messages still come in

    with LogWatch("adapters.telegram.adapter") as log:
        first = tg.send_text(chat, dora, "the first message while Telegram fails")
        body = await wait_health(app, "telegram", "down")
        await log.wait_for(f"message {first.message_id} in chat {chat['id']} was not answered")
    assert "circuit open" in body["components"]["telegram"]["detail"]
    assert body["status"] == "degraded"  # not a core component: the API still answers 200
    assert "the user's message is stored" in log.text
    stored = await app.store.user_messages(f"telegram:{dora['id']}")
    assert "the first message while Telegram fails" in [m.content for m in stored if m.role == "user"]

    # While the circuit is open, calls fail at once: nothing more reaches the API.
    await asyncio.sleep(0.3)  # the chat action and the apology of the first message are done
    asked = len(tg.faulted)
    with LogWatch("adapters.telegram.adapter") as log:
        second = tg.send_text(chat, dora, "the second message while Telegram fails")
        await log.wait_for(f"message {second.message_id} in chat {chat['id']} was not answered")
    assert "circuit open" in log.text
    assert len(tg.faulted) == asked

    # The API answers again: after BREAKER_RESET_S one trial goes through and closes the circuit.
    tg.recover()
    await asyncio.sleep(adapter.guard.breaker.reset_timeout_s)
    tg.send_text(chat, dora, "Telegram is back")
    await tg.wait_for(lambda: REPLY in texts(tg, chat))
    await wait_health(app, "telegram", "ok")
    assert adapter.guard.breaker.state is BreakerState.CLOSED
