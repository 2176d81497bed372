"""``MicroBatchingEmbedder``: concurrent embedding requests share one model call.

In a busy channel many messages are embedded at nearly the same moment, each on its own.
The ONNX model embeds a batch of sixteen sentences in much less time than sixteen single calls,
so this wrapper of any :class:`engine.ports.Embedder` collects the texts that arrive within
``window_s`` of the first (or until ``max_batch`` are waiting), embeds them in one call and
hands every caller its own vectors. A lone request waits at most ``window_s`` (2 ms by default);
while a batch is being embedded, new requests gather for the next one. A failure of the model
call is raised to every caller of that batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.ports import Embedder, Vector


@dataclass(slots=True)
class _Request:
    texts: Sequence[str]
    done: asyncio.Future[list[Vector]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class MicroBatchingEmbedder:
    """An :class:`Embedder` that batches concurrent calls to ``inner``."""

    def __init__(self, inner: Embedder, *, window_s: float = 0.002, max_batch: int = 32) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError("window_s must be >= 0 and max_batch >= 1")
        self.inner = inner
        self.window_s = window_s
        self.max_batch = max_batch
        self._waiting: list[_Request] = []
        self._full = asyncio.Event()
        self._batcher: asyncio.Task[None] | None = None
        self.calls = 0
        """Calls made to ``inner``."""
        self.requests = 0
        """Calls answered."""

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    async def start(self) -> None:
        await self.inner.start()

    async def aclose(self) -> None:
        if self._batcher is not None:
            await asyncio.gather(self._batcher, return_exceptions=True)
        await self.inner.aclose()

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        if not texts:
            return []
        request = _Request(texts)
        self._waiting.append(request)
        if sum(len(r.texts) for r in self._waiting) >= self.max_batch:
            self._full.set()
        if self._batcher is None or self._batcher.done():
            self._batcher = asyncio.create_task(self._run(), name="embedding-batcher")
        return await request.done  # a caller that gives up cancels only its own request

    async def _run(self) -> None:
        """Embed what is waiting, a batch at a time, until nothing is."""
        while self._waiting:
            if self.window_s > 0:
                self._full.clear()
                if sum(len(r.texts) for r in self._waiting) < self.max_batch:
                    try:
                        async with asyncio.timeout(self.window_s):
                            await self._full.wait()
                    except TimeoutError:
                        pass
            batch = self._take()
            self.calls += 1
            try:
                vectors = await self.inner.embed([text for r in batch for text in r.texts])
            except asyncio.CancelledError:
                for request in batch:
                    request.done.cancel()
                raise
            except Exception as exc:  # not handled here: raised to every caller of the batch
                for request in batch:
                    if not request.done.done():
                        request.done.set_exception(exc)
                continue
            start = 0
            for request in batch:
                end = start + len(request.texts)
                if not request.done.done():
                    request.done.set_result(vectors[start:end])
                start = end
            self.requests += len(batch)

    def _take(self) -> list[_Request]:
        """Up to ``max_batch`` texts' worth of requests (at least one request), oldest first."""
        batch: list[_Request] = []
        taken = 0
        while self._waiting and (not batch or taken + len(self._waiting[0].texts) <= self.max_batch):
            request = self._waiting.pop(0)
            batch.append(request)
            taken += len(request.texts)
        return batch
