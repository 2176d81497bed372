"""The Cache contract, run against the in-process cache and a real Redis."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from config.urls import redact_url
from engine.errors import BackendUnavailable, StorageError
from engine.ports import Cache
from storage.cache.failover import FailoverCache
from storage.cache.memory import MemoryCache
from storage.cache.redis import RedisCache, glob_escape
from tests.conftest import require_redis

SHORT_TTL = 0.2
PAST_SHORT_TTL = 0.35


def unique_prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture(params=["memory", "redis", "failover"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "memory":
        memory = MemoryCache()
        await memory.start()
        yield memory
        await memory.aclose()
        return
    url = require_redis()
    if request.param == "failover":  # Redis with the in-process stand-in: the same contract
        failover = FailoverCache(RedisCache(url, prefix=unique_prefix()), MemoryCache())
        await failover.start()
        try:
            yield failover
        finally:
            await failover.delete_prefix("")
            await failover.aclose()
        return
    redis = RedisCache(url, prefix=unique_prefix())
    await redis.start()
    try:
        yield redis
    finally:
        await redis.delete_prefix("")
        await redis.aclose()


async def test_get_set_delete(cache: Cache) -> None:
    assert await cache.get("missing") is None
    await cache.set("a", "1")
    await cache.set("b", "two")
    await cache.set("a", "one")
    assert await cache.get("a") == "one"
    assert await cache.get("b") == "two"
    await cache.delete("a", "b", "never-set")
    await cache.delete()
    assert await cache.get("a") is None
    assert await cache.get("b") is None


async def test_values_are_strings_kept_verbatim(cache: Cache) -> None:
    text = "héllo ✓\nline two\x00 and a NUL"
    await cache.set("k", text)
    assert await cache.get("k") == text
    await cache.set("empty", "")
    assert await cache.get("empty") == ""


async def test_ttl_expires(cache: Cache) -> None:
    await cache.set("short", "x", ttl_s=SHORT_TTL)
    await cache.set("long", "y", ttl_s=3600)
    await cache.set("forever", "z")
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await cache.get("short") is None
    assert await cache.get("long") == "y"
    assert await cache.get("forever") == "z"


async def test_set_without_ttl_clears_an_earlier_ttl(cache: Cache) -> None:
    await cache.set("k", "old", ttl_s=SHORT_TTL)
    await cache.set("k", "new")
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await cache.get("k") == "new"


async def test_non_positive_ttl_is_rejected(cache: Cache) -> None:
    with pytest.raises(ValueError):
        await cache.set("k", "v", ttl_s=0)
    with pytest.raises(ValueError):
        await cache.incr("k", ttl_s=-1)


async def test_incr_counts(cache: Cache) -> None:
    assert [await cache.incr("hits", ttl_s=3600) for _ in range(5)] == [1, 2, 3, 4, 5]
    assert await cache.get("hits") == "5"
    assert await cache.incr("other", ttl_s=3600) == 1


async def test_incr_counter_expires_from_its_first_increment(cache: Cache) -> None:
    assert await cache.incr("window", ttl_s=0.5) == 1
    # later increments do not push the expiry back
    assert await cache.incr("window", ttl_s=3600) == 2
    await asyncio.sleep(0.65)
    assert await cache.get("window") is None
    assert await cache.incr("window", ttl_s=3600) == 1


async def test_incr_is_atomic_under_concurrency(cache: Cache) -> None:
    results = await asyncio.gather(*(cache.incr("c", ttl_s=3600) for _ in range(50)))
    assert sorted(results) == list(range(1, 51))


async def test_push_and_tail_keep_the_newest_in_order(cache: Cache) -> None:
    for i in range(1, 6):
        await cache.push("turns", str(i), max_len=3)
    assert await cache.tail("turns", 10) == ["3", "4", "5"]
    assert await cache.tail("turns", 2) == ["4", "5"]
    assert await cache.tail("turns", 1) == ["5"]
    assert await cache.tail("turns", 0) == []
    assert await cache.tail("never-pushed", 5) == []


async def test_push_with_a_smaller_max_len_trims(cache: Cache) -> None:
    for i in range(5):
        await cache.push("l", str(i), max_len=10)
    await cache.push("l", "5", max_len=2)
    assert await cache.tail("l", 10) == ["4", "5"]


async def test_a_list_expires_after_its_last_push(cache: Cache) -> None:
    await cache.push("turns", "a", 10, ttl_s=3600)
    await cache.push("turns", "b", 10, ttl_s=SHORT_TTL)
    await cache.push("kept", "c", 10, ttl_s=3600)
    await cache.push("forever", "d", 10)
    assert await cache.tail("turns", 10) == ["a", "b"]
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await cache.tail("turns", 10) == []
    assert await cache.tail("kept", 10) == ["c"]
    assert await cache.tail("forever", 10) == ["d"]


async def test_delete_removes_lists(cache: Cache) -> None:
    await cache.push("l", "x", max_len=5)
    await cache.delete("l")
    assert await cache.tail("l", 5) == []


async def test_wrong_kind_of_key_is_a_storage_error(cache: Cache) -> None:
    await cache.set("s", "text")
    await cache.push("l", "x", max_len=5)
    with pytest.raises(StorageError):
        await cache.push("s", "y", max_len=5)
    with pytest.raises(StorageError):
        await cache.get("l")
    with pytest.raises(StorageError):
        await cache.incr("s", ttl_s=10)


async def test_delete_prefix_removes_only_matching_keys(cache: Cache) -> None:
    for key in ["user:1:a", "user:1:b", "user:10:a", "user:2:a", "xuser:1:a"]:
        await cache.set(key, "v")
    await cache.push("user:1:list", "v", max_len=3)
    assert await cache.delete_prefix("user:1:") == 3
    assert await cache.get("user:1:a") is None
    assert await cache.tail("user:1:list", 3) == []
    for key in ["user:10:a", "user:2:a", "xuser:1:a"]:
        assert await cache.get(key) == "v"
    assert await cache.delete_prefix("nothing-here:") == 0


@pytest.mark.parametrize("prefix", ["a*b:", "a?c:", "[ab]:", "back\\slash:"])
async def test_delete_prefix_treats_glob_characters_literally(cache: Cache, prefix: str) -> None:
    # keys a glob reading of the prefix would match, but a literal one must not
    decoys = {
        "a*b:": ["axxb:1", "ab:1"],
        "a?c:": ["abc:1", "axc:1"],
        "[ab]:": ["a:1", "b:1"],
        "back\\slash:": ["backslash:1", "back\\\\slash:1"],
    }[prefix]
    await cache.set(prefix + "1", "v")
    await cache.set(prefix + "2", "v")
    for key in decoys:
        await cache.set(key, "v")
    assert await cache.delete_prefix(prefix) == 2
    assert await cache.get(prefix + "1") is None
    for key in decoys:
        assert await cache.get(key) == "v"


async def test_delete_prefix_in_large_batches(cache: Cache) -> None:
    for i in range(1200):
        await cache.set(f"bulk:{i}", "v")
    await cache.set("keep", "v")
    assert await cache.delete_prefix("bulk:") == 1200
    assert await cache.get("bulk:7") is None
    assert await cache.get("keep") == "v"


async def test_delete_prefix_does_not_count_expired_keys(cache: Cache) -> None:
    await cache.set("p:gone", "v", ttl_s=SHORT_TTL)
    await cache.set("p:here", "v")
    await asyncio.sleep(PAST_SHORT_TTL)
    assert await cache.delete_prefix("p:") == 1


async def test_ping_and_lifecycle(cache: Cache) -> None:
    await cache.ping()


# --- Redis only --------------------------------------------------------------------------


@pytest.fixture
async def two_redis_caches() -> AsyncIterator[tuple[RedisCache, RedisCache]]:
    url = require_redis()
    base = unique_prefix()
    # the first prefix, read as a glob, would match the second one's keys
    first = RedisCache(url, prefix=base + "*:")
    second = RedisCache(url, prefix=base + "x:")
    await first.start()
    await second.start()
    try:
        yield first, second
    finally:
        for cache in (first, second):
            await cache.delete_prefix("")
            await cache.aclose()


async def test_prefixes_isolate_redis_caches(two_redis_caches: tuple[RedisCache, RedisCache]) -> None:
    first, second = two_redis_caches
    await first.set("k", "first")
    await second.set("k", "second")
    await first.push("l", "f", max_len=3)
    assert await first.get("k") == "first"
    assert await second.get("k") == "second"
    assert await second.tail("l", 3) == []
    assert await first.incr("n", 60) == 1
    assert await second.incr("n", 60) == 1

    assert await first.delete_prefix("") == 3
    assert await second.get("k") == "second"
    assert await second.get("n") == "1"


async def test_unreachable_redis_names_redis_url() -> None:
    cache = RedisCache("redis://app:hunter2@127.0.0.1:1/0", connect_timeout_s=1.0)
    with pytest.raises(BackendUnavailable) as info:
        await cache.start()
    assert info.value.variable == "REDIS_URL"
    assert "REDIS_URL" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(cache)


async def test_not_started_redis_cache_is_unavailable() -> None:
    cache = RedisCache("redis://127.0.0.1:1/0")
    with pytest.raises(BackendUnavailable):
        await cache.ping()
    with pytest.raises(BackendUnavailable):
        await cache.get("k")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def private_redis_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A throwaway redis-server of our own, so that a test can stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail("the private redis-server did not start")
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", process
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_ping_raises_when_redis_goes_away(
    private_redis_server: tuple[str, subprocess.Popen[bytes]],
) -> None:
    url, server = private_redis_server
    cache = RedisCache(url, connect_timeout_s=1.0)
    await cache.start()
    try:
        await cache.set("k", "v")
        await cache.ping()
        server.terminate()
        await asyncio.to_thread(server.wait, 10)
        with pytest.raises(BackendUnavailable) as info:
            await cache.ping()
        assert info.value.variable == "REDIS_URL"
        with pytest.raises(BackendUnavailable):
            await cache.get("k")
    finally:
        await cache.aclose()


def test_glob_escape() -> None:
    assert glob_escape("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"
    assert glob_escape("plain:key") == "plain:key"


def test_redact_url() -> None:
    assert redact_url("redis://user:secret@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact_url("redis://:secret@host/0") == "redis://:***@host/0"
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
