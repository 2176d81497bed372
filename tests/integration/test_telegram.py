"""The Telegram adapter end to end: the real python-telegram-bot client, in ``whisperengine run``'s
code path (``build_app`` + ``start_telegram``), against the fake Bot API and the fake LLM server.

One polling bot serves most of the module; every test uses its own chats and users. Webhook
mode and start-up failures build their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import av
import numpy as np
import pytest
import pytest_asyncio

from adapters.telegram.adapter import (
    ADMINS_ONLY,
    FORGET_CANCELLED,
    FORGET_QUESTION,
    NOT_YOUR_BUTTON,
    SECRET_HEADER,
    TELEGRAM_LIMIT,
    VOICE_EMPTY,
    VOICE_NOT_SET_UP,
    VOICE_TTS_NOT_SET_UP,
    VOICE_UNREADABLE,
    TelegramAdapter,
    split_for_telegram,
)
from adapters.textsplit import utf16_len
from bot.app import build_app
from bot.platforms import start_telegram
from config.settings import Settings
from engine.errors import BackendUnavailable, ConfigError, InputError
from engine.ports import SpeechAudio, Transcript
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegram, Json, Sent, llm_settings, running_telegram
from voice import build_voice
from voice.audio import decode, speech_audio, to_voice_note

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEFAULT_REPLY = "Hello! Nice to hear from you."
VOICE_REPLY = "Mars is cold and dusty today, with thin air and a pink sky."


def long_answer() -> str:
    """About 5000 characters of prose, a few emoji included (Telegram counts UTF-16 units)."""
    sentence = "This paragraph explains the idea in some detail, sentence after sentence 🙂. "
    text = "\n\n".join(sentence * 14 for _ in range(5))
    return text[:5000]


class Script:
    """The fake LLM's replies: the first marker found in the user's message picks the reply."""

    def __init__(self) -> None:
        # "weather", not "Mars": Whisper tiny sometimes hears Piper's "Mars" as "March"
        self.replies = {"LONG5000": long_answer(), "weather": VOICE_REPLY}

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        last = messages[-1]["content"].lower() if messages else ""
        for marker, reply in self.replies.items():
            if marker.lower() in last:
                return reply
        return DEFAULT_REPLY


class ScriptedSpeechToText:
    """A test double of the SpeechToText port: OGG audio in, the scripted transcript out."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, str]] = []
        self.transcript = "what is the weather like on mars"
        self.delay_s = 0.0

    name = "scripted"

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def transcribe(self, audio: bytes, *, content_type: str = "") -> Transcript:
        self.calls.append((audio, content_type))
        await asyncio.sleep(self.delay_s)
        if not audio.startswith(b"OggS"):
            raise InputError("not an OGG stream")
        return Transcript(self.transcript, "en", 2.0)


class ToneTextToSpeech:
    """A test double of the TextToSpeech port: half a second of a 440 Hz tone per reply."""

    name = "tone"

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def synthesize(self, text: str, *, voice: str | None = None) -> SpeechAudio:
        self.calls.append((text, voice))
        rate = 16_000
        tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate // 2) / rate)
        return speech_audio(tone.astype(np.float32), rate)


VOICE_NOTE = b"OggS\x00\x02" + bytes(200)


@dataclass
class World:
    tg: FakeTelegram
    llm: FakeLLMServer
    app: Any
    adapter: TelegramAdapter
    stt: ScriptedSpeechToText
    tts: ToneTextToSpeech

    def prompts_containing(self, text: str) -> list[list[dict[str, Any]]]:
        return [
            r.messages
            for r in self.llm.requests
            if r.path.endswith("/chat/completions") and r.messages and text in r.messages[-1]["content"]
        ]

    def all_prompt_text(self) -> str:
        return "\n".join(m["content"] for r in self.llm.requests for m in r.messages)

    async def reply_texts(self, chat: Json, expected: list[str]) -> list[Sent]:
        """Wait until the bot's messages in ``chat`` read ``expected`` (after edits)."""
        await self.tg.wait_for(lambda: self.tg.bot_texts(chat) == expected)
        return self.tg.bot_messages(chat)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    stt, tts = ScriptedSpeechToText(), ToneTextToSpeech()
    async with FakeTelegram() as tg, FakeLLMServer(reply=Script()) as llm:
        data_dir: Path = tmp_path_factory.mktemp("telegram-bot")
        async with running_telegram(tg, llm.openai_base_url, data_dir, stt=stt, tts=tts) as (app, adapter):
            yield World(tg, llm, app, adapter, stt, tts)


@contextlib.contextmanager
def ports(adapter: TelegramAdapter, *, stt: Any, tts: Any) -> Any:
    saved = adapter.stt, adapter.tts
    adapter.stt, adapter.tts = stt, tts
    try:
        yield
    finally:
        adapter.stt, adapter.tts = saved


# --- text -------------------------------------------------------------------------------------


async def test_private_text_round_trip(world: World) -> None:
    tg = world.tg
    alice = tg.user("Alice")
    chat = tg.private_chat(alice)
    tg.send_text(chat, alice, "hello there, how are you?")

    [reply] = await world.reply_texts(chat, [DEFAULT_REPLY])
    assert reply.reply_to is None  # private chats are not quoted
    assert (chat["id"], "typing") in tg.chat_actions
    [prompt] = world.prompts_containing("hello there, how are you?")
    assert prompt[-1]["content"] == "hello there, how are you?"  # a private chat is not a group chat
    stored = await world.app.store.recent_messages(f"telegram:{chat['id']}", 10)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "hello there, how are you?"),
        ("assistant", DEFAULT_REPLY),
    ]
    assert stored[0].user_key == f"telegram:{alice['id']}"
    assert stored[0].user_name == "Alice"


async def test_group_answers_only_mentions_and_replies(world: World) -> None:
    tg = world.tg
    bob = tg.user("Bob")
    group = tg.group_chat("Friends")
    tg.send_text(group, bob, "just chatting with friends IGNORED-ONE")
    mention = tg.send_text(group, bob, "@whisper_test_bot what do you think?")
    [first] = await world.reply_texts(group, [DEFAULT_REPLY])
    assert first.reply_to == mention.message_id  # group replies quote the message they answer

    tg.send_text(group, bob, "more chatter IGNORED-TWO", reply_to=mention)  # a reply, but not to the bot
    tg.send_text(group, bob, "thanks, and why?", reply_to=first)
    await world.reply_texts(group, [DEFAULT_REPLY, DEFAULT_REPLY])

    [prompt] = world.prompts_containing("what do you think?")
    assert prompt[-1]["content"] == "Bob: what do you think?"  # mention stripped, speaker named
    assert world.prompts_containing("thanks, and why?")
    assert "IGNORED" not in world.all_prompt_text()


async def test_5000_character_reply_is_split_never_truncated(world: World) -> None:
    tg = world.tg
    carol = tg.user("Carol")
    chat = tg.private_chat(carol)
    expected = long_answer()
    parts = split_for_telegram(expected)
    assert len(expected) == 5000 and utf16_len(expected) > 5000 and len(parts) == 2

    tg.send_text(chat, carol, "explain everything LONG5000")
    messages = await world.reply_texts(chat, parts)
    assert all(utf16_len(m.text) <= TELEGRAM_LIMIT for m in messages)
    assert "".join(m.text for m in messages) == expected


async def test_persona_command_show_list_and_set(world: World) -> None:
    tg = world.tg
    dan = tg.user("Dan")
    chat = tg.private_chat(dan)
    tg.send_text(chat, dan, "/persona")
    await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 1)
    assert tg.bot_texts(chat)[0].startswith("I'm ember here.")

    tg.send_text(chat, dan, "/persona list")
    await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 2)
    assert "• sage" in tg.bot_texts(chat)[1]

    tg.send_text(chat, dan, "/persona set sage")  # anyone may, in a private chat
    await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 3)
    assert "sage" in tg.bot_texts(chat)[2]

    tg.send_text(chat, dan, "who are you now PERSONA-CHECK")
    await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 4 and tg.bot_texts(chat)[3] == DEFAULT_REPLY)
    [prompt] = world.prompts_containing("PERSONA-CHECK")
    sage = world.app.engine.personas.library.get("sage")
    assert sage.system_prompt.strip()[:60] in prompt[0]["content"]


async def test_only_group_admins_change_the_persona(world: World) -> None:
    tg = world.tg
    admin, member = tg.user("Erin"), tg.user("Frank")
    group = tg.group_chat("Club", admins=(admin,))

    tg.send_text(group, member, "/persona set sage")
    await tg.wait_for(lambda: tg.bot_texts(group) == [ADMINS_ONLY])
    tg.send_text(group, member, "/persona@whisper_test_bot")
    await tg.wait_for(lambda: len(tg.bot_messages(group)) == 2)
    assert tg.bot_texts(group)[1].startswith("I'm ember here.")

    tg.send_text(group, admin, "/persona set sage")
    await tg.wait_for(lambda: len(tg.bot_messages(group)) == 3)
    assert tg.bot_texts(group)[2] == "From now on I'm sage in this chat."
    tg.send_text(group, admin, "/persona set nobody-like-this")
    await tg.wait_for(lambda: len(tg.bot_messages(group)) == 4)
    assert "unknown persona" in tg.bot_texts(group)[3]


async def test_start_and_help(world: World) -> None:
    tg = world.tg
    gina = tg.user("Gina")
    chat = tg.private_chat(gina)
    tg.send_text(chat, gina, "/start")
    await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 1)
    assert tg.bot_texts(chat)[0].startswith("Hi Gina! I'm WhisperEngine.")
    assert "/forget_me" in tg.bot_texts(chat)[0]
    assert {c["command"] for c in tg.commands} == {"help", "persona", "forget_me", "link", "checkin"}
    assert world.prompts_containing("/start") == []


async def test_forget_me_asks_and_only_the_asker_confirms(world: World) -> None:
    tg, app = world.tg, world.app
    hank, other = tg.user("Hank"), tg.user("Ivy")
    group = tg.group_chat("Forgetful")
    chat = tg.private_chat(hank)
    tg.send_text(chat, hank, "my favourite fruit is the mangosteen")
    await world.reply_texts(chat, [DEFAULT_REPLY])
    await app.engine.writer.drain()
    assert await app.store.get_user(f"telegram:{hank['id']}") is not None

    tg.send_text(group, hank, "/forget_me")
    await tg.wait_for(lambda: len(tg.bot_messages(group)) == 1)
    [question] = tg.bot_messages(group)
    assert question.text == FORGET_QUESTION
    buttons = question.reply_markup["inline_keyboard"][0]
    yes, no = buttons[0]["callback_data"], buttons[1]["callback_data"]

    tg.press_button(other, question, yes)  # someone else presses "yes"
    await tg.wait_for(lambda: len(tg.callback_answers) >= 1)
    assert tg.callback_answers[-1]["text"] == NOT_YOUR_BUTTON
    assert await app.store.get_user(f"telegram:{hank['id']}") is not None

    tg.press_button(hank, question, no)
    await tg.wait_for(lambda: question.text == FORGET_CANCELLED)
    assert await app.store.get_user(f"telegram:{hank['id']}") is not None

    tg.press_button(hank, question, yes)
    await tg.wait_for(lambda: question.text.startswith("Done. I've forgotten everything about you"))
    assert await app.store.get_user(f"telegram:{hank['id']}") is None
    assert await app.store.user_messages(f"telegram:{hank['id']}") == []


# --- voice ------------------------------------------------------------------------------------


async def test_voice_note_round_trip(world: World) -> None:
    tg = world.tg
    jay = tg.user("Jay")
    chat = tg.private_chat(jay)
    world.stt.calls.clear()
    world.tts.calls.clear()
    tg.send_voice(chat, jay, VOICE_NOTE, duration=3)

    await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 1)
    [reply] = tg.bot_messages(chat)
    assert world.stt.calls == [(VOICE_NOTE, "audio/ogg")]
    assert world.tts.calls == [(VOICE_REPLY, None)]
    assert reply.voice is not None and reply.voice.startswith(b"OggS")  # synthesized, then encoded
    assert decode(reply.voice).duration_s == pytest.approx(0.5, abs=0.05)
    assert tg.calls_of("sendVoice")[-1]["duration"] == 1
    assert reply.caption == f"🎤 “{world.stt.transcript}”\n\n{VOICE_REPLY}"
    assert (chat["id"], "record_voice") in tg.chat_actions
    [prompt] = world.prompts_containing(world.stt.transcript)
    assert prompt[-1]["content"] == world.stt.transcript
    stored = await world.app.store.recent_messages(f"telegram:{chat['id']}", 10)
    assert [m.content for m in stored] == [world.stt.transcript, VOICE_REPLY]


async def test_a_voice_note_still_being_transcribed_keeps_its_place_before_a_later_text(world: World) -> None:
    tg = world.tg
    kim = tg.user("Kim")
    chat = tg.private_chat(kim)
    said = "tell me about the weather in Lisbon this week"
    world.stt.delay_s = 0.5  # the voice note takes longer to prepare than the text after it
    world.stt.transcript, usual = said, world.stt.transcript
    try:
        tg.send_voice(chat, kim, VOICE_NOTE, duration=3)
        tg.send_text(chat, kim, "and one more thing")
        await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 2)
    finally:
        world.stt.delay_s, world.stt.transcript = 0.0, usual
    [voice_prompt] = world.prompts_containing(said)
    [text_prompt] = world.prompts_containing("and one more thing")
    # the text was answered after the voice note, with the note and its reply in its history
    # (the turns: between the persona and the context message)
    assert [m["content"] for m in text_prompt[1:-2]][-2:] == [said, VOICE_REPLY]
    assert voice_prompt[-1]["content"] == said
    stored = await world.app.store.recent_messages(f"telegram:{chat['id']}", 10)
    assert [m.content for m in stored if m.role == "user"] == [said, "and one more thing"]


async def test_voice_in_a_group_needs_a_reply_or_a_mention(world: World) -> None:
    tg = world.tg
    kim = tg.user("Kim")
    group = tg.group_chat("Voices")
    world.stt.calls.clear()
    tg.send_voice(group, kim, VOICE_NOTE)  # not addressed: not even downloaded
    tg.send_voice(group, kim, VOICE_NOTE, caption="@whisper_test_bot listen")
    await tg.wait_for(lambda: len(tg.bot_messages(group)) == 1)
    assert len(world.stt.calls) == 1
    assert tg.bot_messages(group)[0].voice is not None


async def test_corrupt_voice_note_gets_a_clear_reply_and_the_bot_carries_on(world: World) -> None:
    tg = world.tg
    lee = tg.user("Lee")
    chat = tg.private_chat(lee)
    tg.send_voice(chat, lee, b"\x00\x01 this is not audio at all")
    await tg.wait_for(lambda: tg.bot_texts(chat) == [VOICE_UNREADABLE])

    tg.send_text(chat, lee, "are you still there?")
    await world.reply_texts(chat, [VOICE_UNREADABLE, DEFAULT_REPLY])


async def test_silent_voice_note_says_nothing_was_heard(world: World) -> None:
    tg = world.tg
    may = tg.user("May")
    chat = tg.private_chat(may)
    silent = ScriptedSpeechToText()
    silent.transcript = "   "
    with ports(world.adapter, stt=silent, tts=world.tts):
        tg.send_voice(chat, may, VOICE_NOTE)
        await tg.wait_for(lambda: tg.bot_texts(chat) == [VOICE_EMPTY])


async def test_voice_without_speech_ports_is_answered_in_text(world: World) -> None:
    tg = world.tg
    ned = tg.user("Ned")
    chat = tg.private_chat(ned)
    with ports(world.adapter, stt=None, tts=None):
        tg.send_voice(chat, ned, VOICE_NOTE)
        await tg.wait_for(lambda: tg.bot_texts(chat) == [VOICE_NOT_SET_UP])

    stt = ScriptedSpeechToText()
    with ports(world.adapter, stt=stt, tts=None):
        tg.send_voice(chat, ned, VOICE_NOTE)
        await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 2)
    text = tg.bot_texts(chat)[1]
    assert stt.transcript in text and VOICE_REPLY in text and VOICE_TTS_NOT_SET_UP in text
    assert tg.bot_messages(chat)[1].voice is None


# --- webhook mode and start-up ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_webhook_mode_checks_the_secret_token(tmp_path: Path) -> None:
    secret = "s3cret-Token_for-tests"
    port = free_port()
    async with FakeTelegram() as tg, FakeLLMServer(reply=Script()) as llm:
        url = f"http://127.0.0.1:{port}/telegram/hook"
        async with running_telegram(
            tg,
            llm.openai_base_url,
            tmp_path,
            telegram_webhook_url=url,
            telegram_webhook_secret=secret,
            telegram_webhook_port=port,
        ) as (_, adapter):
            assert adapter.mode == "webhook" and adapter.webhook_port == port
            assert (tg.webhook_url, tg.webhook_secret) == (url, secret)
            assert not tg.calls_of("getUpdates")

            olga = tg.user("Olga")
            chat = tg.private_chat(olga)
            tg.send_text(chat, olga, "hello through the webhook")
            await tg.wait_for(lambda: tg.bot_texts(chat) == [DEFAULT_REPLY])
            assert tg.deliveries and tg.deliveries[-1][1] == 200

            forged = {
                "update_id": 999,
                "message": {
                    "message_id": 99,
                    "date": 0,
                    "chat": chat,
                    "from": olga,
                    "text": "forged update FORGED",
                },
            }
            async with aiohttp.ClientSession() as session:
                for headers in ({SECRET_HEADER: "wrong-secret"}, {}):
                    async with session.post(url, json=forged, headers=headers) as response:
                        assert response.status == 403
                async with session.post(url, data=b"{not json", headers={SECRET_HEADER: secret}) as response:
                    assert response.status == 400
            await tg.settle()
            assert tg.bot_texts(chat) == [DEFAULT_REPLY]
            assert not any("FORGED" in r.messages[-1]["content"] for r in llm.requests if r.messages)


async def test_start_up_problems_name_the_setting_to_fix(tmp_path: Path) -> None:
    async with FakeTelegram() as tg, FakeLLMServer() as llm:
        values = {
            **llm_settings(llm.openai_base_url, tmp_path),
            "telegram_token": "1:wrong",
            "telegram_api_base_url": tg.api_base,
            "telegram_file_base_url": tg.file_base,
        }
        async with build_app(Settings(_env_file=None, **values)) as app:
            async with contextlib.AsyncExitStack() as stack:
                with pytest.raises(ConfigError) as caught:
                    await start_telegram(app, stack)
            assert caught.value.variable == "TELEGRAM_TOKEN"
            assert "1:wrong" not in str(caught.value)
            app.settings = Settings(
                _env_file=None, **{**values, "telegram_api_base_url": "http://127.0.0.1:9/bot"}
            )
            async with contextlib.AsyncExitStack() as stack:
                with pytest.raises(BackendUnavailable) as down:
                    await start_telegram(app, stack)
            assert down.value.variable == "TELEGRAM_API_BASE_URL"


async def test_no_token_no_telegram(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, **llm_settings("http://127.0.0.1:9/v1", tmp_path))
    async with build_app(settings) as app, contextlib.AsyncExitStack() as stack:
        assert await start_telegram(app, stack) is None


# --- the real voice engines ---------------------------------------------------------------------


def real_voice_available() -> bool:
    import importlib.util

    from voice.stt import bundled_whisper_model

    installed = all(importlib.util.find_spec(m) is not None for m in ("faster_whisper", "piper"))
    return installed and bundled_whisper_model() is not None


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(reference: str, heard: str) -> float:
    ref, hyp = words(reference), words(heard)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1] / max(1, len(ref))


@pytest.mark.slow
@pytest.mark.skipif(
    not real_voice_available(), reason="faster-whisper, piper-tts or the Whisper model is missing"
)
async def test_real_voice_round_trip_with_whisper_and_piper(tmp_path: Path) -> None:
    """Piper speaks the user's question; Whisper hears it; the reply comes back as an OGG/Opus
    voice note that Whisper hears as the reply text."""
    question = "What is the weather like on Mars today?"
    voice_settings = Settings(
        _env_file=None,
        **llm_settings("http://127.0.0.1:9/v1", tmp_path),
        stt_backend="faster-whisper",
        tts_backends=["piper"],
        stt_language="en",
    )
    stt, tts, notes = await build_voice(voice_settings)
    assert stt is not None and tts is not None, notes
    try:
        user_note = await to_voice_note(await tts.synthesize(question))
        async with (
            FakeTelegram() as tg,
            FakeLLMServer(reply=Script()) as llm,
            running_telegram(tg, llm.openai_base_url, tmp_path / "bot", stt=stt, tts=tts),
        ):
            pia = tg.user("Pia")
            chat = tg.private_chat(pia)
            tg.send_voice(chat, pia, user_note.data, duration=math.ceil(user_note.duration_s))
            await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 1, within_s=120)

            [reply] = tg.bot_messages(chat)
            heard_question = llm.requests[-1].messages[-1]["content"]
            assert word_error_rate(question, heard_question) <= 0.2, heard_question
            assert reply.caption is not None and VOICE_REPLY in reply.caption
            assert reply.voice is not None
            with av.open(io.BytesIO(reply.voice)) as container:
                assert container.format.name == "ogg"
                assert container.streams.audio[0].codec_context.name == "opus"
            heard_reply = await stt.transcribe(reply.voice, content_type="audio/ogg")
            assert word_error_rate(VOICE_REPLY, heard_reply.text) <= 0.25, heard_reply.text

            # A corrupt voice note reaches the real decoder: a clear reply, and no crash.
            tg.send_voice(chat, pia, b"OggS" + bytes(range(256)) * 8)
            await tg.wait_for(lambda: len(tg.bot_messages(chat)) == 2, within_s=60)
            assert tg.bot_texts(chat)[1] == VOICE_UNREADABLE
    finally:
        await stt.aclose()
        await tts.aclose()
