"""The voice benchmark runs end to end (one run per figure); figures are not checked here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("faster_whisper")
pytest.importorskip("piper")

from benchmarks import voice as bench
from voice.stt import bundled_whisper_model
from voice.tts import DEFAULT_PIPER_VOICE, bundled_piper_voice


@pytest.mark.slow
def test_voice_benchmark_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if bundled_whisper_model() is None or bundled_piper_voice(DEFAULT_PIPER_VOICE) is None:
        pytest.skip("the bundled Whisper and Piper models are not installed")
    out = tmp_path / "voice.json"
    assert bench.main(["--runs", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["stt"][0]["engine"] == "faster-whisper:tiny.en"
    assert results["stt"][0]["rtf"] > 0
    assert "market" in results["stt"][0]["transcript"].lower()
    engines = [row["engine"] for row in results["tts"]]
    assert engines[0] == "piper"
    assert ("espeak" in engines) == (shutil.which("espeak-ng") is not None)
    e2e = results["end_to_end"]
    assert e2e["uploads"] == 2  # the warm-up and the measured run each uploaded a voice note
    assert set(e2e["median_s"]) == {
        "download",
        "transcribe",
        "engine",
        "synthesize",
        "encode",
        "upload",
        "total",
    }
    assert set(results["verdict"]) == {"stt_rtf", "piper_rtf", "end_to_end_s"}
    printed = capsys.readouterr().out
    assert "end to end" in printed and "targets:" in printed
