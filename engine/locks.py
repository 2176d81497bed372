"""Conversation locks inside one process: :class:`LocalConversationLocks`.

One ``asyncio.Lock`` per conversation key, created on first use and dropped when nobody holds
or waits for it. ``asyncio.Lock`` wakes its waiters first come, first served, and a newcomer
never overtakes a waiter, so the messages of a conversation are answered in the order they
reached the lock. Several processes share a conversation through
``storage.cache.locks.RedisConversationLocks``, which queues its own waiters here first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from engine.errors import ConversationBusy


@dataclass(slots=True)
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    """Holders and waiters: the entry is dropped when it falls to zero."""


class LocalConversationLocks:
    """Per-conversation FIFO locks for one event loop; ``wait_s`` (None: forever) bounds a wait."""

    def __init__(self, *, wait_s: float | None = None) -> None:
        if wait_s is not None and wait_s <= 0:
            raise ValueError("wait_s must be positive")
        self.wait_s = wait_s
        self._entries: dict[str, _Entry] = {}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    @property
    def active(self) -> int:
        """Conversations held or waited for right now."""
        return len(self._entries)

    @asynccontextmanager
    async def hold(self, conversation_key: str, *, wait_s: float | None = None) -> AsyncIterator[None]:
        """Hold ``conversation_key``; ``wait_s`` overrides the instance's wait limit."""
        limit = self.wait_s if wait_s is None else wait_s
        entry = self._entries.get(conversation_key)
        if entry is None:
            entry = self._entries[conversation_key] = _Entry()
        entry.users += 1
        try:
            started = time.monotonic()
            try:
                async with asyncio.timeout(limit):
                    await entry.lock.acquire()
            except TimeoutError:
                raise ConversationBusy(conversation_key, time.monotonic() - started) from None
            try:
                yield
            finally:
                entry.lock.release()
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[conversation_key]
