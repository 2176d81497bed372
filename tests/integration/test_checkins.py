"""Check-ins end to end, through ``whisperengine run``'s wiring (``build_app`` + ``start_platforms``):
the real discord.py and python-telegram-bot clients receive ``/checkin``, and at the chosen local
time (a fake clock; the scheduler's own background task) the fake platform receives the DM,
written by the fake LLM server from a prompt that holds what the user told the bot earlier.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio

from engine.checkins import CheckinScheduler
from tests.fakes.discord_server import FakeDiscord, Json
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.platforms import running_platforms
from tests.fakes.telegram_server import FakeTelegram

pytestmark = pytest.mark.asyncio(loop_scope="module")

BERLIN = ZoneInfo("Europe/Berlin")
REPLY = "That sounds like a lot, tell me more."
CHECKIN = "Good morning! How did the long run go?"
EPHEMERAL = 64


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)  # type: ignore[misc]


def script(messages: list[dict[str, Any]]) -> str:
    return CHECKIN if messages and messages[-1]["content"].startswith("(Check-in") else REPLY


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class World:
    discord: FakeDiscord
    telegram: FakeTelegram
    llm: FakeLLMServer
    app: Any
    clock: FakeClock

    @property
    def scheduler(self) -> CheckinScheduler:
        assert self.app.checkins is not None
        return self.app.checkins  # type: ignore[no-any-return]

    def checkin_prompts(self) -> list[list[dict[str, Any]]]:
        return [
            r.messages
            for r in self.llm.requests
            if r.path.endswith("/chat/completions") and r.messages[-1]["content"].startswith("(Check-in")
        ]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with FakeDiscord() as discord, FakeTelegram() as telegram, FakeLLMServer(reply=script) as llm:
        data_dir: Path = tmp_path_factory.mktemp("checkins")
        async with running_platforms(
            llm.openai_base_url, data_dir, discord=discord, telegram=telegram, checkin_tick_s=0.05
        ) as (app, started):
            assert started == ["discord", "telegram"]
            assert app.choices["checkins"] == "on (discord, telegram)"
            clock = FakeClock(berlin(2026, 3, 28, 6, 0))
            app.checkins.clock = clock
            yield World(discord, telegram, llm, app, clock)


def content(response: Json) -> str:
    return str(response["data"].get("content") or "")


async def stored_last(world: World, conversation_key: str, text: str) -> None:
    """Wait until the conversation's newest stored message is the bot's ``text`` (it is stored
    right after the platform accepted it)."""
    async with asyncio.timeout(10):
        while True:
            stored = await world.app.store.recent_messages(conversation_key, 1)
            if stored and (stored[-1].role, stored[-1].content) == ("assistant", text):
                return
            await asyncio.sleep(0.02)


async def discord_command(world: World, *sub: str, user: Json, channel: str, **options: Any) -> Json:
    interaction = await world.discord.send_command("checkin", *sub, user=user, channel_id=channel, **options)
    [response] = await world.discord.wait_interaction(interaction)
    assert int(response["data"].get("flags") or 0) & EPHEMERAL
    return response


async def test_discord_check_in_is_a_dm_at_the_local_time_drawing_on_a_memory(world: World) -> None:
    discord = world.discord
    guild = discord.add_guild()
    general = discord.add_channel(guild, "general")
    ana = discord.add_user("ana")
    discord.add_member(guild, ana)
    await discord.dispatch("GUILD_CREATE", discord._guild_payload(guild), guild_id=guild.id)
    dm = discord.dm_channel(ana)

    # Said in a server channel: the check-in's private chat has no turns, only the memory.
    told = await discord.send_message(
        general, ana, "I'm training for the Lisbon half marathon in October", mention_bot=True
    )
    await discord.wait_for(lambda: [m for m in discord.bot_messages(general) if m["content"] == REPLY])
    await world.app.engine.writer.drain()
    assert told["id"]

    world.clock.now = berlin(2026, 3, 28, 7, 0)
    response = await discord_command(
        world, "set", user=ana, channel=general, time="08:00", timezone="Europe/Berlin"
    )
    assert content(response) == (
        "Done. I check in every day at 08:00 (Europe/Berlin), by direct message on Discord. "
        "Next: Sat 28 Mar 08:00. `/checkin off` stops them."
    )

    world.clock.now = berlin(2026, 3, 28, 8, 0, 5)
    await discord.wait_for(lambda: [m for m in discord.bot_messages(dm) if m["content"] == CHECKIN])
    [prompt] = world.checkin_prompts()
    assert "Lisbon half marathon" in prompt[-2]["content"]  # the memory, in the context message
    assert "Saturday morning, 08:00" in prompt[-1]["content"]
    await stored_last(world, f"discord:{dm}", CHECKIN)
    assert [m["content"] for m in discord.bot_messages(general)] == [REPLY]  # the check-in: a DM, not here

    # Europe/Berlin springs forward that night: the next one is 08:00 CEST, 23 hours later.
    shown = await discord_command(world, "show", user=ana, channel=general)
    assert "Next: Sun 29 Mar 08:00." in content(shown)
    world.clock.now = berlin(2026, 3, 29, 8, 0, 5)
    assert world.clock.now == datetime(2026, 3, 29, 6, 0, 5, tzinfo=UTC)
    await discord.wait_for(lambda: len([m for m in discord.bot_messages(dm) if m["content"] == CHECKIN]) == 2)

    off = await discord_command(world, "off", user=ana, channel=dm)
    assert content(off) == "Check-ins are off: I won't DM you first."
    assert await world.app.checkins.schedule_of(f"discord:{ana['id']}") is None


async def test_discord_bad_input_gets_an_ephemeral_error(world: World) -> None:
    discord = world.discord
    bo = discord.add_user("bo")
    dm = discord.dm_channel(bo)
    bad_time = await discord_command(world, "set", user=bo, channel=dm, time="8am", timezone="Europe/Berlin")
    assert "'8am' is not a time of day: use HH:MM on the 24-hour clock" in content(bad_time)
    bad_zone = await discord_command(
        world, "set", user=bo, channel=dm, time="08:00", timezone="Berlin/Europe"
    )
    assert "Unknown time zone 'Berlin/Europe'" in content(bad_zone)
    none = await discord_command(world, "show", user=bo, channel=dm)
    assert content(none).startswith("You have no check-ins.")


async def test_telegram_check_in_is_a_private_message_drawing_on_a_memory(world: World) -> None:
    tg = world.telegram
    kim = tg.user("Kim")
    chat = tg.private_chat(kim)
    tg.send_text(chat, kim, "I was really anxious about my thesis defense yesterday")
    await tg.wait_for(lambda: tg.bot_texts(chat) == [REPLY])
    await world.app.engine.writer.drain()

    world.clock.now = berlin(2026, 6, 10, 20, 0)
    tg.send_text(chat, kim, "/checkin 21:30 Europe/Berlin")
    await tg.wait_for(lambda: len(tg.bot_texts(chat)) == 2)
    assert tg.bot_texts(chat)[1] == (
        "Done. I check in every day at 21:30 (Europe/Berlin), by direct message on Telegram. "
        "Next: Wed 10 Jun 21:30. /checkin off stops them."
    )
    tg.send_text(chat, kim, "/checkin")
    await tg.wait_for(lambda: len(tg.bot_texts(chat)) == 3)
    assert tg.bot_texts(chat)[2].startswith("I check in every day at 21:30 (Europe/Berlin)")

    before = len(world.checkin_prompts())
    world.clock.now = berlin(2026, 6, 10, 21, 30, 5)
    await tg.wait_for(lambda: len(tg.bot_texts(chat)) == 4)
    assert tg.bot_texts(chat)[3] == CHECKIN
    prompt = world.checkin_prompts()[before]
    # What Kim said earlier in this chat reaches the LLM once: as the turn, which the memory
    # made of it does not repeat.
    assert [m["role"] for m in prompt if "thesis defense" in m["content"]] == ["user"]
    assert "Wednesday evening, 21:30" in prompt[-1]["content"]
    await stored_last(world, f"telegram:{chat['id']}", CHECKIN)

    tg.send_text(chat, kim, "/checkin off")
    await tg.wait_for(lambda: len(tg.bot_texts(chat)) == 5)
    assert tg.bot_texts(chat)[4] == "Check-ins are off: I won't write first."


async def test_telegram_bad_input_gets_a_clear_answer(world: World) -> None:
    tg = world.telegram
    lea = tg.user("Lea")
    chat = tg.private_chat(lea)
    answers = {
        "/checkin 25:00 Europe/Berlin": "'25:00' is not a time of day",
        "/checkin 08:00 Europe/Berln": "Unknown time zone 'Europe/Berln'",
        "/checkin 08:00": "Usage: /checkin HH:MM TIME_ZONE",
        "/checkin off": "You have no check-ins.",
    }
    for n, (command, expected) in enumerate(answers.items(), start=1):
        tg.send_text(chat, lea, command)
        await tg.wait_for(lambda n=n: len(tg.bot_texts(chat)) == n)  # type: ignore[misc]
        assert tg.bot_texts(chat)[-1].startswith(expected), command
    assert "Did you mean Europe/Berlin" in tg.bot_texts(chat)[1]
    assert await world.app.checkins.schedule_of(f"telegram:{lea['id']}") is None
