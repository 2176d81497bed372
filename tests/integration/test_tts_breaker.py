"""SpeechRouter's per-engine circuit breakers: the real OpenAI client against the fake speech
API, which fails; espeak-ng speaks meanwhile, and the failing engine stops being asked."""

from __future__ import annotations

import shutil

import pytest

from engine.breaker import BreakerState
from tests.fakes.openai_audio_server import FakeOpenAIAudio, tone_speaker
from voice.selection import SpeechRouter
from voice.tts import EspeakTTS, OpenAITTS

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


async def test_a_failing_engine_is_skipped_once_its_circuit_opens() -> None:
    async with FakeOpenAIAudio(speak=tone_speaker) as server:
        openai = OpenAITTS(api_key=server.api_key, base_url=server.base_url, max_chars=500)
        espeak = EspeakTTS()
        router = SpeechRouter([openai, espeak], breaker_failures=2, breaker_reset_s=3600)
        await router.start()
        try:
            server.fail_next(100, status=503)
            for _ in range(2):
                speech = await router.synthesize("The service fails, espeak speaks.")
                assert speech.sample_rate == 22_050  # espeak-ng's rate; the fake API's is 24 kHz
            assert router.breakers["openai"].state is BreakerState.OPEN
            asked = server.requests

            speech = await router.synthesize("Skipped without a request.")
            assert speech.sample_rate == 22_050
            assert server.requests == asked  # the open circuit sent nothing
            assert router.breakers["espeak"].state is BreakerState.CLOSED
        finally:
            await router.aclose()
