"""Voice input is bounded on Telegram with clear answers: too large or too long is refused before
download and transcription, naming the limit."""

from __future__ import annotations

from pathlib import Path

from adapters.telegram.adapter import VOICE_TOO_BIG, VOICE_TOO_LONG
from engine.ports import Transcript
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegram, running_telegram

OGG = b"OggS" + b"\x00" * 400


class CountingSpeechToText:
    """A SpeechToText double that counts what reaches it."""

    name = "counting"

    def __init__(self) -> None:
        self.calls = 0

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def transcribe(self, audio: bytes, *, content_type: str = "") -> Transcript:
        self.calls += 1
        return Transcript("hello from a short voice note", "en", 2.0)


async def test_telegram_voice_notes_over_the_limits_are_refused_naming_them(tmp_path: Path) -> None:
    stt = CountingSpeechToText()
    async with (
        FakeTelegram() as tg,
        FakeLLMServer(reply="I heard you.") as llm,
        running_telegram(
            tg, llm.openai_base_url, tmp_path, stt=stt, voice_max_seconds=30, voice_max_bytes=len(OGG) + 10
        ) as _,
    ):
        user = tg.user("Vera")
        chat = tg.private_chat(user)

        tg.send_voice(chat, user, OGG, duration=31)
        await tg.wait_for(lambda: len(tg.bot_texts(chat)) == 1)
        assert tg.bot_texts(chat)[0] == VOICE_TOO_LONG.format(seconds=31, limit=30)
        assert "31 seconds" in tg.bot_texts(chat)[0] and "at most 30 seconds" in tg.bot_texts(chat)[0]

        tg.send_voice(chat, user, OGG + b"\x00" * 100, duration=3)
        await tg.wait_for(lambda: len(tg.bot_texts(chat)) == 2)
        assert tg.bot_texts(chat)[1] == VOICE_TOO_BIG
        assert stt.calls == 0  # neither was downloaded nor transcribed

        tg.send_voice(chat, user, OGG, duration=3)
        await tg.wait_for(lambda: any("I heard you." in t for t in tg.bot_texts(chat)[2:]))
        assert stt.calls == 1
