"""Conversation locks shared by every process using one Redis: :class:`RedisConversationLocks`.

A lock is the key ``{prefix}lock:{conversation_key}`` holding a random token:

- taken with ``SET key token NX PX ttl``; while it is taken, a waiter retries with a backoff that
  doubles from ``min_backoff_s`` up to ``max_backoff_s`` (with jitter) until ``wait_s`` has passed,
  then raises :class:`engine.errors.ConversationBusy`;
- renewed every ``ttl_s / 3`` while held, by a Lua script that extends the expiry only while the
  key still holds our token, so a crashed process's lock expires within ``ttl_s``;
- released by a Lua script that deletes the key only while it still holds our token, so a holder
  whose lock expired never releases somebody else's.

Within a process, the waiters of one conversation first queue on a
:class:`engine.locks.LocalConversationLocks` (first come, first served), so only the oldest of
them polls Redis and a process answers a conversation's messages in their arrival order.

A refused or timed-out connection is :class:`engine.errors.BackendUnavailable` naming
``REDIS_URL``; a lock that cannot be released (Redis gone) is logged and expires by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from config.urls import redact_url
from engine.errors import BackendUnavailable, ConversationBusy, StorageError
from engine.locks import LocalConversationLocks
from storage.cache.redis_connection import connect_redis, not_started, redis_errors

logger = logging.getLogger(__name__)

# KEYS[1]: the lock; ARGV[1]: our token; ARGV[2]: the new time-to-live in milliseconds.
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS[1]: the lock; ARGV[1]: our token.
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisConversationLocks:
    """Per-conversation locks in Redis; ``url`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "we:",
        ttl_s: float = 30.0,
        wait_s: float = 120.0,
        min_backoff_s: float = 0.005,
        max_backoff_s: float = 0.2,
        connect_timeout_s: float = 2.0,
        op_timeout_s: float = 5.0,
    ) -> None:
        if ttl_s <= 0 or wait_s <= 0:
            raise ValueError("ttl_s and wait_s must be positive")
        if not 0 < min_backoff_s <= max_backoff_s:
            raise ValueError("backoffs must satisfy 0 < min_backoff_s <= max_backoff_s")
        self._url = url
        self._prefix = prefix
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self._connect_timeout_s = connect_timeout_s
        self._op_timeout_s = op_timeout_s
        self._local = LocalConversationLocks()
        self._client: aioredis.Redis | None = None
        self._renew: AsyncScript | None = None
        self._release: AsyncScript | None = None
        self.lost = 0
        """Locks found taken over by another holder (expired while held) when renewed or released."""

    def __repr__(self) -> str:
        return f"RedisConversationLocks({redact_url(self._url)!r}, prefix={self._prefix!r})"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        client = await connect_redis(
            self._url, connect_timeout_s=self._connect_timeout_s, socket_timeout_s=self._op_timeout_s
        )
        self._client = client
        self._renew = client.register_script(_RENEW_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> None:
        with self._errors():
            await self._redis().ping()

    # --- the lock ----------------------------------------------------------------------

    def _key(self, conversation_key: str) -> str:
        return f"{self._prefix}lock:{conversation_key}"

    @contextlib.asynccontextmanager
    async def hold(self, conversation_key: str) -> AsyncIterator[None]:
        """Hold the conversation in this process and in Redis; raises ConversationBusy after ``wait_s``."""
        deadline = time.monotonic() + self.wait_s
        async with self._local.hold(conversation_key, wait_s=self.wait_s):
            key = self._key(conversation_key)
            token = secrets.token_hex(16)
            await self._acquire(conversation_key, key, token, deadline)
            renewal = asyncio.create_task(self._keep_renewed(key, token), name=f"lock-renewal:{key}")
            try:
                yield
            finally:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
                await self._give_back(key, token)

    async def _acquire(self, conversation_key: str, key: str, token: str, deadline: float) -> None:
        client = self._redis()
        ttl_ms = max(1, math.ceil(self.ttl_s * 1000))
        backoff = self.min_backoff_s
        started = time.monotonic()
        while True:
            with self._errors():
                taken = await client.set(key, token, nx=True, px=ttl_ms)
            if taken:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # a cancel redis-py swallowed
                    await self._give_back(key, token)
                    raise asyncio.CancelledError
                return
            stop_if_cancelled()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ConversationBusy(conversation_key, time.monotonic() - started)
            await asyncio.sleep(min(backoff * random.uniform(0.5, 1.0), remaining))
            backoff = min(backoff * 2, self.max_backoff_s)

    async def _keep_renewed(self, key: str, token: str) -> None:
        """Push the expiry back every third of the TTL while the lock is ours."""
        ttl_ms = max(1, math.ceil(self.ttl_s * 1000))
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                with self._errors():
                    renewed = await self._script(self._renew)(keys=[key], args=[token, ttl_ms])
            except (BackendUnavailable, StorageError) as exc:
                stop_if_cancelled()
                logger.warning("could not renew lock %s (will retry): %s", key, exc)
                continue
            stop_if_cancelled()  # a cancel redis-py swallowed: the lock is being released
            if not renewed:
                self.lost += 1
                logger.error("lock %s expired while held: another process may be answering too", key)
                return

    async def _give_back(self, key: str, token: str) -> None:
        try:
            with self._errors():
                released = await self._script(self._release)(keys=[key], args=[token])
        except (BackendUnavailable, StorageError) as exc:
            logger.warning("could not release lock %s; it expires in %.0f s: %s", key, self.ttl_s, exc)
            return
        if not released:
            self.lost += 1
            logger.error("lock %s had expired before it was released", key)

    # --- helpers -----------------------------------------------------------------------

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise not_started("the conversation locks are not started")
        return self._client

    def _script(self, script: AsyncScript | None) -> AsyncScript:
        if script is None:
            raise not_started("the conversation locks are not started")
        return script

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self._url, "Redis lock operation")


def stop_if_cancelled() -> None:
    """Raise CancelledError when the current task was cancelled: redis-py can swallow a
    cancellation that lands while a pipeline is being reset, and a loop must still stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
