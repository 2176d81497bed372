"""``whisperengine run`` as a real child process, pointed at the local fakes; other
``whisperengine`` commands run to their end with :func:`run_cli`.

Usage::

    env = bot_environment(tmp_path / "a", discord=fake, llm_url=llm.openai_base_url, DISCORD_SHARD_IDS="0")
    with BotProcess(env, tmp_path / "a.log") as bot:
        await wait_until_connected(fake, 1, [bot])
        ...
    bot.returncode, bot.log_text(), bot.peak_rss_mb

The log goes to a file (a pipe nobody reads would fill up and block the bot). ``stop()`` sends
SIGTERM and waits: the bot finishes its queued memory writes before it exits.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from types import TracebackType
from typing import IO, Any

EXE = str(Path(sys.executable).with_name("whisperengine"))
_KEPT = ("PATH", "HOME", "LANG", "TMPDIR", "CI")
_ERROR_LINE = re.compile(r" (ERROR|CRITICAL) |Traceback")


def cli_environment(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a ``whisperengine`` child: this one's PATH, HOME, LANG, TMPDIR and CI,
    ``DATA_DIR``, the web chat off; ``extra`` adds or overrides variables."""
    kept = {k: v for k, v in os.environ.items() if k in _KEPT}
    return {**kept, "DATA_DIR": str(data_dir), "WEB_ENABLED": "false", **extra}


def bot_environment(data_dir: Path, *, discord: Any = None, llm_url: str, **extra: str) -> dict[str, str]:
    """The environment of a bot on the fake LLM at ``llm_url`` (its ``/v1`` base) and the fake
    Discord ``discord`` (None: no Discord), voice off, the web chat off; ``extra`` adds or
    overrides variables."""
    data_dir.mkdir(parents=True, exist_ok=True)
    variables = {
        "LLM_BACKEND": "openai",
        "OPENAI_BASE_URL": llm_url,
        "OPENAI_API_KEY": "test-key",
        "LLM_MAX_RETRIES": "0",
        "STT_BACKEND": "off",
        "TTS_BACKENDS": "off",
    }
    if discord is not None:
        variables |= {
            "DISCORD_TOKEN": discord.token,
            "DISCORD_API_BASE_URL": discord.api_base,
            "DISCORD_GATEWAY_URL": discord.gateway_url,
        }
    return cli_environment(data_dir, **(variables | extra))


def run_cli(
    args: list[str], env: dict[str, str], stdin: str = "", timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``whisperengine *args`` to its end, its output captured; run beside ``DATA_DIR``, where a
    stray .env of the developer's cannot change the settings."""
    return subprocess.run(
        [EXE, *args],
        check=False,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(env["DATA_DIR"]).parent,
    )


class BotProcess:
    """One ``whisperengine run`` (or ``worker``) child; a context manager that stops it on exit."""

    def __init__(self, env: dict[str, str], log_path: Path, *, command: str = "run") -> None:
        """``command``: the ``whisperengine`` command to run (``run``, ``worker``)."""
        self.env = env
        self.command = command
        self.log_path = log_path
        self._log: IO[str] | None = None
        self._proc: subprocess.Popen[str] | None = None
        self.peak_rss_mb: float | None = None
        """The largest resident set size the process reached (VmHWM), read when it is stopped."""

    def start(self) -> None:
        self._log = self.log_path.open("w")
        # run where a stray .env of the developer's cannot change the settings
        self._proc = subprocess.Popen(
            [EXE, self.command],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=Path(self.env["DATA_DIR"]).parent,
        )

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def rss_mb(self) -> tuple[float, float] | None:
        """(current, peak) resident set size in MiB, while it runs (Linux)."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
        except (KeyError, ValueError):
            return None

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout_s``); returns the exit status."""
        if self._proc is None:
            return 0
        if self._proc.poll() is None:
            rss = self.rss_mb()
            if rss is not None:
                self.peak_rss_mb = rss[1]
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self._ended()

    def kill(self) -> int:
        """SIGKILL: the process dies at once, as in a crash; returns the exit status."""
        assert self._proc is not None, "not started"
        self._proc.kill()
        self._proc.wait()
        return self._ended()

    def _ended(self) -> int:
        assert self._proc is not None
        if self._log is not None:
            self._log.close()
            self._log = None
        return self._proc.returncode

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def error_lines(self) -> list[str]:
        """Log lines at ERROR or worse, and tracebacks."""
        return [line for line in self.log_text().splitlines() if _ERROR_LINE.search(line)]

    def __enter__(self) -> BotProcess:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


async def wait_until_connected(
    discord: Any, shards: int, bots: list[BotProcess], timeout_s: float = 180
) -> None:
    """Wait until ``shards`` gateway connections are identified; fail early, with the log, if a
    bot exits first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while len(discord.connected_shards) < shards:
        for bot in bots:
            if not bot.running:
                raise RuntimeError(
                    f"the bot exited with {bot.returncode} before connecting:\n{bot.log_text()}"
                )
        if loop.time() > deadline:
            logs = "\n\n".join(bot.log_text() for bot in bots)
            raise TimeoutError(f"only {len(discord.connected_shards)} of {shards} shards connected:\n{logs}")
        await asyncio.sleep(0.2)
