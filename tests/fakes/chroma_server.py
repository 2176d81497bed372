"""A real Chroma server for tests: ``chroma run`` from this virtualenv on a free local port.

Usage, sync (e.g. from a session-scoped fixture)::

    with ChromaServer() as server:
        memory = ChromaVectorMemory.http(server.url)

or async: ``async with ChromaServer() as server: ...``. The server stores its data in a temporary
directory removed on stop (or in ``path`` when given, which is kept). Start-up takes about a
second on a 2-core machine; ``startup_timeout_s`` bounds it. ``stop_keeping_data()`` and
``restart()`` take the server away and bring it back on the same port with the same data.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

HEARTBEAT_PATH = "/api/v2/heartbeat"


def chroma_executable() -> Path:
    """The ``chroma`` CLI installed next to this interpreter."""
    bin_dir = Path(sys.executable).parent
    for name in ("chroma", "chroma.exe"):
        candidate = bin_dir / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no chroma CLI in {bin_dir}: is chromadb installed in this environment?")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class ChromaServer:
    """A ``chroma run`` subprocess; ``url`` is valid between start() and stop()."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 60.0,
    ) -> None:
        self._given_path = Path(path) if path is not None else None
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.startup_s: float | None = None
        self.path: Path | None = None
        self._temp_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def url(self) -> str:
        if self.port is None or self._process is None:
            raise RuntimeError("the Chroma server is not running")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # --- sync --------------------------------------------------------------------------

    def start(self) -> None:
        if self._process is not None:
            return
        if self._temp_dir is None:  # a restart keeps the directory, and so the data
            self._temp_dir = Path(tempfile.mkdtemp(prefix="chroma-test-"))
        self.path = self._given_path or self._temp_dir / "data"
        self._log_path = self._temp_dir / "server.log"
        port = self.port = self.port or free_port(self.host)
        command = [str(chroma_executable()), "run", "--path", str(self.path), "--host", self.host]
        command += ["--port", str(port)]
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "NO_COLOR": "1"}
        began = time.monotonic()
        with self._log_path.open("wb") as log:
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )
        try:
            self._wait_ready(began)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - began
        logger.info("chroma server on port %d ready in %.2f s", port, self.startup_s)

    def _wait_ready(self, began: float) -> None:
        process = self._process
        assert process is not None
        heartbeat = f"http://{self.host}:{self.port}{HEARTBEAT_PATH}"
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"chroma run exited with {process.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(heartbeat, timeout=1.0) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() - began > self.startup_timeout_s:
                raise TimeoutError(
                    f"chroma run did not answer {heartbeat} within {self.startup_timeout_s} s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self, chars: int = 4000) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")[-chars:]

    def stop_keeping_data(self) -> None:
        """Stop the server but keep its port and data: :meth:`restart` brings it back as it was."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def restart(self) -> None:
        """Start again on the same port with the same data directory (stopping it first if running)."""
        self.stop_keeping_data()
        self.start()

    def stop(self) -> None:
        self.stop_keeping_data()
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> ChromaServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- async -------------------------------------------------------------------------

    async def __aenter__(self) -> ChromaServer:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
