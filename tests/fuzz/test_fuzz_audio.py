"""Fuzzing audio conversion: random bytes and damaged real files are an InputError, never a crash."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InputError
from voice.audio import AudioLimits, decode, encode_ogg_opus, read_wav, wav_bytes

LIMITS = AudioLimits(max_bytes=200_000, max_seconds=5.0)
FUZZ = settings(max_examples=80, deadline=None)


def tone(seconds: float = 1.0, rate: int = 16_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


REAL_FILES = {"wav": wav_bytes(tone(), 16_000), "ogg": encode_ogg_opus(tone(), 16_000)}


def decodes_or_refuses(data: bytes) -> None:
    """Decoding gives sane audio within the limits, or an InputError with a message to show."""
    try:
        audio = decode(data, limits=LIMITS)
    except InputError as exc:
        assert len(str(exc)) > 10 and "Traceback" not in str(exc)  # a sentence fit to show the user
        return
    assert audio.samples.dtype == np.float32 and audio.samples.ndim == 1
    assert audio.duration_s <= LIMITS.max_seconds + 0.5
    assert np.isfinite(audio.samples).all()


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_are_refused_or_decoded(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(
    name=st.sampled_from(sorted(REAL_FILES)),
    cut=st.floats(min_value=0.0, max_value=1.0),
    flips=st.lists(st.tuples(st.floats(min_value=0.0, max_value=0.999), st.integers(0, 255)), max_size=8),
)
def test_damaged_real_files_are_refused_or_decoded(
    name: str, cut: float, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(REAL_FILES[name][: max(1, int(len(REAL_FILES[name]) * cut))])
    for where, value in flips:
        data[int(where * len(data))] = value
    decodes_or_refuses(bytes(data))


@FUZZ
@given(data=st.binary(max_size=2048).map(lambda body: b"RIFF\x00\x00\x00\x00WAVE" + body))
def test_read_wav_of_damaged_headers_never_crashes(data: bytes) -> None:
    try:
        audio = read_wav(data)
    except InputError:
        return
    assert audio.samples.ndim == 1


@pytest.mark.parametrize("data", [b"", b"\x00" * (LIMITS.max_bytes + 1)])
def test_empty_and_oversized_audio_are_refused_before_decoding(data: bytes) -> None:
    with pytest.raises(InputError, match=r"empty|too large"):
        decode(data, limits=LIMITS)
