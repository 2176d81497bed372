"""``SettingsMemo``: values read on every message but changed rarely, read once for everyone.

A value stays fresh for ``ttl_s`` (another process's change shows within that time). While a
key is being read, every other caller of that key waits for the same read instead of sending
its own: a burst of 200 messages in one channel reads the channel's settings once, not 200
times. A value written through :meth:`put` (this process changed it) wins over a read that was
already in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SettingsMemo(Generic[K, V]):
    def __init__(self, *, ttl_s: float = 30.0) -> None:
        self.ttl_s = ttl_s
        self._values: dict[K, tuple[float, V]] = {}
        self._reads: dict[K, asyncio.Future[V]] = {}
        self._versions: dict[K, int] = {}
        self.reads = 0
        """Reads of the source made (the rest were answered from the memo)."""

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        """The value of ``key``: fresh from the memo, else from the read in flight, else ``read()``."""
        hit = self._values.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        pending = self._reads.get(key)
        if pending is None:
            pending = self._reads[key] = asyncio.ensure_future(read())
            self.reads += 1
            version = self._versions.get(key, 0)

            def settle(done: asyncio.Future[V]) -> None:
                if self._reads.get(key) is done:
                    del self._reads[key]
                if done.cancelled() or done.exception() is not None:
                    return
                if self._versions.get(key, 0) == version:  # no put() since the read began
                    self._values[key] = (time.monotonic() + self.ttl_s, done.result())

            pending.add_done_callback(settle)
        # one caller giving up does not cancel the read the others wait for
        return await asyncio.shield(pending)

    def put(self, key: K, value: V) -> None:
        """This process changed ``key`` to ``value``: it is what every read answers from now."""
        self._versions[key] = self._versions.get(key, 0) + 1
        self._values[key] = (time.monotonic() + self.ttl_s, value)
