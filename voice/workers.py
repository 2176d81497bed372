"""A bounded pool of threads for one blocking speech engine.

``workers`` jobs run at once (a semaphore in front of an executor of that many threads),
at most ``queue_size`` more wait; beyond that a job is refused at once with
:class:`engine.errors.BackendUnavailable` instead of the queue growing without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from engine.errors import BackendUnavailable

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class WorkerPool:
    """Runs blocking calls off the event loop, ``workers`` at a time, ``queue_size`` waiting."""

    def __init__(
        self, service: str, *, workers: int = 1, queue_size: int = 8, variable: str | None = None
    ) -> None:
        if workers < 1 or queue_size < 0:
            raise ValueError("workers must be ≥ 1 and queue_size ≥ 0")
        self._service = service
        self._workers = workers
        self._queue_size = queue_size
        self._variable = variable
        self._executor: ThreadPoolExecutor | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._pending = 0

    @property
    def pending(self) -> int:
        """Jobs running or waiting now."""
        return self._pending

    @property
    def capacity(self) -> int:
        return self._workers + self._queue_size

    def _ensure(self) -> tuple[ThreadPoolExecutor, asyncio.Semaphore]:
        if self._executor is None or self._semaphore is None:
            prefix = "".join(c if c.isalnum() else "-" for c in self._service)[:24]
            self._executor = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix=prefix)
            self._semaphore = asyncio.Semaphore(self._workers)
        return self._executor, self._semaphore

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of the ``workers`` slots (waiting in the bounded queue for it)."""
        _, semaphore = self._ensure()
        if self._pending >= self.capacity:
            logger.warning(
                "%s is saturated: %d running, %d waiting; refusing a job",
                self._service,
                self._workers,
                self._pending - self._workers,
            )
            raise BackendUnavailable(
                self._service,
                f"busy with {self._pending} requests (at most {self.capacity} at once); try again shortly",
                variable=self._variable,
            )
        self._pending += 1
        try:
            async with semaphore:
                yield
        finally:
            self._pending -= 1

    async def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the pool's threads; the caller already holds a slot (:meth:`admit`)."""
        executor, _ = self._ensure()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the pool's threads when a slot is free; refused when saturated."""
        async with self.admit():
            return await self.call(fn, *args, **kwargs)

    def close(self) -> None:
        """Stop taking jobs; a job already running finishes in its thread."""
        executor, self._executor, self._semaphore = self._executor, None, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
