"""Audio conversion with PyAV (FFmpeg's libraries, bundled in the wheel; no ffmpeg binary).

Everything here is blocking and CPU-bound: the speech classes call it from their own worker
threads, and :func:`to_voice_note` is the one async wrapper (for adapters sending replies).

* :func:`decode` turns a voice note or audio file (OGG/Opus, WAV, MP3, M4A/AAC, WEBM, FLAC...)
  into 16 kHz mono float32 samples for Whisper, enforcing the size and duration limits.
  Corrupt, empty, truncated, oversized or over-long audio raises
  :class:`engine.errors.InputError` with a message that can be shown to the user.
* :func:`encode_ogg_opus` makes a voice note: OGG/Opus, 48 kHz mono.
* :func:`wav_bytes` / :func:`read_wav` write and read 16-bit PCM WAV (tolerating the
  "unknown length" headers that streaming synthesisers such as espeak-ng write).
* :func:`waveform` is the 256-point amplitude outline Discord shows on a voice message.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import struct
import wave
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, cast

import numpy as np

from engine.errors import BackendUnavailable, InputError
from engine.ports import SpeechAudio

if TYPE_CHECKING:
    import av

logger = logging.getLogger(__name__)

WHISPER_RATE = 16_000
OPUS_RATE = 48_000
OPUS_BITRATE = 32_000

# A file whose container announces a duration longer than what decodes, by more than this
# (seconds + fraction; encoders' padding differs by milliseconds), was cut off.
_TRUNCATED_SLACK_S = 0.15
_TRUNCATED_FRACTION = 0.01
_WAV_UNKNOWN_SIZE = 0x7FFF0000


@dataclass(frozen=True, slots=True)
class AudioLimits:
    """The largest upload accepted, in bytes, and the longest audio, in seconds."""

    max_bytes: int = 20_000_000
    max_seconds: float = 300.0


@dataclass(frozen=True, slots=True)
class DecodedAudio:
    """Mono float32 samples in [-1, 1]."""

    samples: np.ndarray
    sample_rate: int
    container: str = ""
    """PyAV's name of the file's format (``ogg``, ``wav``, ``matroska,webm``...)."""

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.sample_rate if self.sample_rate else 0.0


@dataclass(frozen=True, slots=True)
class VoiceNote:
    """A reply ready to upload as a voice message."""

    data: bytes
    content_type: str
    filename: str
    duration_s: float
    waveform: bytes
    """256 amplitude points, 0-255 (Discord's ``waveform``, base64-encoded by the adapter)."""


# --- decoding --------------------------------------------------------------------------------


def _megabytes(n: float) -> str:
    return f"{n / 1_000_000:.1f} MB"


def check_size(data: bytes, limits: AudioLimits) -> None:
    """Raise InputError for empty or oversized audio, before any decoding."""
    if not data:
        raise InputError("The audio file is empty.")
    if len(data) > limits.max_bytes:
        raise InputError(
            f"The audio file is too large ({_megabytes(len(data))}; the limit is "
            f"{_megabytes(limits.max_bytes)})."
        )


def _too_long(limits: AudioLimits, seconds: float | None = None) -> InputError:
    said = f" ({seconds:.0f} seconds)" if seconds is not None else ""
    return InputError(
        f"The audio is too long{said}; the limit is {limits.max_seconds:g} seconds. "
        "Please send a shorter voice message."
    )


def _declared_duration(container: av.container.InputContainer, stream: av.audio.AudioStream) -> float | None:
    import av

    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _require_pyav() -> None:
    """BackendUnavailable when PyAV (the ``voice`` extra) is not installed."""
    try:
        import av  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailable(
            "audio conversion", "PyAV is not installed (pip install 'whisperengine[voice]')"
        ) from exc


def decode(
    data: bytes,
    *,
    limits: AudioLimits | None = None,
    sample_rate: int | None = WHISPER_RATE,
    content_type: str = "",
) -> DecodedAudio:
    """Decode any audio file PyAV reads into mono float32 at ``sample_rate`` (None: as is).

    With ``limits`` (always, for user uploads), empty, oversized, over-long, corrupt and
    truncated input raise InputError; without, only unreadable input does.
    """
    _require_pyav()
    import av.error

    if limits is not None:
        check_size(data, limits)
    elif not data:
        raise InputError("The audio file is empty.")
    try:
        return _decode(data, limits, sample_rate)
    except av.error.FFmpegError as exc:
        logger.warning(
            "could not decode %d bytes of audio (%s): %s", len(data), content_type or "unknown type", exc
        )
        raise InputError(
            "The audio file could not be read: it may be damaged or in a format I don't know."
        ) from exc


def _decode(data: bytes, limits: AudioLimits | None, sample_rate: int | None) -> DecodedAudio:
    import av
    from av.audio.resampler import AudioResampler

    with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
        if not container.streams.audio:
            logger.warning("audio upload of %d bytes has no audio stream", len(data))
            raise InputError("That file has no audio in it.")
        stream = container.streams.audio[0]
        format_name = container.format.name
        declared = _declared_duration(container, stream)
        if limits is not None and declared is not None and declared > limits.max_seconds + 1.0:
            logger.info("refused audio of %.1f s (limit %.0f s)", declared, limits.max_seconds)
            raise _too_long(limits, declared)
        rate = sample_rate or stream.codec_context.sample_rate or stream.rate
        if not rate:
            raise InputError("The audio file could not be read: it has no sample rate.")
        max_seconds = limits.max_seconds if limits is not None else None
        max_samples = int(max_seconds * rate) if max_seconds is not None else None
        resampler = AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[np.ndarray] = []
        total = 0

        def take(frames: list[av.AudioFrame]) -> None:
            nonlocal total
            for out in frames:
                samples = out.to_ndarray().reshape(-1)
                total += samples.size
                if limits is not None and max_samples is not None and total > max_samples:
                    logger.info("refused audio: longer than %.0f s while decoding", limits.max_seconds)
                    raise _too_long(limits)
                chunks.append(samples)

        for frame in container.decode(stream):
            take(resampler.resample(frame))
        take(resampler.resample(None))
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    decoded = DecodedAudio(np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False), rate, format_name)
    if limits is not None:
        if decoded.samples.size == 0:
            logger.warning("audio upload of %d bytes decoded to no samples", len(data))
            raise InputError("The audio file could not be read: it contains no sound.")
        shortfall = (declared or 0.0) - decoded.duration_s
        cut = _cut_off(data)
        if cut or shortfall > _TRUNCATED_SLACK_S + _TRUNCATED_FRACTION * (declared or 0.0):
            logger.warning(
                "audio upload is truncated: %s (%.2f s decoded, %s s announced)",
                cut or "shorter than announced",
                decoded.duration_s,
                f"{declared:.2f}" if declared is not None else "no duration",
            )
            raise InputError("The audio file is incomplete (it was cut off); please send it again.")
    return decoded


def _cut_off(data: bytes) -> str | None:
    """Why a WAV or OGG file is visibly cut short (FFmpeg decodes what is there silently)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        pos = 12
        while pos + 8 <= len(data):
            chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
            if chunk_id == b"data":
                missing = 0 < size < _WAV_UNKNOWN_SIZE and pos + 8 + size > len(data)
                return "WAV data chunk ends past the end of the file" if missing else None
            pos += 8 + size + (size & 1)
        return None
    if data[:4] == b"OggS":
        # The last page must be complete and flagged end-of-stream.
        last = data.rfind(b"OggS")
        while last > 0 and data[last + 4 : last + 5] != b"\x00":
            last = data.rfind(b"OggS", 0, last)
        header = data[last : last + 27]
        if len(header) < 27:
            return "last OGG page is incomplete"
        segments = header[26]
        table = data[last + 27 : last + 27 + segments]
        if len(table) < segments or last + 27 + segments + sum(table) > len(data):
            return "last OGG page is incomplete"
        if not header[5] & 0x04:
            return "OGG stream has no end-of-stream page"
    return None


def duration_of(data: bytes, *, limits: AudioLimits | None = None) -> float:
    """The duration in seconds of an audio file (decoding it, so it is also validated)."""
    return decode(data, limits=limits, sample_rate=None).duration_s


# --- encoding --------------------------------------------------------------------------------


def _as_float(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    return np.clip(np.asarray(samples, dtype=np.float32).reshape(-1), -1.0, 1.0)


def _as_int16(samples: np.ndarray) -> np.ndarray:
    if samples.dtype == np.int16:
        return samples
    return (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).astype(np.int16)


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of ``samples`` (float in [-1, 1], or int16)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(_as_int16(samples.reshape(-1)).tobytes())
    return buffer.getvalue()


def read_wav(data: bytes) -> DecodedAudio:
    """Mono float32 samples of a WAV file, at its own rate.

    Reads 16-bit PCM directly, tolerating a header whose sizes say "unknown" (espeak-ng's
    ``--stdout``); anything else (float, 8/24-bit, stereo) goes through PyAV.
    """
    fmt: tuple[int, int, int, int] | None = None
    pcm: bytes | None = None
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        pos = 12
        while pos + 8 <= len(data):
            chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
            body = data[pos + 8 : pos + 8 + size]
            if chunk_id == b"fmt " and len(body) >= 16:
                tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", body)
                fmt = (tag, channels, rate, bits)
            elif chunk_id == b"data":
                pcm = body  # a size past the end of the file means "the rest"
                break
            pos += 8 + size + (size & 1)
    if fmt is not None and pcm is not None and fmt[0] == 1 and fmt[1] == 1 and fmt[3] == 16:
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2")
        return DecodedAudio(samples.astype(np.float32) / 32768.0, fmt[2])
    return decode(data, sample_rate=None)


def speech_audio(samples: np.ndarray, sample_rate: int) -> SpeechAudio:
    """Wrap synthesised samples as the TextToSpeech port's result (a WAV file)."""
    flat = samples.reshape(-1)
    return SpeechAudio(
        wav=wav_bytes(flat, sample_rate), sample_rate=sample_rate, duration_s=flat.size / sample_rate
    )


def encode(
    samples: np.ndarray, sample_rate: int, *, container: str, codec: str, rate: int, bitrate: int
) -> bytes:
    """Encode mono samples with PyAV into ``container`` using ``codec`` at ``rate`` Hz."""
    _require_pyav()
    import av
    from av.audio.resampler import AudioResampler

    buffer = io.BytesIO()
    block = max(1, sample_rate // 2)  # feed half a second at a time
    with av.open(buffer, mode="w", format=container) as out:
        stream = cast("av.audio.stream.AudioStream", out.add_stream(codec, rate=rate, layout="mono"))
        if bitrate:
            stream.bit_rate = bitrate
        codec_format = stream.codec_context.format
        resampler = AudioResampler(
            format=codec_format.name if codec_format else "s16", layout="mono", rate=rate
        )
        source = _as_float(samples)
        pts = 0

        def write(frames: list[av.AudioFrame]) -> None:
            nonlocal pts
            for converted in frames:
                converted.pts = pts
                pts += converted.samples
                out.mux(stream.encode(converted))

        for start in range(0, source.size, block):
            frame = av.AudioFrame.from_ndarray(
                source[start : start + block].reshape(1, -1), format="flt", layout="mono"
            )
            frame.sample_rate = sample_rate
            frame.time_base = Fraction(1, sample_rate)
            frame.pts = start
            write(resampler.resample(frame))
        write(resampler.resample(None))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def encode_ogg_opus(samples: np.ndarray, sample_rate: int, *, bitrate: int = OPUS_BITRATE) -> bytes:
    """A voice note: OGG/Opus, 48 kHz mono (what Discord and Telegram voice messages use)."""
    return encode(samples, sample_rate, container="ogg", codec="libopus", rate=OPUS_RATE, bitrate=bitrate)


def waveform(samples: np.ndarray, points: int = 256) -> bytes:
    """``points`` peak amplitudes scaled to 0-255, for a voice message's preview."""
    flat = np.abs(_as_float(samples))
    if flat.size == 0:
        return bytes(points)
    edges = np.linspace(0, flat.size, points + 1).astype(int)
    peaks = np.array([flat[a:b].max() if b > a else 0.0 for a, b in itertools.pairwise(edges)])
    top = float(peaks.max()) or 1.0
    return bytes(np.round(peaks / top * 255).astype(np.uint8).tolist())


def voice_note(speech: SpeechAudio) -> VoiceNote:
    """Blocking: encode synthesised speech as an OGG/Opus voice note with its waveform."""
    decoded = read_wav(speech.wav)
    return VoiceNote(
        data=encode_ogg_opus(decoded.samples, decoded.sample_rate),
        content_type="audio/ogg",
        filename="voice-message.ogg",
        duration_s=decoded.duration_s,
        waveform=waveform(decoded.samples),
    )


async def to_voice_note(speech: SpeechAudio) -> VoiceNote:
    """Encode synthesised speech as an OGG/Opus voice note, off the event loop."""
    return await asyncio.to_thread(voice_note, speech)
