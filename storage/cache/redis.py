"""A Redis :class:`engine.ports.Cache` through ``redis.asyncio``.

Every key is stored under ``prefix`` (default ``"we:"``), so several deployments, or tests, can
share one Redis database. Multi-step updates are atomic: ``incr`` is a two-line Lua script (INCR,
then PEXPIRE only when the counter was just created) and ``push`` is RPUSH + LTRIM in one
MULTI/EXEC. ``delete_prefix`` walks the keyspace with SCAN (the prefix's glob characters escaped)
and UNLINKs in batches, never KEYS.

Errors: a refused or timed-out connection is :class:`engine.errors.BackendUnavailable` naming
``REDIS_URL`` (with any password in the URL redacted); anything else Redis rejects is
:class:`engine.errors.StorageError`.
"""

from __future__ import annotations

import logging
import math
import re
from contextlib import AbstractContextManager
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript

from config.urls import redact_url
from storage.cache import check_list_len, check_ttl
from storage.cache.redis_connection import connect_redis, not_started, redis_errors

logger = logging.getLogger(__name__)

_SCAN_COUNT = 500
_UNLINK_BATCH = 500

# KEYS[1]: the counter; ARGV[1]: its time-to-live in milliseconds, applied on creation only.
_INCR_SCRIPT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """Escape Redis glob metacharacters so ``text`` matches only itself in SCAN MATCH."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def _ttl_ms(ttl_s: float) -> int:
    check_ttl(ttl_s)
    return max(1, math.ceil(ttl_s * 1000))


class RedisCache:
    """Cache in a Redis server; ``url`` is a ``redis://`` / ``rediss://`` / ``unix://`` URL."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "we:",
        connect_timeout_s: float = 2.0,
        op_timeout_s: float = 5.0,
    ) -> None:
        self._url = url
        self._prefix = prefix
        self._connect_timeout_s = connect_timeout_s
        self._op_timeout_s = op_timeout_s
        self._client: aioredis.Redis | None = None
        self._incr: AsyncScript | None = None

    def __repr__(self) -> str:
        return f"RedisCache({redact_url(self._url)!r}, prefix={self._prefix!r})"

    @property
    def prefix(self) -> str:
        return self._prefix

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        client = await connect_redis(
            self._url,
            connect_timeout_s=self._connect_timeout_s,
            socket_timeout_s=self._op_timeout_s,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        )
        self._client = client
        self._incr = client.register_script(_INCR_SCRIPT)
        logger.info("connected to Redis at %s (key prefix %r)", redact_url(self._url), self._prefix)

    async def aclose(self) -> None:
        client, self._client, self._incr = self._client, None, None
        if client is not None:
            await client.aclose()

    async def ping(self) -> None:
        with self._errors():
            await self._redis().ping()

    # --- helpers -----------------------------------------------------------------------

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise not_started("the cache is not started")
        return self._client

    def _errors(self) -> AbstractContextManager[None]:
        return redis_errors(self._url)

    def _key(self, key: str) -> str:
        return self._prefix + key

    # --- Cache port --------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        with self._errors():
            value = await self._redis().get(self._key(key))
        return cast(str | None, value)

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else _ttl_ms(ttl_s)
        with self._errors():
            await self._redis().set(self._key(key), value, px=px)

    async def delete(self, *keys: str) -> None:
        if not keys:
            return
        with self._errors():
            await self._redis().unlink(*(self._key(k) for k in keys))

    async def incr(self, key: str, ttl_s: float) -> int:
        ms = _ttl_ms(ttl_s)
        client = self._redis()
        script = self._incr
        if script is None:  # started clients always have it; keeps the type checker honest
            raise not_started("the cache is not started")
        with self._errors():
            value = await script(keys=[self._key(key)], args=[ms], client=client)
        return int(value)

    async def push(self, key: str, value: str, max_len: int, ttl_s: float | None = None) -> None:
        check_list_len(max_len)
        if ttl_s is not None:
            check_ttl(ttl_s)
        full = self._key(key)
        with self._errors():
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.rpush(full, value)
                pipe.ltrim(full, -max_len, -1)
                if ttl_s is not None:
                    pipe.pexpire(full, max(int(ttl_s * 1000), 1))
                await pipe.execute()

    async def tail(self, key: str, n: int) -> list[str]:
        if n <= 0:
            return []
        with self._errors():
            values = await self._redis().lrange(self._key(key), -n, -1)
        return cast(list[str], values)

    async def delete_prefix(self, prefix: str) -> int:
        client = self._redis()
        pattern = glob_escape(self._key(prefix)) + "*"
        removed = 0
        batch: list[str] = []
        with self._errors():
            async for key in client.scan_iter(match=pattern, count=_SCAN_COUNT):
                batch.append(key)
                if len(batch) >= _UNLINK_BATCH:
                    removed += await client.unlink(*batch)
                    batch.clear()
            if batch:
                removed += await client.unlink(*batch)
        return removed
