"""An in-process :class:`engine.ports.Cache`: a dict with expiry times on a monotonic clock.

For a single process (development, tests, one-box deployments). Every method runs to completion
without awaiting, so concurrent asyncio tasks never see a half-done update; it is not meant to be
shared between threads. Expired entries are removed when touched, and by an occasional sweep so
that counters nobody reads again do not pile up.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import StorageError
from storage.cache import check_list_len, check_ttl

logger = logging.getLogger(__name__)

_SWEEP_EVERY_S = 60.0


@dataclass(slots=True)
class _Entry:
    value: str | deque[str]
    expires_at: float | None = None


class MemoryCache:
    """Cache kept in this process's memory; lost on restart."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._next_sweep = clock() + _SWEEP_EVERY_S

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        self._entries.clear()

    async def ping(self) -> None:
        return None

    # --- helpers -----------------------------------------------------------------------

    def _live(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= self._clock():
            del self._entries[key]
            return None
        return entry

    def _maybe_sweep(self) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY_S
        expired = [k for k, e in self._entries.items() if e.expires_at is not None and e.expires_at <= now]
        for key in expired:
            del self._entries[key]
        if expired:
            logger.debug("swept %d expired cache entries", len(expired))

    @staticmethod
    def _wrong_type(key: str, expected: str) -> StorageError:
        return StorageError(f"cache key {key!r} does not hold a {expected}")

    # --- Cache port --------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        entry = self._live(key)
        if entry is None:
            return None
        if not isinstance(entry.value, str):
            raise self._wrong_type(key, "string")
        return entry.value

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        if ttl_s is not None:
            check_ttl(ttl_s)
        self._maybe_sweep()
        expires_at = None if ttl_s is None else self._clock() + ttl_s
        self._entries[key] = _Entry(value, expires_at)

    async def delete(self, *keys: str) -> None:
        for key in keys:
            self._entries.pop(key, None)

    async def incr(self, key: str, ttl_s: float) -> int:
        check_ttl(ttl_s)
        entry = self._live(key)
        if entry is None:
            self._maybe_sweep()
            self._entries[key] = _Entry("1", self._clock() + ttl_s)
            return 1
        if not isinstance(entry.value, str):
            raise self._wrong_type(key, "counter")
        try:
            count = int(entry.value) + 1
        except ValueError:
            raise self._wrong_type(key, "counter") from None
        entry.value = str(count)
        return count

    async def push(self, key: str, value: str, max_len: int, ttl_s: float | None = None) -> None:
        check_list_len(max_len)
        if ttl_s is not None:
            check_ttl(ttl_s)
        entry = self._live(key)
        if entry is None:
            self._maybe_sweep()
            entry = _Entry(deque(maxlen=max_len))
            self._entries[key] = entry
        items = entry.value
        if not isinstance(items, deque):
            raise self._wrong_type(key, "list")
        if items.maxlen != max_len:
            items = entry.value = deque(items, maxlen=max_len)
        items.append(value)
        entry.expires_at = None if ttl_s is None else self._clock() + ttl_s

    async def tail(self, key: str, n: int) -> list[str]:
        if n <= 0:
            return []
        entry = self._live(key)
        if entry is None:
            return []
        items = entry.value
        if not isinstance(items, deque):
            raise self._wrong_type(key, "list")
        if n >= len(items):
            return list(items)
        return [items[i] for i in range(len(items) - n, len(items))]

    async def delete_prefix(self, prefix: str) -> int:
        now = self._clock()
        doomed = [k for k in self._entries if k.startswith(prefix)]
        removed = 0
        for key in doomed:
            entry = self._entries.pop(key)
            if entry.expires_at is None or entry.expires_at > now:
                removed += 1
        return removed
