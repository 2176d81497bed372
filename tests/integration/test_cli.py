"""The ``whisperengine`` command as a user runs it: a real process, real backends, no network."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.conftest import require_redis
from tests.fakes.bot_process import EXE, cli_environment, run_cli
from tests.fakes.character_cards import png_v2
from tests.fakes.llm_server import FakeLLMServer

pytestmark = pytest.mark.slow

SECRET_KEY = "sk-test-Zq8v3Lr9Xy2Wm5Kp"
SECRET_TOKEN = "api-token-Hn4Bt7Vc1Qd6"
ENCRYPTION_KEY = "Zm9yLXRlc3RzLW9ubHktMzItYnl0ZXMtbG9uZy1rZXk="  # Fernet: 32 bytes, url-safe base64


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return cli_environment(tmp_path / "data", **extra)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_chat_answers_with_the_bundled_llama_cpp_model_offline(tmp_path: Path) -> None:
    env = base_env(tmp_path, LLM_BACKEND="llamacpp", LLM_MAX_TOKENS="24", OLLAMA_HOST="http://127.0.0.1:1")
    result = run_cli(["chat", "--user", "tester"], env, stdin="Hello! Who are you?\n/quit\n")
    assert result.returncode == 0, result.stderr
    reply = result.stdout.split("bot> ", 1)[1].strip()
    assert len(reply) > 0
    assert "Traceback" not in result.stderr
    # the exchange was persisted in the embedded SQLite database
    assert (tmp_path / "data" / "whisperengine.db").is_file()


def test_auto_picks_llama_cpp_when_nothing_else_is_configured(tmp_path: Path) -> None:
    env = base_env(tmp_path, OLLAMA_HOST="http://127.0.0.1:1")
    result = run_cli(["doctor"], env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "store     sqlite" in out
    assert "cache     in-process" in out
    assert "vectors   chroma embedded" in out
    assert "llm       llamacpp:" in out
    assert "overall: ok" in out


def test_unreachable_postgres_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = base_env(tmp_path, DATABASE_URL="postgresql://bot:hunter2secret@127.0.0.1:1/whisper")
    result = run_cli(["doctor"], env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0] and "PostgreSQL" in lines[0]
    assert "hunter2secret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_unreachable_chroma_server_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    env = base_env(tmp_path, CHROMA_URL="http://127.0.0.1:1", OLLAMA_HOST="http://127.0.0.1:1")
    result = run_cli(["doctor"], env)
    assert result.returncode == 2
    assert "CHROMA_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unreachable_redis_falls_back_to_the_in_process_cache(tmp_path: Path) -> None:
    env = base_env(tmp_path, REDIS_URL="redis://:pw-Xk29@127.0.0.1:1/0", OLLAMA_HOST="http://127.0.0.1:1")
    result = run_cli(["doctor"], env)
    assert result.returncode == 0, result.stderr
    assert "cache     in-process" in result.stdout
    assert "falling back to the in-process cache" in result.stdout
    assert "cache     degraded" in result.stdout
    assert "pw-Xk29" not in result.stdout + result.stderr


def test_json_logs_are_one_object_per_line_without_secrets(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        REDIS_URL="redis://:pw-Jq51@127.0.0.1:1/0",
        OLLAMA_HOST="http://127.0.0.1:1",
        LOG_FORMAT="json",
    )
    result = run_cli(["doctor"], env)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert records, "the unreachable Redis is logged"
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["level"] == "WARNING" and "in-process cache" in r["message"] for r in records)
    assert "pw-Jq51" not in result.stderr


def test_doctor_reports_redis_when_it_is_there(tmp_path: Path) -> None:
    url = require_redis()
    env = base_env(tmp_path, REDIS_URL=url, REDIS_PREFIX="we-doctor-test:", OLLAMA_HOST="http://127.0.0.1:1")
    result = run_cli(["doctor"], env)
    assert result.returncode == 0, result.stderr
    assert "cache     redis" in result.stdout


@pytest.mark.parametrize(
    ("extra", "variable"),
    [
        ({"WEB_PORT": "not-a-port"}, "WEB_PORT"),
        ({"LLM_BACKEND": "gpt5"}, "LLM_BACKEND"),
        ({"WEB_ENABLED": "true", "WEB_HOST": "0.0.0.0"}, "API_TOKEN"),
        ({"DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL"),
        (
            {"LLM_BACKEND": "llamacpp", "LLAMACPP_MODEL_PATH": "/nonexistent/model.gguf"},
            "LLAMACPP_MODEL_PATH",
        ),
    ],
)
def test_bad_settings_are_one_line_naming_the_variable(
    tmp_path: Path, extra: dict[str, str], variable: str
) -> None:
    result = run_cli(["doctor"], base_env(tmp_path, OLLAMA_HOST="http://127.0.0.1:1", **extra))
    assert result.returncode == 2
    assert variable in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.fixture
def fake_llm() -> Iterator[str]:
    """A fake OpenAI-compatible server in its own thread (the CLI runs in another process)."""
    import asyncio
    import threading

    ready: dict[str, str] = {}
    stop = threading.Event()

    def serve() -> None:
        async def main() -> None:
            async with FakeLLMServer(reply="Hello from the fake model!", api_key=SECRET_KEY) as server:
                ready["url"] = server.url
                await asyncio.to_thread(stop.wait)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    for _ in range(200):
        if "url" in ready:
            break
        time.sleep(0.05)
    yield ready["url"]
    stop.set()
    thread.join(10)


def test_secret_commands_refuse_without_a_key_and_make_a_key(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    refused = run_cli(["secret", "set", "OPENAI_API_KEY"], env, stdin=SECRET_KEY + "\n")
    assert refused.returncode == 2
    assert "ENCRYPTION_KEY" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert SECRET_KEY not in refused.stdout + refused.stderr
    database = tmp_path / "data" / "whisperengine.db"
    assert not database.exists() or SECRET_KEY.encode() not in database.read_bytes()

    unknown = run_cli(["secret", "set", "DATABASE_URL"], {**env, "ENCRYPTION_KEY": ENCRYPTION_KEY})
    assert unknown.returncode == 2 and "OPENAI_API_KEY" in unknown.stderr

    made = run_cli(["secret", "new-key"], env)
    assert made.returncode == 0
    Fernet(made.stdout.strip().encode())  # a valid key


def test_a_wrong_encryption_key_is_a_note_not_a_failed_start(tmp_path: Path) -> None:
    env = base_env(tmp_path, ENCRYPTION_KEY=ENCRYPTION_KEY, OLLAMA_HOST="http://127.0.0.1:1")
    stored = run_cli(["secret", "set", "OPENAI_API_KEY"], env, stdin=SECRET_KEY + "\n")
    assert stored.returncode == 0, stored.stderr
    other_key = Fernet.generate_key().decode()
    result = run_cli(["doctor"], {**env, "ENCRYPTION_KEY": other_key})
    assert result.returncode == 0, result.stderr
    assert "note: stored secret OPENAI_API_KEY not used" in result.stdout
    assert "ENCRYPTION_KEY" in result.stdout and "llm       llamacpp" in result.stdout
    assert SECRET_KEY not in result.stdout + result.stderr and other_key not in result.stdout + result.stderr


def test_run_serves_the_web_api_stops_cleanly_on_sigterm_and_never_logs_secrets(
    tmp_path: Path, fake_llm: str
) -> None:
    port = free_port()
    env = base_env(
        tmp_path,
        WEB_ENABLED="true",
        WEB_PORT=str(port),
        OPENAI_BASE_URL=fake_llm + "/v1",
        API_TOKEN=SECRET_TOKEN,
        ENCRYPTION_KEY=ENCRYPTION_KEY,
        LOG_LEVEL="DEBUG",
    )
    (tmp_path / "data").mkdir()
    # The OpenAI key is stored encrypted at run time, not set in the environment: the bot
    # reads it at start (the fake model answers only with that key).
    stored = run_cli(["secret", "set", "OPENAI_API_KEY"], env, stdin=SECRET_KEY + "\n")
    assert stored.returncode == 0, stored.stderr
    listed = run_cli(["secret", "list"], env)
    assert listed.stdout.split() == ["OPENAI_API_KEY"]
    assert SECRET_KEY not in stored.stdout + stored.stderr + listed.stdout + listed.stderr
    # The log goes to a file: DEBUG output would fill a pipe nobody reads and block the bot.
    log_path = tmp_path / "bot.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [EXE, "run"], env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
    )
    try:
        health = None
        for _ in range(600):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=1) as response:
                    health = json.load(response)
                    break
            except OSError:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.1)
        assert health is not None and health["status"] == "ok"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/chat",
            data=json.dumps({"message": "hi there, I like long walks by the river"}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {SECRET_TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = json.load(response)
        except OSError:
            proc.terminate()
            proc.wait(timeout=30)
            pytest.fail("no answer from /api/chat; the bot's log:\n" + log_path.read_text())
        assert body["reply"] == "Hello from the fake model!"
        metrics = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {SECRET_TOKEN}"}
        )
        with urllib.request.urlopen(metrics, timeout=10) as response:
            exported = response.read().decode()
        assert 'whisperengine_messages_handled_total{kind="answer",platform="web"} 1.0' in exported
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log_file.close()
    logs = log_path.read_text()
    assert proc.returncode == 0, logs
    assert "Traceback" not in logs
    assert "shutting down" in logs
    for secret in (SECRET_KEY, SECRET_TOKEN, ENCRYPTION_KEY):
        assert secret not in logs
    database = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("whisperengine.db*"))
    assert SECRET_KEY.encode() not in database and ENCRYPTION_KEY.encode() not in database


def test_run_warns_once_at_start_up_when_the_llm_cannot_be_reached(tmp_path: Path) -> None:
    """An unreachable Ollama is one WARNING at start-up, not a surprise at the first message."""
    closed = free_port()  # nothing listens there
    env = base_env(
        tmp_path,
        LLM_BACKEND="ollama",
        OLLAMA_HOST=f"http://127.0.0.1:{closed}",
        OLLAMA_MODEL="llama3.2",
        STT_BACKEND="off",
        TTS_BACKENDS="off",
    )
    (tmp_path / "data").mkdir()
    log_path = tmp_path / "bot.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [EXE, "run"], env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True, cwd=tmp_path
        )
        try:
            for _ in range(1200):
                if "is running" in log_path.read_text() and "not reachable" in log_path.read_text():
                    break
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    logs = log_path.read_text()
    assert proc.returncode == 0, logs
    warnings = [line for line in logs.splitlines() if "WARNING" in line and "LLM backend" in line]
    assert len(warnings) == 1, logs
    assert "ollama:llama3.2" in warnings[0] and f"127.0.0.1:{closed}" in warnings[0]
    assert "Traceback" not in logs


def test_the_cli_imports_a_card_and_refuses_a_bad_one(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    png = tmp_path / "Seraphina card.png"
    png.write_bytes(png_v2())
    result = run_cli(["persona", "import", str(png)], env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Imported Seraphina as persona seraphina (character card V2)")
    written = tmp_path / "data" / "personas" / "seraphina.yaml"
    assert f"written to {written}" in result.stdout
    listed = run_cli(["persona", "list"], env)
    assert "seraphina — Seraphina is a gentle forest guardian with silver hair." in listed.stdout

    before = written.read_bytes()
    for bad, complaint in [
        (json.dumps({"spec": "chara_card_v2", "data": {"name": 7}}), "'name' must be text"),
        ("not a card", "is not a character card"),
    ]:
        path = tmp_path / "bad.json"
        path.write_text(bad)
        refused = run_cli(["persona", "import", str(path)], env)
        assert refused.returncode == 1
        [line] = refused.stderr.strip().splitlines()  # one line, no traceback
        assert line.startswith("whisperengine: ")
        assert complaint in refused.stderr and "Traceback" not in refused.stderr
    again = run_cli(["persona", "import", str(png)], env)
    assert again.returncode == 1 and "already exists" in again.stderr
    missing = run_cli(["persona", "import", str(tmp_path / "nope.png")], env)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:  # sparse: 9 MiB that take no room
        handle.truncate(9 * 1024 * 1024)
    oversized = run_cli(["persona", "import", str(huge)], env)
    assert oversized.returncode == 1
    assert oversized.stderr.strip() == (
        "whisperengine: huge.png is too large for a character card (9.0 MiB; the limit is 8.0 MiB)"
    )
    assert written.read_bytes() == before
    assert sorted(p.name for p in written.parent.iterdir()) == ["seraphina.yaml"]

    replaced = run_cli(["persona", "import", "--replace", str(png)], env)
    assert replaced.returncode == 0, replaced.stderr
