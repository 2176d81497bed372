"""FailoverCache against a private redis-server that the tests stop and restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest

from engine.breaker import BreakerState
from engine.errors import BackendUnavailable, StorageError
from storage.cache.failover import FailoverCache
from storage.cache.memory import MemoryCache
from storage.cache.redis import RedisCache
from tests.fakes.health import until
from tests.fakes.private_redis import PrivateRedis


@pytest.fixture
async def redis() -> AsyncIterator[PrivateRedis]:
    async with PrivateRedis() as server:
        yield server


async def direct(url: str, prefix: str) -> RedisCache:
    """A plain RedisCache to look inside the server, beside the cache under test."""
    probe = RedisCache(url, prefix=prefix)
    await probe.start()
    return probe


async def test_switches_to_memory_when_redis_stops_and_back_when_it_returns(redis: PrivateRedis) -> None:
    prefix = f"t{uuid4().hex[:8]}:"
    cache = FailoverCache(RedisCache(redis.url, prefix=prefix), MemoryCache(), probe_interval_s=0.1)
    await cache.start()
    try:
        assert cache.on_primary
        await cache.set("before", "1")
        inside = await direct(redis.url, prefix)
        assert await inside.get("before") == "1"
        await inside.aclose()
        assert cache.health("redis").status == "ok"

        await asyncio.to_thread(redis.stop)
        # Nothing raises: the first call that meets the dead server is served from memory.
        await cache.set("during", "2")
        assert not cache.on_primary
        assert await cache.get("during") == "2"
        assert [await cache.incr("rl:user:1", 60) for _ in range(3)] == [1, 2, 3]
        # A list begun mid-outage would miss what came before: it stays missing until read...
        await cache.push("turns:conv", "mid-outage", max_len=2, ttl_s=60)
        assert await cache.tail("turns:conv", 10) == []
        # ... and the reader, told it is missing, rebuilds it.
        for turn in ("a", "b", "c"):
            await cache.push("turns:conv", turn, max_len=2, ttl_s=60)
        assert await cache.tail("turns:conv", 10) == ["b", "c"]
        health = cache.health("redis")
        assert health.status == "degraded"
        assert "in-process" in health.backend and "unreachable" in health.detail
        await cache.ping()  # the cache as a whole still answers

        await asyncio.to_thread(redis.restart)
        await until(lambda: cache.on_primary, "the cache to return to Redis")
        assert cache.breaker.state is BreakerState.CLOSED
        assert cache.health("redis").status == "ok"

        await cache.set("after", "3")
        assert await cache.incr("rl:user:2", 60) == 1
        inside = await direct(redis.url, prefix)
        try:
            assert await inside.get("after") == "3"  # written to Redis, not to memory
            assert await inside.get("rl:user:2") == "1"
        finally:
            await inside.aclose()
        assert await cache.fallback.get("during") is None  # the stand-in was emptied
        assert cache.switches == 2
    finally:
        await cache.aclose()


async def test_keys_written_during_the_outage_are_dropped_from_redis_on_return(redis: PrivateRedis) -> None:
    prefix = f"t{uuid4().hex[:8]}:"
    # A probe interval this long never fires in the test: the switch back is asked for by hand.
    cache = FailoverCache(RedisCache(redis.url, prefix=prefix), MemoryCache(), probe_interval_s=3600)
    await cache.start()
    try:
        await asyncio.to_thread(redis.stop)
        await cache.push("turns:conv", "said during the outage", max_len=20)
        await cache.delete_prefix("rl:gone:")
        with pytest.raises(BackendUnavailable):
            await cache.try_primary()
        assert not cache.on_primary

        await asyncio.to_thread(redis.restart)
        inside = await direct(redis.url, prefix)
        try:
            # What Redis holds for those keys is older than the outage: it must not be served.
            await inside.push("turns:conv", "stale turn from before the outage", max_len=20)
            await inside.set("rl:gone:1", "7")
            await inside.set("untouched", "kept")
            assert await cache.try_primary() is True
            assert cache.on_primary
            assert await inside.tail("turns:conv", 10) == []
            assert await inside.get("rl:gone:1") is None
            assert await inside.get("untouched") == "kept"
            assert await cache.tail("turns:conv", 10) == []  # a miss: the engine reads the store
        finally:
            await inside.aclose()
    finally:
        await cache.aclose()


async def test_starts_on_memory_when_redis_is_down_and_moves_to_it_later(redis: PrivateRedis) -> None:
    prefix = f"t{uuid4().hex[:8]}:"
    await asyncio.to_thread(redis.stop)
    cache = FailoverCache(RedisCache(redis.url, prefix=prefix), MemoryCache(), probe_interval_s=0.1)
    await cache.start()  # no error: the in-process cache stands in
    try:
        assert not cache.on_primary
        assert cache.health("redis").status == "degraded"
        assert await cache.incr("rl:x", 60) == 1
        await asyncio.to_thread(redis.start)
        await until(lambda: cache.on_primary, "the cache to connect to Redis")
        await cache.set("k", "v")
        inside = await direct(redis.url, prefix)
        try:
            assert await inside.get("k") == "v"
        finally:
            await inside.aclose()
    finally:
        await cache.aclose()


async def test_bad_input_is_not_mistaken_for_an_outage(redis: PrivateRedis) -> None:
    cache = FailoverCache(
        RedisCache(redis.url, prefix=f"t{uuid4().hex[:8]}:"), MemoryCache(), probe_interval_s=3600
    )
    await cache.start()
    try:
        with pytest.raises(ValueError, match="ttl_s"):
            await cache.set("k", "v", ttl_s=0)
        await cache.push("list", "x", max_len=5)
        with pytest.raises(StorageError):
            await cache.get("list")
        assert cache.on_primary
    finally:
        await cache.aclose()
