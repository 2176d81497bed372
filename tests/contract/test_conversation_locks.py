"""The ConversationLocks contract, run against the in-process locks and a real Redis; then what
only Redis does: locks shared by several instances (processes), expiry, renewal, safe release."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from engine.errors import BackendUnavailable, ConversationBusy
from engine.locks import LocalConversationLocks
from engine.ports import ConversationLocks
from storage.cache.locks import RedisConversationLocks
from tests.conftest import require_redis

LockFactory = Callable[..., ConversationLocks]


def unique_prefix() -> str:
    return f"test-locks:{uuid.uuid4().hex}:"


@pytest.fixture(params=["local", "redis"])
async def make_locks(request: pytest.FixtureRequest) -> AsyncIterator[LockFactory]:
    """Builds started locks; every Redis instance of one test shares a fresh key prefix."""
    prefix = unique_prefix()
    started: list[ConversationLocks] = []

    async def factory(wait_s: float = 10.0, ttl_s: float = 5.0) -> ConversationLocks:
        locks: ConversationLocks
        if request.param == "local":
            locks = LocalConversationLocks(wait_s=wait_s)
        else:
            locks = RedisConversationLocks(require_redis(), prefix=prefix, wait_s=wait_s, ttl_s=ttl_s)
        await locks.start()
        started.append(locks)
        return locks

    yield factory  # type: ignore[misc]
    for locks in started:
        await locks.aclose()


async def held_one_at_a_time(locks: list[ConversationLocks], key: str, n: int) -> tuple[int, list[int]]:
    """``n`` tasks, spread over ``locks``, each holding ``key`` across a few awaits; returns the
    most that ever held it at once and the order in which they got it."""
    inside = 0
    most = 0
    order: list[int] = []

    async def worker(i: int) -> None:
        nonlocal inside, most
        async with locks[i % len(locks)].hold(key):
            inside += 1
            most = max(most, inside)
            order.append(i)
            for _ in range(3):
                await asyncio.sleep(0)
            await asyncio.sleep(0.002)
            inside -= 1

    await asyncio.gather(*(worker(i) for i in range(n)))
    return most, order


async def test_one_holder_at_a_time_in_arrival_order(make_locks: LockFactory) -> None:
    locks = await make_locks()
    most, order = await held_one_at_a_time([locks], "discord:c1", 20)
    assert most == 1
    assert order == list(range(20))


async def test_different_conversations_do_not_wait_for_each_other(make_locks: LockFactory) -> None:
    locks = await make_locks(wait_s=2.0)
    async with locks.hold("discord:a"):
        async with asyncio.timeout(1.5):
            async with locks.hold("discord:b"):
                pass


async def test_a_wait_past_the_limit_is_conversation_busy(make_locks: LockFactory) -> None:
    locks = await make_locks(wait_s=0.2)
    async with locks.hold("discord:busy"):
        with pytest.raises(ConversationBusy) as caught:
            async with locks.hold("discord:busy"):
                pytest.fail("entered a held conversation")
    assert caught.value.conversation_key == "discord:busy"
    assert "discord:busy" in str(caught.value)
    # freed afterwards, and the timed-out waiter left no trace behind
    async with asyncio.timeout(1.0):
        async with locks.hold("discord:busy"):
            pass


async def test_an_error_inside_releases_the_lock(make_locks: LockFactory) -> None:
    locks = await make_locks(wait_s=1.0)
    with pytest.raises(RuntimeError):
        async with locks.hold("discord:err"):
            raise RuntimeError("boom")
    async with locks.hold("discord:err"):
        pass


async def test_a_cancelled_waiter_does_not_block_the_next_one(make_locks: LockFactory) -> None:
    locks = await make_locks(wait_s=2.0)
    order: list[str] = []

    async def take(name: str) -> None:
        async with locks.hold("discord:cancel"):
            order.append(name)

    async with locks.hold("discord:cancel"):
        doomed = asyncio.create_task(take("doomed"))
        after = asyncio.create_task(take("after"))
        await asyncio.sleep(0.05)
        doomed.cancel()
    await after
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert order == ["after"]


async def test_local_locks_forget_idle_conversations() -> None:
    locks = LocalConversationLocks()
    await held_one_at_a_time([locks], "discord:x", 5)
    async with locks.hold("discord:y"):
        assert locks.active == 1
    assert locks.active == 0


# --- Redis only: shared by processes ---------------------------------------------------------


@pytest.fixture
async def two_processes() -> AsyncIterator[tuple[RedisConversationLocks, RedisConversationLocks]]:
    """Two lock instances with their own connections: what two processes would have."""
    prefix = unique_prefix()
    pair = (
        RedisConversationLocks(require_redis(), prefix=prefix, wait_s=10.0, ttl_s=2.0),
        RedisConversationLocks(require_redis(), prefix=prefix, wait_s=10.0, ttl_s=2.0),
    )
    for locks in pair:
        await locks.start()
    try:
        yield pair
    finally:
        for locks in pair:
            await locks.aclose()


async def test_two_processes_never_hold_a_conversation_at_once(
    two_processes: tuple[RedisConversationLocks, RedisConversationLocks],
) -> None:
    most, order = await held_one_at_a_time(list(two_processes), "discord:shared", 20)
    assert most == 1
    assert sorted(order) == list(range(20))
    # in each process, its own waiters still went first come, first served
    assert [i for i in order if i % 2 == 0] == list(range(0, 20, 2))
    assert [i for i in order if i % 2 == 1] == list(range(1, 20, 2))


async def test_the_lock_is_renewed_while_held(redis_client: aioredis.Redis) -> None:
    prefix = unique_prefix()
    holder = RedisConversationLocks(require_redis(), prefix=prefix, ttl_s=0.3)
    other = RedisConversationLocks(require_redis(), prefix=prefix, wait_s=0.9, ttl_s=0.3)
    await holder.start()
    await other.start()
    try:
        async with holder.hold("discord:long"):
            # held three times longer than its TTL: the other process still cannot take it
            with pytest.raises(ConversationBusy):
                async with other.hold("discord:long"):
                    pytest.fail("took a lock that was still held")
        assert holder.lost == 0
        assert await redis_client.exists(f"{prefix}lock:discord:long") == 0
    finally:
        await holder.aclose()
        await other.aclose()


async def test_a_crashed_holders_lock_expires(redis_client: aioredis.Redis) -> None:
    prefix = unique_prefix()
    # a process took the lock and died: nobody renews it
    await redis_client.set(f"{prefix}lock:discord:orphan", "dead-process-token", px=300)
    locks = RedisConversationLocks(require_redis(), prefix=prefix, wait_s=5.0)
    await locks.start()
    try:
        async with locks.hold("discord:orphan"):
            token = await redis_client.get(f"{prefix}lock:discord:orphan")
            assert token not in (None, "dead-process-token")
    finally:
        await locks.aclose()


async def test_release_never_deletes_another_holders_lock(redis_client: aioredis.Redis) -> None:
    prefix = unique_prefix()
    key = f"{prefix}lock:discord:taken-over"
    locks = RedisConversationLocks(require_redis(), prefix=prefix, ttl_s=5.0)
    await locks.start()
    try:
        async with locks.hold("discord:taken-over"):
            # our lock expired and another process took the conversation
            await redis_client.set(key, "other-process-token", px=5000)
        assert await redis_client.get(key) == "other-process-token"
        assert locks.lost == 1
    finally:
        await redis_client.delete(key)
        await locks.aclose()


async def test_unreachable_redis_names_redis_url() -> None:
    locks = RedisConversationLocks("redis://app:hunter2@127.0.0.1:1/0", connect_timeout_s=1.0)
    with pytest.raises(BackendUnavailable) as caught:
        await locks.start()
    assert "REDIS_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_not_started_redis_locks_are_unavailable() -> None:
    locks = RedisConversationLocks("redis://127.0.0.1:1/0")
    with pytest.raises(BackendUnavailable):
        async with locks.hold("discord:never"):
            pass
