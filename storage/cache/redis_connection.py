"""What the Redis cache, conversation locks and work queue share: connecting, and errors.

:func:`connect_redis` opens a client from a ``redis://`` / ``rediss://`` / ``unix://`` URL and
pings it (a malformed URL is :class:`engine.errors.ConfigError` naming ``REDIS_URL``).
:func:`redis_errors` turns a refused or timed-out connection into
:class:`engine.errors.BackendUnavailable` naming ``REDIS_URL`` (any password in the URL
redacted) and anything else Redis rejects into :class:`engine.errors.StorageError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from config.urls import redact_url
from engine.errors import BackendUnavailable, ConfigError, StorageError

REDIS_SERVICE = "Redis"
REDIS_VARIABLE = "REDIS_URL"


async def connect_redis(
    url: str, *, connect_timeout_s: float, socket_timeout_s: float, retry: Retry | None = None
) -> aioredis.Redis:
    """A client for ``url`` that has answered a PING; the caller closes it. ``retry``: how
    redis-py retries a failed command (None: redis-py's default)."""
    options: dict[str, Any] = {} if retry is None else {"retry": retry}
    try:
        client = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=connect_timeout_s,
            socket_timeout=socket_timeout_s,
            health_check_interval=30,
            **options,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {redact_url(url)}: {exc}", variable=REDIS_VARIABLE) from exc
    try:
        with redis_errors(url):
            await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client


@contextmanager
def redis_errors(url: str, operation: str = "Redis operation") -> Iterator[None]:
    """Redis's errors inside as BackendUnavailable (no connection) or StorageError (the rest,
    as ``"{operation} failed: …"``)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, TimeoutError) as exc:
        detail = f"{redact_url(url)}: {_describe(exc)}"
        raise BackendUnavailable(REDIS_SERVICE, detail, variable=REDIS_VARIABLE) from exc
    except RedisError as exc:
        raise StorageError(f"{operation} failed: {_describe(exc)}") from exc


def not_started(detail: str) -> BackendUnavailable:
    """The error for a call made before ``start()`` (or after ``aclose()``), saying ``detail``."""
    return BackendUnavailable(REDIS_SERVICE, detail, variable=REDIS_VARIABLE)


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
