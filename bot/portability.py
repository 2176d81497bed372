"""``whisperengine backup | restore | migrate``: the deployment's data moved with progress bars.

The work is done by :mod:`storage.portability`; this module builds the source and target from
the settings (DATABASE_URL / CHROMA_URL or the embedded defaults under DATA_DIR), draws the
progress with ``rich`` and prints a summary. Stop the bot first: an embedded Chroma directory
must not be opened by two processes, and a copy of a store being written to is not a snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import typing
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichBar

from config.settings import PACKAGED_PERSONAS, Settings
from config.urls import redact_url
from engine.errors import StorageError
from storage.portability import CopyOptions, CopyReport, Deployment, backup, migrate, restore

logger = logging.getLogger(__name__)

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
RESTORE_CHECKPOINT = "restore.checkpoint.json"
MIGRATE_CHECKPOINT = "migrate.checkpoint.json"
REDIS_NOTE = "cache: Redis holds only short-lived state (recent turns, rate limits): nothing to copy"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The three subcommands, added to the ``whisperengine`` parser."""
    backup_parser = sub.add_parser(
        "backup", help="write every table, vector and persona file (no secrets) to one archive file"
    )
    backup_parser.add_argument("path", type=Path, help="the archive to write (e.g. whisperengine.tar.gz)")
    backup_parser.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    restore_parser = sub.add_parser(
        "restore", help="verify an archive, then load it into DATABASE_URL / CHROMA_URL (or the defaults)"
    )
    restore_parser.add_argument("path", type=Path, help="an archive written by whisperengine backup")
    restore_parser.add_argument(
        "--force", action="store_true", help="empty a target that already holds data, then restore"
    )
    migrate_parser = sub.add_parser(
        "migrate", help="copy the store (and vectors) from the current backends to new ones"
    )
    migrate_parser.add_argument("--to", required=True, metavar="DATABASE_URL", help="the target database")
    vectors_to = migrate_parser.add_mutually_exclusive_group()
    vectors_to.add_argument(
        "--chroma-url", metavar="URL", help="a Chroma server to copy the vectors to (unset: they stay)"
    )
    vectors_to.add_argument(
        "--chroma-path", type=Path, metavar="DIR", help="an embedded Chroma directory to copy the vectors to"
    )
    migrate_parser.add_argument(
        "--force", action="store_true", help="empty a target that already holds data, then copy"
    )
    for parser in (backup_parser, restore_parser, migrate_parser):
        parser.add_argument("--batch-size", type=int, default=500, help="rows per batch (default 500)")


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``backup``, ``restore`` or ``migrate``; errors are one line on stderr."""
    err = Console(stderr=True, soft_wrap=True)
    options = CopyOptions(batch_size=max(1, args.batch_size), force=args.force)
    try:
        match args.command:
            case "backup":
                report = asyncio.run(_backup(settings, args.path, options))
            case "restore":
                report = asyncio.run(_restore(settings, args.path, options))
            case _:
                report = asyncio.run(_migrate(settings, args.to, args.chroma_url, args.chroma_path, options))
    except StorageError as exc:
        err.print(f"whisperengine: {exc}", markup=False, highlight=False)
        return EXIT_FAILED
    except OSError as exc:  # the archive or checkpoint cannot be written or read
        err.print(f"whisperengine: {args.command} failed: {exc}", markup=False, highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("interrupted: run the same command again to resume where it stopped", markup=False)
        return EXIT_INTERRUPTED
    _print_report(report)
    return 0


def _print_report(report: CopyReport) -> None:
    out = Console(highlight=False, soft_wrap=True)
    if report.resumed:
        out.print("resumed from a checkpoint", markup=False)
    out.print(f"tables: {sum(report.tables.values())} rows in {len(report.tables)} tables", markup=False)
    for name, rows in report.tables.items():
        out.print(f"  {name:<16} {rows}", markup=False)
    out.print(f"vectors: {sum(report.scopes.values())} in {len(report.scopes)} scopes", markup=False)
    for note in report.notes:
        out.print(f"note: {note}", markup=False)


# --- deployments from settings -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def open_deployment(
    database_url: str,
    *,
    chroma_url: str | None,
    chroma_path: Path | None,
    persona_dir: Path | None,
) -> AsyncIterator[Deployment]:
    """A started store (migrated to the newest schema) and vector store; closed on exit.

    ``chroma_url`` names a Chroma server, else ``chroma_path`` an embedded one, else no vectors.
    """
    from storage.sql import SQLConversationStore
    from storage.vector.chroma import ChromaVectorMemory

    async with contextlib.AsyncExitStack() as stack:
        store = SQLConversationStore(database_url)
        await store.start()
        stack.push_async_callback(store.aclose)
        vectors: ChromaVectorMemory | None = None
        if chroma_url:
            vectors = ChromaVectorMemory.http(chroma_url)
        elif chroma_path is not None:
            vectors = ChromaVectorMemory.embedded(chroma_path)
        if vectors is not None:
            await vectors.start()
            stack.push_async_callback(vectors.aclose)
        where = f"{redact_url(database_url)} + {vectors!r}" if vectors else redact_url(database_url)
        yield Deployment(store=store, vectors=vectors, persona_dir=persona_dir, description=where)


def _settings_deployment(settings: Settings) -> contextlib.AbstractAsyncContextManager[Deployment]:
    if settings.database_url is None:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return open_deployment(
        settings.effective_database_url,
        chroma_url=settings.chroma_url,
        chroma_path=None if settings.chroma_url else settings.effective_chroma_path,
        persona_dir=settings.persona_dirs[-1],
    )


def public_settings(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """The settings without secrets (named in the second value); passwords in URLs are masked."""
    secrets = set(settings.secrets())
    public: dict[str, Any] = {}
    excluded: list[str] = []
    for name, info in type(settings).model_fields.items():
        variable = name.upper()
        value = getattr(settings, name)
        if _is_secret(info.annotation) or isinstance(value, SecretStr):
            excluded.append(variable)
            continue
        if isinstance(value, str) and "://" in value:
            value = redact_url(value)
        if isinstance(value, str) and any(secret in value for secret in secrets):
            excluded.append(variable)
            continue
        public[variable] = str(value) if isinstance(value, Path) else value
    return public, excluded


def _is_secret(annotation: Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_is_secret(arg) for arg in typing.get_args(annotation))


# --- the three commands --------------------------------------------------------------------------


async def _backup(settings: Settings, path: Path, options: CopyOptions) -> CopyReport:
    snapshot, excluded = public_settings(settings)
    async with _settings_deployment(settings) as source, _Bars() as bars:
        bars.note(f"backing up {source.description} to {path}")
        report = await backup(
            source,
            path,
            settings_snapshot=snapshot,
            secrets_excluded=excluded,
            packaged_persona_dir=PACKAGED_PERSONAS,
            options=options,
            progress=bars,
        )
        bars.note(f"wrote {path} (secrets left out: {', '.join(excluded) or 'none'})")
    return report


async def _restore(settings: Settings, path: Path, options: CopyOptions) -> CopyReport:
    from storage.portability import verify_archive

    verified = await asyncio.to_thread(verify_archive, path)  # before the target is opened
    async with _settings_deployment(settings) as target, _Bars() as bars:
        bars.note(f"verified {path}; restoring it into {target.description}")
        return await restore(
            verified,
            target,
            checkpoint_path=settings.data_dir / RESTORE_CHECKPOINT,
            options=options,
            progress=bars,
        )


async def _migrate(
    settings: Settings, to: str, chroma_url: str | None, chroma_path: Path | None, options: CopyOptions
) -> CopyReport:
    async with (
        _settings_deployment(settings) as source,
        open_deployment(to, chroma_url=chroma_url, chroma_path=chroma_path, persona_dir=None) as target,
        _Bars() as bars,
    ):
        bars.note(f"migrating {source.description} to {target.description}")
        if chroma_url is None and chroma_path is None:
            bars.note("vectors: no --chroma-url or --chroma-path given, so they stay where they are")
        if settings.redis_url:
            bars.note(REDIS_NOTE)
        else:
            bars.note("cache: in-process, nothing to copy")
        return await migrate(
            source,
            target,
            checkpoint_path=settings.data_dir / MIGRATE_CHECKPOINT,
            options=options,
            progress=bars,
        )


class _Bars:
    """:class:`storage.portability.Progress` as rich progress bars on stderr, one per table/scope;
    a finished one leaves a line, so a log of a non-interactive run shows progress too."""

    def __init__(self) -> None:
        self._bar = RichBar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True, soft_wrap=True),
            transient=True,
        )
        self._tasks: dict[str, TaskID] = {}

    async def __aenter__(self) -> _Bars:
        self._bar.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._bar.stop()

    def begin(self, label: str, total: int | None) -> None:
        self._tasks[label] = self._bar.add_task(label, total=total)

    def advance(self, label: str, amount: int) -> None:
        if amount:
            self._bar.advance(self._tasks[label], amount)

    def end(self, label: str) -> None:
        task = self._tasks.pop(label)
        done = int(self._bar.tasks[self._tasks_index(task)].completed)
        self._bar.remove_task(task)
        self._bar.console.print(f"done {label}: {done}", markup=False, highlight=False)

    def _tasks_index(self, task: TaskID) -> int:
        return next(i for i, t in enumerate(self._bar.tasks) if t.id == task)

    def note(self, message: str) -> None:
        self._bar.console.print(message, markup=False, highlight=False)
