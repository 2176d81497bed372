"""A private ``redis-server`` for tests that stop and restart Redis under the code being tested.

Usage::

    with PrivateRedis() as redis:          # or: async with PrivateRedis() as redis
        cache = RedisCache(redis.url, prefix="t:")
        ...
        redis.stop()                       # SHUTDOWN NOSAVE: the port refuses connections
        redis.restart()                    # the same port again, empty (no persistence)

The server runs in a temporary directory on a free local port with ``--save '' --appendonly no``
(nothing written to disk), so stopping and restarting it never touches the machine's shared Redis.
Tests that need it skip when ``redis-server`` is not installed (and fail when ``CI`` is set).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import pytest

from tests.fakes.chroma_server import free_port


def redis_server_binary() -> str:
    """The ``redis-server`` program; skips the test (fails under CI) when it is missing."""
    found = shutil.which("redis-server")
    if found is None:
        reason = "redis-server is not installed"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI is set: it must be")
        pytest.skip(reason)
    return found


class PrivateRedis:
    """A ``redis-server`` subprocess of this test; ``url`` stays valid across restarts."""

    def __init__(self, *, host: str = "127.0.0.1", startup_timeout_s: float = 10.0) -> None:
        self.host = host
        self.port = free_port(host)
        self.startup_timeout_s = startup_timeout_s
        self._binary = redis_server_binary()
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="redis-test-"))
        command = [self._binary, "--port", str(self.port), "--bind", self.host, "--save", ""]
        command += ["--appendonly", "no", "--dir", str(self._dir), "--daemonize", "no"]
        log = (self._dir / "server.log").open("ab")
        with log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self._dir
            )
        self._wait_until_answering()

    def _wait_until_answering(self) -> None:
        began = time.monotonic()
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}: {self._log_tail()}")
            if self._answers_ping():
                return
            if time.monotonic() - began > self.startup_timeout_s:
                raise TimeoutError(f"redis-server did not answer within {self.startup_timeout_s}s")
            time.sleep(0.02)

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def _log_tail(self) -> str:
        if self._dir is None or not (self._dir / "server.log").exists():
            return ""
        return (self._dir / "server.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """Shut the server down (no save); connections to the port are refused until restart."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"SHUTDOWN NOSAVE\r\n")
                sock.recv(64)
        except OSError:
            pass
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def restart(self) -> None:
        """Start again on the same port (stopping first if it is running)."""
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrivateRedis:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    async def __aenter__(self) -> PrivateRedis:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.close)
