"""Discord's circuit breaker, retries and timeout: the real discord.py client, in ``whisperengine
run``'s code path, against the fake Discord whose API fails (503), hangs, and recovers; health
is read through the real ``GET /api/health``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.discord.client import DiscordAdapter
from engine.breaker import BreakerState
from tests.fakes.discord_server import FakeDiscord, Guild, running_whisperengine
from tests.fakes.health import QUICK_BREAKER_SETTINGS, api_health, wait_health
from tests.fakes.llm_server import FakeLLMServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPLY = "Hello! Nice to hear from you."


@dataclass
class Bot:
    fake: FakeDiscord
    llm: FakeLLMServer
    app: Any
    adapter: DiscordAdapter
    guild: Guild


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bot]:
    async with FakeDiscord() as fake, FakeLLMServer(reply=REPLY) as llm:
        guild = fake.add_guild()
        fake.add_channel(guild, "general")
        data_dir: Path = tmp_path_factory.mktemp("discord-breaker")
        async with running_whisperengine(
            fake,
            llm.openai_base_url,
            data_dir,
            **QUICK_BREAKER_SETTINGS,
        ) as (app, adapter):
            yield Bot(fake, llm, app, adapter, guild)


async def idle(adapter: DiscordAdapter) -> None:
    """Until every message the adapter took has been handled."""
    await asyncio.sleep(0.1)  # the gateway event reaches the client
    async with asyncio.timeout(15):
        while adapter._tasks:
            await asyncio.wait(set(adapter._tasks))


async def test_health_reports_the_gateway_and_a_closed_circuit(bot: Bot) -> None:
    body = await wait_health(bot.app, "discord", "ok")
    discord_health = body["components"]["discord"]
    assert discord_health["detail"] == "gateway connected"
    assert body["status"] == "ok"


async def test_a_single_server_error_is_retried_and_the_reply_arrives(bot: Bot) -> None:
    fake = bot.fake
    channel = await fake.create_channel(bot.guild, "transient")
    user = fake.add_user("flaky")
    fake.add_member(bot.guild, user)
    fake.fail_channels(503, times=1, only="/messages")
    faulted = len(fake.faulted)
    retried = bot.adapter.guard.retried

    sent = await fake.send_message(channel, user, "hello there", mention_bot=True)
    reply = await fake.wait_for_reply(sent["id"])

    assert reply["content"] == REPLY
    assert len(fake.faulted) == faulted + 1
    await idle(bot.adapter)
    assert bot.adapter.guard.retried == retried + 1
    assert bot.adapter.guard.breaker.state is BreakerState.CLOSED
    assert (await api_health(bot.app))["components"]["discord"]["status"] == "ok"


async def test_a_hanging_send_times_out_and_is_retried(bot: Bot) -> None:
    fake = bot.fake
    channel = await fake.create_channel(bot.guild, "hanging")
    user = fake.add_user("patient")
    fake.add_member(bot.guild, user)
    fake.hang_channels(5.0, times=1, only="/messages")  # longer than PLATFORM_TIMEOUT_S=1

    sent = await fake.send_message(channel, user, "are you there", mention_bot=True)
    reply = await fake.wait_for_reply(sent["id"])

    assert reply["content"] == REPLY
    assert bot.adapter.guard.breaker.state is BreakerState.CLOSED
    assert [m["content"] for m in fake.bot_messages(channel)] == [REPLY]  # posted once


async def test_a_failing_api_opens_the_circuit_and_a_trial_closes_it(
    bot: Bot, caplog: pytest.LogCaptureFixture
) -> None:
    fake, app, adapter = bot.fake, bot.app, bot.adapter
    user = fake.add_user("dora")
    dm = fake.dm_channel(user)
    fake.fail_channels(503)

    with caplog.at_level(logging.ERROR, logger="bot.discord.client"):
        first = await fake.send_message(dm, user, "the first message while Discord fails")
        body = await wait_health(app, "discord", "down")
        await idle(adapter)
    assert "circuit open" in body["components"]["discord"]["detail"]
    assert body["status"] == "degraded"  # the platform is not a core component: still 200
    assert adapter.guard.breaker.state is not BreakerState.CLOSED
    assert f"message {first['id']} in channel {dm} was not answered" in caplog.text
    assert "the user's message is stored" in caplog.text
    stored = await app.store.user_messages(f"discord:{user['id']}")
    assert "the first message while Discord fails" in [m.content for m in stored if m.role == "user"]

    # While the circuit is open, a reply fails at once: nothing reaches the API.
    asked = len(fake.faulted)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="bot.discord.client"):
        second = await fake.send_message(dm, user, "the second message while Discord fails")
        await idle(adapter)
    assert f"message {second['id']} in channel {dm} was not answered" in caplog.text
    assert "circuit open" in caplog.text
    assert len(fake.faulted) == asked

    # Discord answers again: after BREAKER_RESET_S one trial goes through and closes the circuit.
    fake.recover()
    await asyncio.sleep(adapter.guard.breaker.reset_timeout_s)
    assert fake.bot_messages(dm) == []
    await fake.send_message(dm, user, "Discord is back")
    await fake.wait_for(lambda: [m["content"] for m in fake.bot_messages(dm)] == [REPLY])
    await wait_health(app, "discord", "ok")
    assert adapter.guard.breaker.state is BreakerState.CLOSED
