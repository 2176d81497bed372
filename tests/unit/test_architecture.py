"""The engine depends on no adapter, storage, voice, inference or platform SDK module."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "adapters",
    "storage",
    "voice",
    "inference",
    "bot",
    "config",
    "discord",
    "telegram",
    "slack_bolt",
    "slack_sdk",
    "openai",
    "ollama",
    "llama_cpp",
    "chromadb",
    "redis",
    "asyncpg",
    "aiosqlite",
    "sqlalchemy",
    "aiohttp",
    "onnxruntime",
    "tokenizers",
    "faster_whisper",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_imports_nothing_outside_itself() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_modules(path) & FORBIDDEN)
        for path in (ROOT / "engine").rglob("*.py")
    }
    assert {path: mods for path, mods in offenders.items() if mods} == {}


def test_the_check_sees_imports() -> None:
    sample = ROOT / "bot" / "app.py"
    assert {"engine", "config"} <= imported_modules(sample)
