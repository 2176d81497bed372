"""The Discord adapter end to end: the real discord.py client, in ``whisperengine run``'s code
path (``build_app`` + ``start_discord``), against the fake Discord and the fake LLM server.

One bot serves the whole module; every test uses its own channel and users.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from adapters.textsplit import split_message
from bot.discord.client import VOICE_DISABLED, DiscordAdapter
from bot.discord.config import DISCORD_LIMIT
from bot.discord.settings import ChannelMode, GuildRateLimit, ThreadMode
from engine.errors import InputError
from engine.pipeline import APOLOGY
from engine.ports import Transcript
from tests.fakes.discord_server import FakeDiscord, Guild, Json, running_whisperengine
from tests.fakes.llm_server import FakeLLMServer
from tests.unit.test_textsplit import gives_back

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEFAULT_REPLY = "Hello! Nice to hear from you."
STORY = (
    "Once upon a time there was a small bot that lived in a Discord server. "
    "Every day it answered questions, one token at a time, and edited its messages "
    "patiently until the whole story was told. The end."
)


def long_answer() -> str:
    """About 5000 characters of prose with a python block in the middle."""
    prose = "This paragraph explains the idea in some detail, sentence after sentence. " * 14
    code = "\n".join(f"    total += step({i})  # accumulate the {i}th value" for i in range(45))
    block = f"```python\ndef run():\n    total = 0\n{code}\n    return total\n```"
    text = f"{prose}\n\n{block}\n\n{prose}\n\n{prose}"
    return text[:5000]


class Script:
    """The fake LLM's replies: the first marker found in the user's message picks the reply."""

    def __init__(self) -> None:
        self.replies: dict[str, str] = {"LONG5000": long_answer(), "STORY": STORY}

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        last = messages[-1]["content"] if messages else ""
        for marker, reply in self.replies.items():
            if marker in last:
                return reply
        return DEFAULT_REPLY


class RecordingSpeechToText:
    """A test double of the SpeechToText port."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str]] = []
        self.transcript = "what is the weather like on mars"
        self.fail_with: Exception | None = None
        self.delay_s = 0.0

    @property
    def name(self) -> str:
        return "recording"

    async def transcribe(self, audio: bytes, *, content_type: str = "") -> Transcript:
        self.calls.append((audio, content_type))
        await asyncio.sleep(self.delay_s)
        if self.fail_with is not None:
            raise self.fail_with
        return Transcript(self.transcript, language="en", duration_s=2.5)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


@dataclass
class World:
    fake: FakeDiscord
    llm: FakeLLMServer
    app: Any
    adapter: DiscordAdapter
    guild: Guild
    stt: RecordingSpeechToText
    script: Script
    users: list[Json] = field(default_factory=list)

    def user(self, name: str) -> Json:
        user = self.fake.add_user(f"{name}{len(self.users)}")
        self.fake.add_member(self.guild, user)
        self.users.append(user)
        return user

    async def channel(self, name: str) -> str:
        return await self.fake.create_channel(self.guild, name)

    def prompts_containing(self, text: str) -> list[list[dict[str, Any]]]:
        return [
            r.messages
            for r in self.llm.requests
            if r.path.endswith("/chat/completions") and r.messages and text in r.messages[-1]["content"]
        ]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    script = Script()
    stt = RecordingSpeechToText()
    async with FakeDiscord() as fake, FakeLLMServer(reply=script) as llm:
        guild = fake.add_guild()
        fake.add_channel(guild, "general")
        data_dir: Path = tmp_path_factory.mktemp("discord-bot")
        async with running_whisperengine(fake, llm.openai_base_url, data_dir, stt=stt) as (app, adapter):
            yield World(fake, llm, app, adapter, guild, stt, script)


def posted_content(fake: FakeDiscord, message_id: str) -> str:
    """The content the bot first posted for ``message_id`` (before any edit)."""
    for call in fake.requests:
        if call.method == "POST" and call.path.endswith("/messages") and call.json:
            ref = call.json.get("message_reference") or {}
            if str(ref.get("message_id")) == message_id:
                return str(call.json.get("content"))
    raise AssertionError(f"no reply posted to {message_id}")


async def final_reply(world: World, message_id: str, expected: str) -> Json:
    reply = await world.fake.wait_for_reply(message_id)
    await world.fake.wait_for(lambda: world.fake.messages[reply["id"]]["content"] == expected)
    return world.fake.messages[reply["id"]]


# --- triggers ---------------------------------------------------------------------------------


async def test_mention_gets_a_streamed_reply_edited_to_the_full_text(world: World) -> None:
    fake, llm = world.fake, world.llm
    channel = await world.channel("stream")
    alice = world.user("alice")
    llm.delay_s, llm.chunk_size = 0.02, 3
    try:
        sent = await fake.send_message(channel, alice, "tell me a STORY please", mention_bot=True)
        reply = await final_reply(world, sent["id"], STORY)
    finally:
        llm.delay_s, llm.chunk_size = 0.0, 4

    first = posted_content(fake, sent["id"])
    assert first and STORY.startswith(first) and len(first) < len(STORY)
    edits = [e["content"] for e in fake.edits if e["id"] == reply["id"]]
    assert edits and edits[-1] == STORY
    assert all(STORY.startswith(e) for e in edits)
    assert [len(e) for e in edits] == sorted(len(e) for e in edits)
    # Typing was shown before the first message was posted.
    calls = [(c.method, c.path) for c in fake.requests]
    typing_at = calls.index(("POST", f"/channels/{channel}/typing"))
    assert typing_at < calls.index(("POST", f"/channels/{channel}/messages"))
    # The mention was stripped; the speaker's name is in the group-chat prompt.
    [prompt] = world.prompts_containing("STORY")
    assert prompt[-1]["content"] == f"{alice['global_name']}: tell me a STORY please"
    # The reply pings nobody.
    post = next(c for c in fake.requests if c.method == "POST" and c.path == f"/channels/{channel}/messages")
    assert post.json["allowed_mentions"]["parse"] == []


async def test_5000_character_answer_is_split_with_nothing_lost(world: World) -> None:
    fake = world.fake
    channel = await world.channel("long")
    user = world.user("bob")
    expected = long_answer()
    parts = split_message(expected, DISCORD_LIMIT)
    assert len(expected) == 5000 and len(parts) >= 3

    sent = await fake.send_message(channel, user, "explain it all LONG5000", mention_bot=True)
    await fake.wait_for_reply(sent["id"])
    await fake.wait_for(lambda: [m["content"] for m in fake.bot_messages(channel)] == parts)

    contents = [m["content"] for m in fake.bot_messages(channel)]
    assert all(len(c) <= 2000 for c in contents)
    assert gives_back(contents, expected)
    reopened = [c for c in contents if c.startswith("```python\n")]
    assert reopened, "the code block was split and reopened with its language"
    # Only the first part replies to the user; the rest follow in order.
    assert fake.bot_messages(channel)[0]["message_reference"]["message_id"] == sent["id"]


async def test_direct_message_is_answered_without_a_mention(world: World) -> None:
    fake = world.fake
    carol = fake.add_user("carol")
    dm = fake.dm_channel(carol)
    await fake.send_message(dm, carol, "hello there in private")
    await fake.wait_for(lambda: [m for m in fake.bot_messages(dm) if m["content"] == DEFAULT_REPLY])
    [prompt] = world.prompts_containing("hello there in private")
    assert prompt[-1]["content"] == "hello there in private"  # a DM is not a group chat


async def test_replying_to_the_bot_triggers_and_plain_chatter_does_not(world: World) -> None:
    fake = world.fake
    channel = await world.channel("chain")
    dave = world.user("dave")
    first = await fake.send_message(channel, dave, "first question", mention_bot=True)
    bot_reply = await fake.wait_for_reply(first["id"])

    chatter = await fake.send_message(channel, dave, "just talking to friends here")
    follow_up = await fake.send_message(channel, dave, "and a follow-up", reply_to=bot_reply["id"])
    await fake.wait_for_reply(follow_up["id"])

    assert fake.replies_to(chatter["id"]) == []
    assert world.prompts_containing("just talking to friends") == []
    # The follow-up's context holds the earlier exchange of this channel.
    [prompt] = world.prompts_containing("and a follow-up")
    assert any("first question" in m["content"] for m in prompt[:-1])


async def test_bots_own_messages_and_everyone_pings_are_ignored(world: World) -> None:
    fake = world.fake
    channel = await world.channel("ignored")
    eve = world.user("eve")
    other_bot = fake.add_user("otherbot", bot=True)
    fake.add_member(world.guild, other_bot)
    from_bot = await fake.send_message(channel, other_bot, "hi bot", mention_bot=True)
    everyone = await fake.send_message(channel, eve, "@everyone meeting now", mention_everyone=True)
    await world.adapter.settings.set_channel_mode(int(channel), ChannelMode.ALWAYS)
    everyone_always = await fake.send_message(channel, eve, "@everyone lunch", mention_everyone=True)
    marker = await fake.send_message(channel, eve, "a normal message")
    await fake.wait_for_reply(marker["id"])

    for ignored in (from_bot, everyone, everyone_always):
        assert fake.replies_to(ignored["id"]) == []
    # The echo of the bot's own replies (MESSAGE_CREATE) is never answered.
    assert all(not fake.replies_to(m["id"]) for m in fake.bot_messages(channel))


async def test_other_bots_are_answered_when_configured(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    channel = await world.channel("bots-welcome")
    helper = fake.add_user("helperbot", bot=True)
    fake.add_member(world.guild, helper)
    saved = adapter.config
    adapter.config = dataclasses.replace(saved, ignore_bots=False)
    try:
        sent = await fake.send_message(channel, helper, "hello from a bot", mention_bot=True)
        reply = await fake.wait_for_reply(sent["id"])
    finally:
        adapter.config = saved
    assert reply["content"] == DEFAULT_REPLY


# --- threads ------------------------------------------------------------------------------------


async def test_thread_is_its_own_conversation(world: World) -> None:
    fake, app = world.fake, world.app
    channel = await world.channel("threads")
    frank = world.user("frank")
    await fake.send_message(channel, frank, "channel secret is BLUE", mention_bot=True)
    await fake.wait_for(lambda: fake.bot_messages(channel))
    thread = await fake.create_thread(channel, "side topic", frank)
    sent = await fake.send_message(thread, frank, "what colour did I say?", mention_bot=True)
    reply = await fake.wait_for_reply(sent["id"])
    assert reply["channel_id"] == thread

    [prompt] = world.prompts_containing("what colour did I say?")
    # the thread's own history (between the persona and the context message, which may recall
    # long-term memories of the user) holds nothing of the channel's
    assert not any("BLUE" in m["content"] for m in prompt[1:-2])
    await app.engine.writer.drain()
    stored = await app.store.recent_messages(f"discord:{channel}:{thread}", 10)
    assert [m.content for m in stored] == ["what colour did I say?", DEFAULT_REPLY]


async def test_thread_mode_always_opens_a_thread_and_answers_there(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    channel = await world.channel("always-threads")
    gina = world.user("gina")
    await adapter.settings.set_thread_mode(int(world.guild.id), ThreadMode.ALWAYS)
    try:
        sent = await fake.send_message(channel, gina, "let's plan a trip", mention_bot=True)
        thread_id = await fake.wait_for(lambda: sent["id"] in world.guild.threads and sent["id"])
        await fake.wait_for(lambda: fake.bot_messages(thread_id))
        # Follow-ups in the bot's thread need no mention.
        follow = await fake.send_message(thread_id, gina, "somewhere warm")
        await fake.wait_for(lambda: len(fake.bot_messages(thread_id)) == 2)
    finally:
        await adapter.settings.set_thread_mode(int(world.guild.id), None)
    assert fake.bot_messages(channel) == []
    assert world.guild.threads[thread_id]["name"] == "let's plan a trip"
    [prompt] = world.prompts_containing("somewhere warm")
    assert any("let's plan a trip" in m["content"] for m in prompt[:-1])
    assert follow["channel_id"] == thread_id


async def test_thread_mode_auto_moves_a_long_reply_into_a_thread(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    channel = await world.channel("auto-threads")
    hal = world.user("hal")
    await adapter.settings.set_thread_mode(int(world.guild.id), ThreadMode.AUTO)
    try:
        sent = await fake.send_message(channel, hal, "the LONG5000 version", mention_bot=True)
        first = await fake.wait_for_reply(sent["id"])
        parts = split_message(long_answer(), DISCORD_LIMIT)
        await fake.wait_for(
            lambda: (
                [m["content"] for m in fake.bot_messages(channel)] == [parts[0]]
                and [m["content"] for m in fake.bot_messages(first["id"])] == parts[1:]
            )
        )
    finally:
        await adapter.settings.set_thread_mode(int(world.guild.id), None)
    assert [m["content"] for m in fake.bot_messages(channel)] == [parts[0]]
    assert [m["content"] for m in fake.bot_messages(first["id"])] == parts[1:]


# --- attachments --------------------------------------------------------------------------------


async def test_voice_message_is_transcribed_and_answered(world: World) -> None:
    fake, stt = world.fake, world.stt
    channel = await world.channel("voice")
    ivy = world.user("ivy")
    audio = b"OggS" + bytes(range(200))
    voice = fake.attachment("voice-message.ogg", audio, "audio/ogg", duration_secs=2.5)
    sent = await fake.send_message(channel, ivy, "", mention_bot=True, attachments=[voice], voice=True)
    reply = await fake.wait_for_reply(sent["id"])
    assert reply["content"] == DEFAULT_REPLY
    assert stt.calls[-1] == (audio, "audio/ogg")
    [prompt] = world.prompts_containing(stt.transcript)
    assert prompt[-1]["content"] == f"{ivy['global_name']}: {stt.transcript}"


async def test_a_channels_messages_are_answered_in_the_order_they_came(world: World) -> None:
    fake, stt = world.fake, world.stt
    channel = await world.channel("in-order")
    ivy = world.user("ivy")
    voice = fake.attachment("voice-message.ogg", b"OggS" + bytes(200), "audio/ogg", duration_secs=2.5)
    stt.delay_s = 0.5  # the first message takes longer to prepare than the second
    try:
        first = await fake.send_message(channel, ivy, "", mention_bot=True, attachments=[voice], voice=True)
        second = await fake.send_message(channel, ivy, "and a quick text", mention_bot=True)
        await fake.wait_for_reply(second["id"])
        await fake.wait_for_reply(first["id"])
    finally:
        stt.delay_s = 0.0

    def first_post(message_id: str) -> int:
        return next(
            i
            for i, call in enumerate(fake.requests)
            if call.method == "POST"
            and call.json
            and str((call.json.get("message_reference") or {}).get("message_id")) == message_id
        )

    assert first_post(first["id"]) < first_post(second["id"])
    prompts = [r.messages[-1]["content"] for r in world.llm.requests if r.messages]
    assert prompts.index(f"{ivy['global_name']}: {stt.transcript}") < prompts.index(
        f"{ivy['global_name']}: and a quick text"
    )


async def test_a_busy_channel_is_answered_in_parallel_each_reply_to_its_message(world: World) -> None:
    fake, llm = world.fake, world.llm
    channel = await world.channel("busy")
    people = [world.user(f"guest{i}") for i in range(6)]
    llm.first_chunk_delay_s, llm.most_in_flight = 1.0, 0  # a slow model: parallel or nothing
    try:
        texts = [f"busy note {i} about my garden" for i in range(len(people))]
        sent = [
            await fake.send_message(channel, person, text, mention_bot=True)
            for person, text in zip(people, texts, strict=True)
        ]
        for message in sent:
            await fake.wait_for_reply(message["id"])
    finally:
        llm.first_chunk_delay_s = 0.0
    # generation overlapped: more than one answer was being written at once
    assert llm.most_in_flight >= 2
    # every message got exactly one reply, posted as a reply to it
    for message in sent:
        assert len(fake.replies_to(message["id"])) == 1
    # each message's prompt held the messages that came before it, in order
    for i, (person, text) in enumerate(zip(people, texts, strict=True)):
        [prompt] = world.prompts_containing(text)
        assert prompt[-1]["content"] == f"{person['global_name']}: {text}"
        earlier = [m["content"] for m in prompt[:-1] if m["role"] == "user"]
        said = [f"{people[j]['global_name']}: {texts[j]}" for j in range(i)]
        assert [line for line in earlier if line in said] == said


async def test_unusable_audio_gets_the_reason(world: World) -> None:
    fake, stt = world.fake, world.stt
    channel = await world.channel("bad-voice")
    max_ = world.user("max")
    voice = fake.attachment("voice-message.ogg", b"not audio", "audio/ogg", duration_secs=1.0)
    stt.fail_with = InputError("the audio file is corrupt")
    try:
        sent = await fake.send_message(channel, max_, "", mention_bot=True, attachments=[voice], voice=True)
        reply = await fake.wait_for_reply(sent["id"])
    finally:
        stt.fail_with = None
    assert reply["content"] == "Sorry, I couldn't use that audio: the audio file is corrupt"


async def test_voice_without_speech_to_text_says_so(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    channel = await world.channel("no-voice")
    jo = world.user("jo")
    voice = fake.attachment("voice-message.ogg", b"OggS....", "audio/ogg", duration_secs=1.0)
    saved, adapter.stt = adapter.stt, None
    try:
        sent = await fake.send_message(channel, jo, "", mention_bot=True, attachments=[voice], voice=True)
        reply = await fake.wait_for_reply(sent["id"])
    finally:
        adapter.stt = saved
    assert reply["content"] == VOICE_DISABLED


async def test_audio_file_with_text_and_no_speech_to_text_is_answered_with_a_note(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    channel = await world.channel("song")
    lou = world.user("lou")
    song = fake.attachment("song.mp3", b"ID3....", "audio/mpeg")
    saved, adapter.stt = adapter.stt, None
    try:
        sent = await fake.send_message(
            channel, lou, "what do you think of my song", mention_bot=True, attachments=[song]
        )
        reply = await fake.wait_for_reply(sent["id"])
    finally:
        adapter.stt = saved
    assert reply["content"] == DEFAULT_REPLY
    [prompt] = world.prompts_containing("what do you think of my song")
    assert prompt[-1]["content"].endswith("[attached: song.mp3 (audio/mpeg); speech-to-text is off]")


async def test_other_attachments_are_noted_in_the_message(world: World) -> None:
    fake = world.fake
    channel = await world.channel("files")
    kim = world.user("kim")
    photo = fake.attachment("photo.png", b"\x89PNG....", "image/png")
    sent = await fake.send_message(channel, kim, "look at this", mention_bot=True, attachments=[photo])
    await fake.wait_for_reply(sent["id"])
    [prompt] = world.prompts_containing("look at this")
    assert prompt[-1]["content"].endswith("look at this\n[attached: photo.png (image/png)]")


# --- limits and failures ------------------------------------------------------------------------


async def test_rate_limit_on_an_edit_is_honoured_and_the_text_is_complete(world: World) -> None:
    fake, llm = world.fake, world.llm
    channel = await world.channel("429")
    leo = world.user("leo")
    llm.delay_s, llm.chunk_size = 0.02, 3
    fake.rate_limit_edits(1, retry_after=0.3)
    try:
        sent = await fake.send_message(channel, leo, "a STORY with a 429", mention_bot=True)
        reply = await final_reply(world, sent["id"], STORY)
    finally:
        llm.delay_s, llm.chunk_size = 0.0, 4
    limited = [e for e in fake.edits if e["id"] == reply["id"] and e.get("rate_limited")]
    assert len(limited) == 1
    later = [e for e in fake.edits if e["id"] == reply["id"] and e["at"] > limited[0]["at"]]
    assert later and later[-1]["content"] == STORY


async def test_rate_limited_user_gets_a_friendly_reply(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    channel = await world.channel("limits")
    max_ = world.user("max")
    await adapter.settings.set_rate_limit(int(world.guild.id), GuildRateLimit(1, 3600))
    try:
        first = await fake.send_message(channel, max_, "first of two", mention_bot=True)
        await fake.wait_for_reply(first["id"])
        second = await fake.send_message(channel, max_, "second one, too fast", mention_bot=True)
        reply = await fake.wait_for_reply(second["id"])
    finally:
        await adapter.settings.set_rate_limit(int(world.guild.id), None)
    assert "faster than this server allows" in reply["content"]
    assert world.prompts_containing("second one, too fast") == []


async def test_bot_wide_rate_limit_answers_with_the_engines_friendly_text(world: World) -> None:
    fake = world.fake
    channel = await world.channel("chatty")
    pia = world.user("pia")
    limit = world.app.settings.rate_limit_messages
    for i in range(limit):
        sent = await fake.send_message(channel, pia, f"chatty message {i}", mention_bot=True)
        assert (await fake.wait_for_reply(sent["id"]))["content"] == DEFAULT_REPLY
    over = await fake.send_message(channel, pia, "one too many", mention_bot=True)
    reply = await fake.wait_for_reply(over["id"])
    assert reply["content"].startswith(
        f"You're sending messages faster than I can keep up with, {pia['global_name']}"
    )
    assert world.prompts_containing("one too many") == []


async def test_llm_down_posts_an_apology(world: World, caplog: pytest.LogCaptureFixture) -> None:
    fake, llm = world.fake, world.llm
    channel = await world.channel("down")
    ned = world.user("ned")
    await llm.down()
    try:
        sent = await fake.send_message(channel, ned, "are you there?", mention_bot=True)
        reply = await fake.wait_for_reply(sent["id"], timeout_s=30)
    finally:
        await llm.up()
    assert reply["content"] == APOLOGY
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "engine.pipeline"]
    assert errors and "LLM failed" in errors[-1].getMessage()


async def test_channel_mode_always_and_off(world: World) -> None:
    fake, adapter = world.fake, world.adapter
    always = await world.channel("always")
    off = await world.channel("off")
    olga = world.user("olga")
    await adapter.settings.set_channel_mode(int(always), ChannelMode.ALWAYS)
    await adapter.settings.set_channel_mode(int(off), ChannelMode.OFF)
    ignored = await fake.send_message(off, olga, "hello off channel", mention_bot=True)
    answered = await fake.send_message(always, olga, "hello always channel")
    await fake.wait_for_reply(answered["id"])
    await asyncio.sleep(0)
    assert fake.replies_to(ignored["id"]) == []
    assert world.prompts_containing("hello off channel") == []
