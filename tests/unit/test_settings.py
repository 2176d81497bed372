from __future__ import annotations

from pathlib import Path

import pytest

from config.docs import settings_table
from config.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_are_embedded_under_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "d"))
    settings = Settings()
    assert settings.effective_database_url == f"sqlite:///{tmp_path}/d/whisperengine.db"
    assert settings.effective_chroma_path == tmp_path / "d" / "chroma"
    assert settings.redis_url is None and settings.chroma_url is None
    assert settings.llm_backend == "auto"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "LLM_BACKEND=ollama\nLLM_FALLBACKS=llamacpp, openai\nOPENAI_API_KEY=sk-abc123\n"
    )
    settings = Settings()
    assert settings.llm_backend == "ollama"
    assert settings.llm_fallbacks == ["llamacpp", "openai"]
    assert settings.secrets() == ["sk-abc123"]
    assert "sk-abc123" not in repr(settings)


def test_readme_configuration_table_matches_the_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_table() in readme, "README.md is out of date: paste the output of `python -m config.docs`"
