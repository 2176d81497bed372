"""Discord, Telegram and Slack at once: one process, one engine, through ``whisperengine run``'s
own wiring (``build_app`` + ``start_platforms``) against the three fake platforms and the fake
LLM server. Each platform is answered; what a user tells the bot is recalled for that user on
a later conversation, and never reaches another user on another platform; everything shuts
down cleanly.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
import warnings
from pathlib import Path

import aiohttp
import pytest

from tests.fakes.discord_server import FakeDiscord
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.platforms import running_platforms
from tests.fakes.slack_server import FakeSlack
from tests.fakes.telegram_server import FakeTelegram

REPLY = "Got it, thanks for telling me."
FACT = "zebra-4417"


def prompt_ending(llm: FakeLLMServer, text: str) -> str:
    """The whole prompt (every message) of the one chat request whose last message ends with ``text``."""
    [prompt] = [
        r.messages
        for r in llm.requests
        if r.path.endswith("/chat/completions") and r.messages and r.messages[-1]["content"].endswith(text)
    ]
    return "\n".join(m["content"] for m in prompt)


@pytest.mark.slow
async def test_three_platforms_share_one_engine_but_not_memories(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # Warnings are recorded under the project's filters (pyproject.toml: errors, but for
    # third-party noise); ResourceWarnings of anything left unclosed surface at gc.collect().
    with warnings.catch_warnings(record=True) as caught:
        async with (
            FakeDiscord() as discord,
            FakeTelegram() as telegram,
            FakeSlack() as slack,
            FakeLLMServer(reply=REPLY) as llm,
        ):
            guild = discord.add_guild()
            general = discord.add_channel(guild, "general")
            dana = discord.add_user("dana")
            discord.add_member(guild, dana)
            async with running_platforms(
                llm.openai_base_url,
                tmp_path,
                discord=discord,
                telegram=telegram,
                slack=slack,
                web_enabled=True,
                web_port=0,
            ) as (app, started):
                assert started == ["discord", "telegram", "slack"]
                assert app.choices["platforms"] == "discord, telegram, slack"

                # Telegram: Kate tells the bot a fact in her private chat.
                kate = telegram.user("Kate")
                private = telegram.private_chat(kate)
                telegram.send_text(private, kate, f"my locker code is {FACT}, please remember it")
                await telegram.wait_for(lambda: telegram.bot_texts(private) == [REPLY])
                await app.engine.writer.drain()

                # Slack: Leo asks about "his" locker code.
                leo = slack.add_user("leo")
                channel = "C" + uuid.uuid4().hex[:8].upper()
                await slack.send_socket_event(
                    slack.event_body(slack.mention(channel, leo, "what is my locker code?"))
                )
                await slack.wait_for(lambda: slack.bot_texts(channel) == [REPLY])

                # Discord: Dana asks the same in a server channel.
                asked = await discord.send_message(general, dana, "what is my locker code?", mention_bot=True)
                answer = await discord.wait_for_reply(asked["id"])
                await discord.wait_for(lambda: answer["content"] == REPLY)

                # Telegram again: Kate asks in a group, a conversation that has not seen the fact.
                group = telegram.group_chat("Kate's club")
                telegram.send_text(group, kate, "@whisper_test_bot what is my locker code?")
                await telegram.wait_for(lambda: telegram.bot_texts(group) == [REPLY])

                # The web chat is served by the same engine, in the same process.
                assert app.web is not None
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(
                        app.web.url + "api/chat",
                        json={"message": "what is my locker code?", "user_id": "wes"},
                    ) as response,
                ):
                    assert response.status == 200
                    assert (await response.json())["reply"] == REPLY
                await app.engine.writer.drain()

            # The bot hung up: Discord's gateway and Slack's socket are closed, Telegram stopped polling.
            await discord.wait_for(lambda: not discord.connected_shards)
            await slack.wait_for(lambda: not slack.sockets)
            polls = len(telegram.calls_of("getUpdates"))
            await telegram.settle()
            assert len(telegram.calls_of("getUpdates")) == polls

        # Shut down: all three adapters, the web chat, the engine and its stores (then the fakes).
        pending = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        assert pending == [], "every task ended with the shutdown"
        gc.collect()

    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []

    kate_later = prompt_ending(llm, "Kate: what is my locker code?")
    assert FACT in kate_later, "Kate's fact is recalled for Kate in a new conversation"
    others = {
        "slack": prompt_ending(llm, "Leo: what is my locker code?"),
        "discord": prompt_ending(llm, "Dana: what is my locker code?"),
    }
    for platform, prompt in others.items():
        assert FACT not in prompt, f"Kate's fact leaked into a {platform} user's prompt"
    chats = [r for r in llm.requests if r.path.endswith("/chat/completions")]
    assert len(chats) == 5
    assert sum(FACT in "\n".join(m["content"] for m in r.messages) for r in chats) == 2
