"""Choosing speech engines from the settings: ``build_voice`` with the real engines, the
fallback order, skipping what is not installed, and the voice per persona."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from config.settings import Settings
from engine.errors import ConfigError
from engine.persona import parse_persona
from tests.fakes.openai_audio_server import FakeOpenAIAudio
from voice import build_voice
from voice.selection import SpeechRouter, TranscriptionRouter, make_stt, make_tts_engines, speakable
from voice.stt import FasterWhisperSTT, OpenAISTT
from voice.tts import EspeakTTS, PiperTTS

pytestmark = pytest.mark.asyncio(loop_scope="module")

HAS_ESPEAK = shutil.which("espeak-ng") is not None
HAS_PIPER = importlib.util.find_spec("piper") is not None


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[arg-type]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def default_voice(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[object, object, list[str]]]:
    if not (HAS_PIPER and HAS_ESPEAK):
        pytest.skip("needs piper-tts and espeak-ng")
    stt, tts, notes = await build_voice(settings(tmp_path_factory.mktemp("data")))
    yield stt, tts, notes
    if stt is not None:
        await stt.aclose()
    if tts is not None:
        await tts.aclose()


@pytest.mark.slow
async def test_defaults_use_whisper_piper_and_espeak(default_voice: tuple[object, object, list[str]]) -> None:
    stt, tts, notes = default_voice
    assert isinstance(stt, TranscriptionRouter)
    assert [type(engine) for engine in stt.engines] == [FasterWhisperSTT]
    assert isinstance(tts, SpeechRouter)
    assert [engine.name for engine in tts.engines] == ["piper", "espeak"]
    assert "text-to-speech engine coqui skipped: COQUI_MODEL is not set" in notes
    assert "text-to-speech engine openai skipped: OPENAI_API_KEY is not set" in notes
    assert "speech-to-text: faster-whisper:tiny.en" in notes


@pytest.mark.slow
async def test_persona_voices_pick_the_engine(
    default_voice: tuple[object, object, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    _, tts, _ = default_voice
    assert isinstance(tts, SpeechRouter)
    piper, espeak = tts.engines
    persona = parse_persona(
        {"name": "robot", "system_prompt": "You are a robot.", "voice": "en-gb+m3"}, source="robot.yaml"
    )
    assert tts.choose(persona.voice) == (espeak, "en-gb+m3")
    assert tts.choose("en_US-joe-medium") == (piper, "en_US-joe-medium")
    assert tts.choose("espeak:en-us") == (espeak, "espeak:en-us")
    assert tts.choose(None) == (piper, None)
    assert tts.choose("openai:nova") == (piper, None)
    assert tts.choose("no-such-voice") == (piper, None)
    assert "no enabled engine has the voice 'no-such-voice'" in caplog.text
    assert "names an engine that is not enabled" in caplog.text
    by_piper = await tts.synthesize("Hello **there**! See https://example.com", voice=None)
    by_espeak = await tts.synthesize("Hello there!", voice=persona.voice)
    assert by_piper.sample_rate == by_espeak.sample_rate == 22_050
    assert by_piper.wav != by_espeak.wav


async def test_missing_packages_and_binaries_are_skipped_with_a_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # as if piper-tts were not installed
    notes: list[str] = []
    config = settings(
        tmp_path,
        tts_backends="piper,espeak,coqui,openai",
        espeak_binary=str(tmp_path / "no-espeak"),
        coqui_model=str(tmp_path / "model"),
    )
    with caplog.at_level(logging.INFO, logger="voice.selection"):
        engines = make_tts_engines(config, notes)
    skipped = {line.split(" skipped")[0].rsplit(" ", 1)[-1] for line in notes}
    assert {"piper", "espeak", "openai"} <= skipped
    assert "piper-tts is not installed" in caplog.text
    assert "no-espeak is not installed" in caplog.text
    assert [engine.name for engine in engines] in (["coqui"], [])  # coqui: when coqui-tts is installed


async def test_an_engine_that_cannot_start_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if not HAS_ESPEAK:
        pytest.skip("espeak-ng is not installed")
    config = settings(
        tmp_path, stt_backend="off", tts_backends="coqui,espeak", coqui_model=str(tmp_path / "no-model")
    )
    # coqui is skipped before start (not installed: logged at INFO) or fails to start (WARNING)
    with caplog.at_level(logging.INFO, logger="voice.selection"):
        stt, tts, notes = await build_voice(config)
    try:
        assert stt is None
        assert "speech-to-text is off (STT_BACKEND=off)" in notes
        assert isinstance(tts, SpeechRouter)
        assert [engine.name for engine in tts.engines] == ["espeak"]
        assert any(note.startswith("text-to-speech engine coqui skipped") for note in notes)
        assert "text-to-speech engine coqui skipped" in caplog.text
    finally:
        if tts is not None:
            await tts.aclose()


async def test_nothing_usable_means_no_voice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faster_whisper", None)
    config = settings(tmp_path, tts_backends="off")
    stt, tts, notes = await build_voice(config)
    assert (stt, tts) == (None, None)
    assert any("speech-to-text is off" in note for note in notes)


async def test_stt_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notes: list[str] = []
    with pytest.raises(ConfigError) as caught:
        make_stt(settings(tmp_path, stt_backend="openai"), notes)
    assert caught.value.variable == "OPENAI_API_KEY"
    keyed = settings(
        tmp_path, stt_backend="auto", openai_api_key="sk-x", openai_base_url="http://127.0.0.1:9/v1"
    )
    monkeypatch.setitem(sys.modules, "faster_whisper", None)
    assert isinstance(make_stt(keyed, notes), OpenAISTT)
    with pytest.raises(ConfigError, match="not installed"):
        make_stt(settings(tmp_path, stt_backend="faster-whisper"), notes)


async def test_a_broken_explicit_stt_fails_start_up(tmp_path: Path) -> None:
    pytest.importorskip("faster_whisper")
    config = settings(
        tmp_path, stt_backend="faster-whisper", whisper_model=str(tmp_path / "missing"), tts_backends="off"
    )
    with pytest.raises(ConfigError) as caught:
        await build_voice(config)
    assert caught.value.variable == "WHISPER_MODEL"


async def test_openai_speech_through_build_voice(tmp_path: Path) -> None:
    async with FakeOpenAIAudio() as server:
        config = settings(
            tmp_path,
            stt_backend="openai",
            tts_backends="openai",
            openai_api_key=server.api_key,
            openai_base_url=server.base_url,
            openai_tts_voice="coral",
            tts_voice="openai:sage",
        )
        stt, tts, notes = await build_voice(config)
        try:
            assert isinstance(stt, TranscriptionRouter)
            assert [type(engine) for engine in stt.engines] == [OpenAISTT]
            assert tts is not None
            await tts.synthesize("Hello there.")
            assert server.speeches[-1].voice == "sage"
            await tts.synthesize("Hello there.", voice="nova")
            assert server.speeches[-1].voice == "nova"
            assert notes == ["speech-to-text: openai:whisper-1", "text-to-speech: openai"]
        finally:
            assert stt is not None and tts is not None
            await stt.aclose()
            await tts.aclose()


async def test_tts_settings_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_BACKENDS", "espeak, Piper")
    monkeypatch.setenv("VOICE_MAX_SECONDS", "60")
    parsed = Settings(_env_file=None)
    assert parsed.tts_backends == ["espeak", "piper"]
    assert parsed.voice_max_seconds == 60
    assert parsed.voice_max_bytes == 20_000_000
    monkeypatch.setenv("TTS_BACKENDS", "piper,festival")
    with pytest.raises(ValueError, match="tts_backends"):
        Settings(_env_file=None)


async def test_text_is_cleaned_for_speaking() -> None:
    assert speakable("**Hi** <@123> there 😀 — see https://x.y/z") == "Hi there — see (link)"
    assert speakable("```python\nprint(1)\n```Done.") == "(code) Done."
    assert speakable("# Title\n\n- one\n- two") == "Title - one - two"


async def test_router_needs_an_engine() -> None:
    with pytest.raises(ValueError):
        SpeechRouter([])
    assert EspeakTTS().name == "espeak"
    assert PiperTTS().name == "piper"


async def test_importing_voice_loads_no_speech_library() -> None:
    # The composition root imports voice even where the voice extra is not installed.
    code = (
        "import sys, voice, voice.selection, voice.audio, voice.stt, voice.tts; "
        "heavy = {'av', 'faster_whisper', 'piper', 'TTS', 'torch', 'openai'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", code, stderr=asyncio.subprocess.PIPE)
    _, err = await process.communicate()
    assert process.returncode == 0, err.decode()
