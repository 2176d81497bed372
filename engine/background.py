"""Shared shutdown of the engine's background tasks and queue workers (memory writer, relationship
tracker, fact extractor, memory care, check-ins), and :class:`ReplyPriority`, which makes their
work give way to replies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from engine.ports import WorkQueue

logger = logging.getLogger(__name__)


async def drain_and_stop(
    worker: asyncio.Task[None], queue: WorkQueue[Any], *, timeout_s: float, what: str
) -> None:
    """Let ``worker`` finish what ``queue`` holds (at most ``timeout_s``), then cancel it."""
    try:
        await asyncio.wait_for(queue.join(), timeout_s)
    except TimeoutError:
        logger.error("%s: %d items still queued at shutdown", what, queue.qsize())
    await cancel_and_wait(worker)


async def cancel_and_wait(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to stop) and wait until it has stopped."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


class ReplyPriority:
    """Background work gives way to replies being prepared.

    The engine marks each reply's context phase (``with priority.reply():``): recall, the
    user's message stored, the prompt built. Background writers call :meth:`give_way` before
    each batch and each commit: while replies are being prepared it waits for a moment without
    any (at most ``max_wait_s``, so a steady stream of replies never starves the writer and its
    queue never fills), then goes on. A burst of replies then does not queue behind a writer's
    batch for the database, the vector store or the CPU.
    """

    def __init__(self, *, max_wait_s: float = 0.02) -> None:
        self.max_wait_s = max_wait_s
        self._replying = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.waits = 0
        """Times background work waited for replies."""

    @property
    def replying(self) -> int:
        return self._replying

    @contextlib.contextmanager
    def reply(self) -> Iterator[None]:
        self._replying += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._replying -= 1
            if self._replying == 0:
                self._idle.set()

    async def give_way(self) -> None:
        """Wait (at most ``max_wait_s``) until no reply is being prepared."""
        if self._replying == 0:
            return
        self.waits += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.max_wait_s)
