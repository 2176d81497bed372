"""Linking a Discord account and a Telegram account through the real clients.

``whisperengine run``'s own wiring (``build_app`` + ``start_platforms``: SQLite, embedded Chroma,
MiniLM) against the fake Discord and Telegram servers and the fake LLM server. Dana tells the
bot something on Discord, and something else on Telegram; ``/link`` on Discord answers with an
ephemeral code, ``/link CODE`` in Telegram's private chat links the accounts; then what she said
on one platform is recalled on the other, ``/memory show`` on Discord lists both, and a code is
never taken in a group chat.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.fakes.discord_server import FakeDiscord, Json
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.platforms import running_platforms
from tests.fakes.telegram_server import FakeTelegram

REPLY = "Got it."
EPHEMERAL = 64
DISCORD_FACT = "zebra-4417"
TELEGRAM_FACT = "Quokkaville"


def prompt_ending(llm: FakeLLMServer, text: str) -> str:
    """The whole prompt of the newest chat request whose last message ends with ``text``."""
    prompts = [
        r.messages
        for r in llm.requests
        if r.path.endswith("/chat/completions") and r.messages and r.messages[-1]["content"].endswith(text)
    ]
    return "\n".join(m["content"] for m in prompts[-1])


def ephemeral_text(response: Json) -> str:
    assert int(response["data"].get("flags") or 0) & EPHEMERAL, "only the user sees it"
    return str(response["data"].get("content") or "")


@pytest.mark.slow
async def test_a_discord_and_a_telegram_account_linked_share_their_memories(tmp_path: Path) -> None:
    async with FakeDiscord() as discord, FakeTelegram() as telegram, FakeLLMServer(reply=REPLY) as llm:
        guild = discord.add_guild()
        general = discord.add_channel(guild, "general")
        dana = discord.add_user("dana")
        discord.add_member(guild, dana)
        async with running_platforms(llm.openai_base_url, tmp_path, discord=discord, telegram=telegram) as (
            app,
            _,
        ):
            # Before linking: one fact on each platform.
            told = await discord.send_message(
                general, dana, f"my locker code is {DISCORD_FACT}, please remember it", mention_bot=True
            )
            await discord.wait_for_reply(told["id"])
            kate = telegram.user("Dana")
            private = telegram.private_chat(kate)
            telegram.send_text(private, kate, f"my sister lives in {TELEGRAM_FACT} near the coast")
            await telegram.wait_for(lambda: telegram.bot_texts(private) == [REPLY])
            await app.engine.writer.drain()

            # /link on Discord: an ephemeral code, with where to enter it and when it expires.
            asked = await discord.send_command("link", user=dana, channel_id=general)
            [shown] = await discord.wait_interaction(asked)
            text = ephemeral_text(shown)
            match = re.search(r"\*\*([A-Z2-9]{8})\*\*", text)
            assert match is not None, text
            code = match.group(1)
            assert f"/link {code}" in text and "expires in 10 minutes" in text

            # Posted in a Telegram group, a code is refused and stops working.
            group = telegram.group_chat("Dana's friends")
            telegram.send_text(group, kate, f"/link {code}")
            await telegram.wait_for(lambda: len(telegram.bot_texts(group)) == 1)
            assert "private chat" in telegram.bot_texts(group)[0]
            assert "no longer works" in telegram.bot_texts(group)[0]
            again = await discord.send_command("link", user=dana, channel_id=general)
            [shown] = await discord.wait_interaction(again)
            match = re.search(r"\*\*([A-Z2-9]{8})\*\*", ephemeral_text(shown))
            assert match is not None and match.group(1) != code
            code = match.group(1)

            # /link CODE in the private chat links the two accounts.
            telegram.send_text(private, kate, f"/link {code}")
            await telegram.wait_for(lambda: len(telegram.bot_texts(private)) == 2)
            linked = telegram.bot_texts(private)[-1]
            assert linked.startswith("Linked:") and "Discord" in linked
            telegram.send_text(private, kate, f"/link {code}")  # a used code gets a clear refusal
            await telegram.wait_for(lambda: len(telegram.bot_texts(private)) == 3)
            assert "already used" in telegram.bot_texts(private)[-1]

            # What was said on Discord is recalled on Telegram, and the other way round.
            telegram.send_text(private, kate, "what is my locker code?")
            await telegram.wait_for(lambda: len(telegram.bot_texts(private)) == 4)
            assert DISCORD_FACT in prompt_ending(llm, "what is my locker code?")
            question = await discord.send_message(
                general, dana, "where does my sister live?", mention_bot=True
            )
            await discord.wait_for_reply(question["id"])
            assert TELEGRAM_FACT in prompt_ending(llm, "where does my sister live?")
            await app.engine.writer.drain()

            # /memory show on Discord lists the memories of both accounts.
            shown_id = await discord.send_command("memory", "show", user=dana, channel_id=general)
            [memories] = await discord.wait_interaction(shown_id)
            listed = ephemeral_text(memories)
            assert DISCORD_FACT in listed and TELEGRAM_FACT in listed

            # Redeeming a code on the account that asked for it is refused, ephemerally.
            own = await discord.send_command("link", user=dana, channel_id=general)
            [shown] = await discord.wait_interaction(own)
            match = re.search(r"\*\*([A-Z2-9]{8})\*\*", ephemeral_text(shown))
            assert match is not None
            refused_id = await discord.send_command(
                "link", user=dana, channel_id=general, code=match.group(1)
            )
            responses = await discord.wait_interaction(refused_id, 2)
            assert "from this account" in ephemeral_text(responses[-1])
