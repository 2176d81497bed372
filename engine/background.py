"""Shared shutdown of the engine's background tasks and queue workers (memory writer, relationship
tracker, fact extractor, memory care, check-ins)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
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
