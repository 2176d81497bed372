"""A private PostgreSQL cluster for tests that stop and start the database.

The machine's shared PostgreSQL must never be stopped, so fault-injection tests get a cluster
of their own: ``initdb`` into a temporary directory, ``pg_ctl start`` on a free local port
(unix socket in the same directory, trust authentication), ``stop`` fast or immediate (a
crash), ``start`` again on the same port. Run as root, the cluster runs as the ``postgres``
OS user (PostgreSQL refuses to run as root), which owns the directory.

Usage::

    with PrivatePostgres() as pg:
        url = pg.url            # postgresql://postgres@127.0.0.1:PORT/postgres
        pg.stop(mode="immediate")
        pg.start()

or the ``private_postgres`` fixture (one cluster per test module: initdb takes ~2 s).
Without the PostgreSQL server binaries the fixture skips with the reason, unless ``CI`` is set.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal
from uuid import uuid4

import pytest

StopMode = Literal["smart", "fast", "immediate"]

_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def postgres_bin_dir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory (with initdb and pg_ctl)."""
    candidates = []
    for found in glob.glob(_BIN_GLOB):
        path = Path(found)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            version = path.parent.name
            candidates.append((int(version) if version.isdigit() else 0, path))
    on_path = shutil.which("initdb")
    if not candidates and on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    return max(candidates)[1] if candidates else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class PrivatePostgres:
    """One private cluster: ``url`` is valid while it runs; ``start``/``stop`` any number of times."""

    def __init__(self, *, port: int | None = None, startup_timeout_s: float = 30.0) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise FileNotFoundError(f"no PostgreSQL server binaries (initdb, pg_ctl) under {_BIN_GLOB}")
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        self.root: Path | None = None
        self._as_postgres = os.geteuid() == 0

    @property
    def data_dir(self) -> Path:
        if self.root is None:
            raise RuntimeError("the private PostgreSQL cluster has not been created")
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        if self.root is None:
            raise RuntimeError("the private PostgreSQL cluster has not been created")
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        if self.root is None:
            return False
        result = self._run("pg_ctl", "-D", str(self.data_dir), "status", check=False)
        return result.returncode == 0

    # --- lifecycle ---------------------------------------------------------------------

    def create(self) -> None:
        """``initdb`` a fresh cluster (trust authentication) in a new temporary directory."""
        if self.root is not None:
            return
        self.root = Path(tempfile.mkdtemp(prefix="we-private-pg-"))
        if self._as_postgres:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def start(self) -> None:
        """Start the server on ``port`` (if it is not running); returns once it accepts connections."""
        self.create()
        if self.running:
            return
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            result = self._run(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-o",
                options,
                "-t",
                str(int(self.startup_timeout_s)),
                "-w",
                "start",
                check=False,
            )
            if result.returncode == 0:
                return
            # a port still held by the previous server's dying sockets: try again shortly
            if time.monotonic() > deadline:
                raise RuntimeError(f"private PostgreSQL did not start: {result.stderr}\n{self._log_tail()}")
            time.sleep(0.2)

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server: ``fast`` disconnects clients cleanly, ``immediate`` is a crash."""
        if self.root is None or not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "stop")

    def restart(self, mode: StopMode = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete the cluster."""
        if self.root is None:
            return
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PrivatePostgres:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()

    # --- plumbing ----------------------------------------------------------------------

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / program), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(
            command,
            check=False,
            capture_output=True,
            text=True,
            timeout=self.startup_timeout_s + 30,
            cwd=self.root or "/",
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


async def create_database(cluster: PrivatePostgres, prefix: str = "test") -> str:
    """A new, empty database on the running cluster; its URL."""
    import asyncpg

    name = f"{prefix}_{uuid4().hex[:10]}"
    conn = await asyncpg.connect(cluster.url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return cluster.database_url(name)


def require_private_postgres() -> PrivatePostgres:
    """A new (not yet started) cluster; skip, or fail under CI, when PostgreSQL is not installed."""
    try:
        return PrivatePostgres()
    except FileNotFoundError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}, and CI is set: the PostgreSQL server must be installed")
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private cluster for the test module; tests may stop and start it."""
    with require_private_postgres() as cluster:
        yield cluster
