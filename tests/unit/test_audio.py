"""Audio conversion with PyAV: every container in, OGG/Opus out, limits and damaged input.

Fixtures are made here with PyAV directly (not with the code under test): a chirp-free
440 Hz tone, so the decoded signal can be checked by its length and its frequency.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
import threading
import wave
from fractions import Fraction

import av
import numpy as np
import pytest

from engine.errors import BackendUnavailable, InputError
from engine.ports import SpeechAudio
from voice.audio import (
    OPUS_RATE,
    WHISPER_RATE,
    AudioLimits,
    decode,
    encode_ogg_opus,
    read_wav,
    speech_audio,
    to_voice_note,
    voice_note,
    wav_bytes,
    waveform,
)
from voice.workers import WorkerPool

RATE = 22_050
SECONDS = 2.0

# name → (PyAV container format, codec, sample rate, bit rate)
CONTAINERS = {
    "wav": ("wav", "pcm_s16le", 22_050, 0),
    "mp3": ("mp3", "libmp3lame", 22_050, 64_000),
    "m4a": ("ipod", "aac", 22_050, 64_000),
    "webm": ("webm", "libopus", 48_000, 32_000),
    "ogg": ("ogg", "libopus", 48_000, 32_000),
    "flac": ("flac", "flac", 22_050, 0),
}


def tone(seconds: float = SECONDS, rate: int = RATE, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def make_file(samples: np.ndarray, rate: int, name: str) -> bytes:
    """Encode mono float samples into one of CONTAINERS with PyAV."""
    container, codec, out_rate, bitrate = CONTAINERS[name]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=out_rate, layout="mono")
        if bitrate:
            stream.bit_rate = bitrate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=out_rate)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = rate
        frame.time_base = Fraction(1, rate)
        frame.pts = 0
        pts = 0
        for converted in [*resampler.resample(frame), *resampler.resample(None)]:
            converted.pts = pts
            pts += converted.samples
            out.mux(stream.encode(converted))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {name: make_file(tone(), RATE, name) for name in CONTAINERS}


# --- decoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_every_container_decodes_to_16khz_mono_float(files: dict[str, bytes], name: str) -> None:
    decoded = decode(files[name], limits=AudioLimits())
    assert decoded.sample_rate == WHISPER_RATE
    assert decoded.samples.dtype == np.float32
    assert decoded.samples.ndim == 1
    assert decoded.duration_s == pytest.approx(SECONDS, abs=0.05)
    assert float(np.abs(decoded.samples).max()) <= 1.0
    assert dominant_hz(decoded.samples, decoded.sample_rate) == pytest.approx(440, abs=5)


def test_decoding_keeps_the_native_rate_when_asked(files: dict[str, bytes]) -> None:
    decoded = decode(files["flac"], sample_rate=None)
    assert decoded.sample_rate == RATE
    assert decoded.container == "flac"


def test_stereo_is_mixed_down_to_mono() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16_000)
        left = (tone(1.0, 16_000) * 32767).astype(np.int16)
        out.writeframes(np.stack([left, left], axis=1).tobytes())
    decoded = decode(buffer.getvalue(), limits=AudioLimits())
    assert decoded.samples.ndim == 1
    assert decoded.duration_s == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"this is not audio at all, just some text" * 10, id="text"),
        pytest.param(np.random.default_rng(1).bytes(20_000), id="random-bytes"),
        pytest.param(b"OggS" + bytes(200), id="bad-ogg-header"),
        pytest.param(b"RIFF\x00\x00\x00\x00WAVEjunk", id="bad-wav-header"),
    ],
)
def test_corrupt_audio_is_an_input_error_with_a_log_line(
    data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="voice.audio"), pytest.raises(InputError) as caught:
        decode(data, limits=AudioLimits())
    assert "could not be read" in str(caught.value) or "no audio" in str(caught.value)
    assert caplog.records, "a refused upload is logged"


def test_empty_audio_is_an_input_error() -> None:
    with pytest.raises(InputError, match="empty"):
        decode(b"", limits=AudioLimits())


@pytest.mark.parametrize("name", sorted(CONTAINERS))
@pytest.mark.parametrize("keep", [0.5, 0.8])
def test_truncated_audio_is_an_input_error(files: dict[str, bytes], name: str, keep: float) -> None:
    data = files[name]
    with pytest.raises(InputError) as caught:
        decode(data[: int(len(data) * keep)], limits=AudioLimits())
    assert "incomplete" in str(caught.value) or "could not be read" in str(caught.value)


def test_oversized_audio_is_refused_before_decoding() -> None:
    # Not audio at all: only the size check can have refused it.
    with pytest.raises(InputError, match=r"too large \(25\.0 MB; the limit is 20\.0 MB\)"):
        decode(bytes(25_000_000), limits=AudioLimits())


def test_the_byte_limit_is_configurable(files: dict[str, bytes]) -> None:
    data = files["wav"]
    assert decode(data, limits=AudioLimits(max_bytes=len(data))).duration_s == pytest.approx(
        SECONDS, abs=0.01
    )
    with pytest.raises(InputError, match="too large"):
        decode(data, limits=AudioLimits(max_bytes=len(data) - 1))


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_over_long_audio_is_an_input_error(files: dict[str, bytes], name: str) -> None:
    with pytest.raises(InputError, match="too long"):
        decode(files[name], limits=AudioLimits(max_seconds=1.0))


def test_over_long_audio_without_a_declared_duration_stops_while_decoding() -> None:
    # A WAV whose header says "length unknown": the limit is enforced on decoded samples.
    pcm = (tone(3.0, 16_000) * 32767).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16_000, 32_000, 2, 16)
    header += b"data" + struct.pack("<I", 0xFFFFFFFF)
    data = header + pcm
    assert decode(data, limits=AudioLimits(max_seconds=10)).duration_s == pytest.approx(3.0, abs=0.01)
    with pytest.raises(InputError, match="too long"):
        decode(data, limits=AudioLimits(max_seconds=2.0))


def test_silence_decodes_fine() -> None:
    data = make_file(np.zeros(RATE, dtype=np.float32), RATE, "ogg")
    decoded = decode(data, limits=AudioLimits())
    assert decoded.duration_s == pytest.approx(1.0, abs=0.05)
    assert float(np.abs(decoded.samples).max()) < 0.01


# --- WAV ----------------------------------------------------------------------------------------


def test_wav_round_trip() -> None:
    samples = tone(0.5, 16_000)
    data = wav_bytes(samples, 16_000)
    with wave.open(io.BytesIO(data)) as parsed:
        assert (parsed.getnchannels(), parsed.getsampwidth(), parsed.getframerate()) == (1, 2, 16_000)
        assert parsed.getnframes() == samples.size
    back = read_wav(data)
    assert back.sample_rate == 16_000
    assert np.abs(back.samples - samples).max() < 1e-3


def test_read_wav_tolerates_unknown_length_headers() -> None:
    pcm = (tone(1.0, 22_050) * 32767).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 0x7FFFF024) + b"WAVE"  # what espeak-ng --stdout writes
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 22_050, 44_100, 2, 16)
    header += b"data" + struct.pack("<I", 0x7FFFF000)
    decoded = read_wav(header + pcm)
    assert decoded.sample_rate == 22_050
    assert decoded.duration_s == pytest.approx(1.0, abs=1e-3)


def test_read_wav_reads_other_wav_formats_through_pyav() -> None:
    decoded = read_wav(make_file(tone(1.0, 48_000), 48_000, "flac"))
    assert decoded.sample_rate == RATE  # the flac fixture is written at 22.05 kHz
    assert decoded.duration_s == pytest.approx(1.0, abs=0.01)


def test_speech_audio_is_a_complete_wav() -> None:
    speech = speech_audio(tone(1.5, 22_050), 22_050)
    assert speech.sample_rate == 22_050
    assert speech.duration_s == pytest.approx(1.5)
    with wave.open(io.BytesIO(speech.wav)) as parsed:
        assert parsed.getnframes() == int(1.5 * 22_050)


# --- voice notes --------------------------------------------------------------------------------


def test_ogg_opus_voice_note_is_48khz_mono_opus() -> None:
    data = encode_ogg_opus(tone(2.0, 22_050), 22_050)
    with av.open(io.BytesIO(data)) as container:
        assert container.format.name == "ogg"
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        assert stream.codec_context.sample_rate == OPUS_RATE
        assert stream.codec_context.channels == 1
    decoded = decode(data, limits=AudioLimits())
    assert decoded.duration_s == pytest.approx(2.0, abs=0.05)
    assert dominant_hz(decoded.samples, decoded.sample_rate) == pytest.approx(440, abs=5)
    assert len(data) < 2.0 * 32_000 / 8 * 1.5  # about 32 kbit/s


def test_waveform_has_256_points_peaking_at_255() -> None:
    samples = np.concatenate([np.zeros(1000, dtype=np.float32), tone(1.0, 16_000)])
    points = waveform(samples)
    assert len(points) == 256
    assert max(points) == 255
    assert points[0] == 0
    assert waveform(np.zeros(0, dtype=np.float32)) == bytes(256)


async def test_voice_note_from_synthesised_speech() -> None:
    speech = speech_audio(tone(1.0, 22_050), 22_050)
    note = await to_voice_note(speech)
    assert note.content_type == "audio/ogg"
    assert note.filename.endswith(".ogg")
    assert note.duration_s == pytest.approx(1.0, abs=0.01)
    assert len(note.waveform) == 256
    assert decode(note.data, limits=AudioLimits()).duration_s == pytest.approx(1.0, abs=0.05)
    assert (
        voice_note(SpeechAudio(speech.wav, speech.sample_rate, speech.duration_s)).duration_s
        == note.duration_s
    )


# --- the worker pool ------------------------------------------------------------------------------


async def test_worker_pool_refuses_work_beyond_its_queue() -> None:
    pool = WorkerPool("test engine", workers=1, queue_size=1, variable="VOICE_QUEUE_SIZE")
    release = threading.Event()
    try:
        running = asyncio.create_task(pool.run(release.wait, 10))
        waiting = asyncio.create_task(pool.run(lambda: "second"))
        await asyncio.sleep(0)  # both tasks take their place before their first real wait
        assert pool.pending == 2
        with pytest.raises(BackendUnavailable, match="busy") as caught:
            await pool.run(lambda: "third")
        assert caught.value.variable == "VOICE_QUEUE_SIZE"
        release.set()
        assert await running is True
        assert await waiting == "second"
        assert pool.pending == 0
        assert await pool.run(lambda: "again") == "again"
    finally:
        release.set()
        pool.close()


async def test_worker_pool_runs_off_the_event_loop() -> None:
    pool = WorkerPool("test engine", workers=2, queue_size=0)
    try:
        names = await asyncio.gather(
            pool.run(lambda: threading.current_thread().name),
            pool.run(lambda: threading.current_thread().name),
        )
        assert all(name != threading.main_thread().name for name in names)
    finally:
        pool.close()


def test_missing_pyav_is_backend_unavailable_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` sees when PyAV is absent
    with pytest.raises(BackendUnavailable, match="PyAV is not installed"):
        decode(b"OggS" + bytes(64), limits=AudioLimits())
    with pytest.raises(BackendUnavailable, match="PyAV is not installed"):
        encode_ogg_opus(np.zeros(1600, dtype=np.float32), 16_000)
