"""The WorkQueue contract, run against ``asyncio.Queue`` (the in-process queue) and a real Redis;
then what only Redis does: processes sharing the work, jobs surviving a crash, the memory writer
on a shared queue."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from engine.errors import BackendUnavailable
from engine.memory import MemoryWriter, TurnRecord
from engine.ports import StoredMessage, WorkQueue
from storage.cache.jobs import RedisWorkQueue, decode_turn, encode_turn
from storage.sql import SQLConversationStore
from tests.conftest import fresh_postgres_database, require_redis
from tests.fakes.ports import FakeEmbedder, InMemoryVectorMemory

QueueFactory = Callable[..., WorkQueue[str]]


def unique_prefix() -> str:
    return f"test-jobs:{uuid.uuid4().hex}:"


async def redis_queue(prefix: str, **options: object) -> RedisWorkQueue[str]:
    queue: RedisWorkQueue[str] = RedisWorkQueue(
        require_redis(),
        name="test",
        encode=str,
        decode=str,
        prefix=prefix,
        **options,  # type: ignore[arg-type]
    )
    await queue.start()
    return queue


@pytest.fixture
async def cleanup(redis_client: aioredis.Redis) -> AsyncIterator[list[str]]:
    """Prefixes whose keys are deleted after the test."""
    prefixes: list[str] = []
    yield prefixes
    for prefix in prefixes:
        keys = [key async for key in redis_client.scan_iter(match=prefix + "*")]
        if keys:
            await redis_client.delete(*keys)


@pytest.fixture(params=["asyncio", "redis"])
async def make_queue(request: pytest.FixtureRequest, cleanup: list[str]) -> AsyncIterator[QueueFactory]:
    prefix = unique_prefix()
    cleanup.append(prefix)
    started: list[RedisWorkQueue[str]] = []

    async def factory(maxsize: int = 100) -> WorkQueue[str]:
        if request.param == "asyncio":
            return asyncio.Queue(maxsize)
        queue = await redis_queue(prefix, maxsize=maxsize)
        started.append(queue)
        return queue

    yield factory  # type: ignore[misc]
    for queue in started:
        await queue.aclose()


async def test_jobs_come_out_in_order_and_join_waits_for_task_done(make_queue: QueueFactory) -> None:
    queue = await make_queue()
    for job in ("a", "b", "c"):
        await queue.put(job)
    assert queue.qsize() == 3
    taken = [await queue.get()]
    while not queue.empty():
        taken.append(queue.get_nowait())
    assert taken == ["a", "b", "c"]
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    joined = asyncio.create_task(queue.join())
    queue.task_done()
    queue.task_done()
    await asyncio.sleep(0.2)
    assert not joined.done()  # one job is not done yet
    queue.task_done()
    async with asyncio.timeout(5):
        await joined
    assert queue.qsize() == 0


async def test_get_waits_for_a_job(make_queue: QueueFactory) -> None:
    queue = await make_queue()
    getting = asyncio.create_task(queue.get())
    await asyncio.sleep(0.1)
    assert not getting.done()
    await queue.put("late")
    async with asyncio.timeout(5):
        assert await getting == "late"
    queue.task_done()


async def test_put_waits_while_the_queue_is_full(make_queue: QueueFactory) -> None:
    queue = await make_queue(maxsize=2)
    await queue.put("1")
    await queue.put("2")
    third = asyncio.create_task(queue.put("3"))
    await asyncio.sleep(0.2)
    assert not third.done()
    await queue.get()
    async with asyncio.timeout(5):
        await third


# --- Redis only --------------------------------------------------------------------------------


async def test_two_processes_share_the_jobs_and_each_is_done_once(cleanup: list[str]) -> None:
    prefix = unique_prefix()
    cleanup.append(prefix)
    first = await redis_queue(prefix, prefetch=2)
    second = await redis_queue(prefix, prefetch=2)
    done: dict[str, list[str]] = {"first": [], "second": []}

    async def work(name: str, queue: RedisWorkQueue[str]) -> None:
        while True:
            job = await queue.get()
            await asyncio.sleep(0.005)
            done[name].append(job)
            queue.task_done()

    workers = [asyncio.create_task(work("first", first)), asyncio.create_task(work("second", second))]
    try:
        for i in range(40):
            await first.put(f"job-{i}")
        async with asyncio.timeout(10):
            await first.join()  # done by either process
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await first.aclose()
        await second.aclose()
    everything = done["first"] + done["second"]
    assert sorted(everything) == sorted(f"job-{i}" for i in range(40))
    assert done["first"] and done["second"]


async def test_jobs_of_a_crashed_process_are_handed_out_again(
    cleanup: list[str], redis_client: aioredis.Redis
) -> None:
    prefix = unique_prefix()
    cleanup.append(prefix)
    crashed = await redis_queue(prefix, alive_ttl_s=0.3)
    for job in ("one", "two", "three"):
        await crashed.put(job)
    assert await crashed.get() == "one"  # taken: moved to its processing list
    # the process dies: no clean stop, its heartbeat stops and expires
    for task in crashed._tasks:
        task.cancel()
    await asyncio.gather(*crashed._tasks, return_exceptions=True)
    await crashed._redis().aclose()
    await asyncio.sleep(0.5)

    survivor = await redis_queue(prefix)
    try:
        assert survivor.requeued == 3  # what the dead process held, its unprocessed prefetch included
        got = [await survivor.get()]
        while not survivor.empty():
            got.append(survivor.get_nowait())
        assert sorted(got) == ["one", "three", "two"]
        assert got[0] == "one"  # the oldest job comes first again
        for _ in got:
            survivor.task_done()
    finally:
        await survivor.aclose()
    assert await redis_client.scard(f"{prefix}jobs:test:unfinished") == 0


async def test_a_live_process_keeps_its_jobs(cleanup: list[str]) -> None:
    prefix = unique_prefix()
    cleanup.append(prefix)
    busy = await redis_queue(prefix)
    other = await redis_queue(prefix)
    try:
        await busy.put("mine")
        assert await busy.get() == "mine"
        assert await other.requeue_stale() == 0
        assert other.empty()
        busy.task_done()
    finally:
        await busy.aclose()
        await other.aclose()


async def test_a_clean_stop_gives_back_the_jobs_not_done(cleanup: list[str]) -> None:
    prefix = unique_prefix()
    cleanup.append(prefix)
    stopping = await redis_queue(prefix, prefetch=10)
    for job in ("x", "y"):
        await stopping.put(job)
    assert await stopping.get() == "x"  # "y" prefetched too; neither done
    await stopping.aclose()
    successor = await redis_queue(prefix)
    try:
        assert successor.requeued == 0  # nothing stale: they were given back
        got = [await successor.get()]
        while not successor.empty():
            got.append(successor.get_nowait())
        assert got == ["x", "y"]
    finally:
        await successor.aclose()


async def test_an_undecodable_job_is_set_aside(cleanup: list[str], redis_client: aioredis.Redis) -> None:
    prefix = unique_prefix()
    cleanup.append(prefix)

    def picky(text: str) -> str:
        if text == "poison":
            raise ValueError("not a job of this version")
        return text

    queue: RedisWorkQueue[str] = RedisWorkQueue(
        require_redis(), name="test", encode=str, decode=picky, prefix=prefix
    )
    await queue.start()
    try:
        await queue.put("poison")
        await queue.put("fine")
        assert await queue.get() == "fine"
        queue.task_done()
        async with asyncio.timeout(5):
            await queue.join()
        [failed] = await redis_client.lrange(f"{prefix}jobs:test:failed", 0, -1)
        assert json.loads(failed)["job"] == "poison"
    finally:
        await queue.aclose()


async def test_unreachable_redis_names_redis_url() -> None:
    queue: RedisWorkQueue[str] = RedisWorkQueue(
        "redis://app:hunter2@127.0.0.1:1/0", name="test", encode=str, decode=str, connect_timeout_s=1.0
    )
    with pytest.raises(BackendUnavailable) as caught:
        await queue.start()
    assert "REDIS_URL" in str(caught.value)
    assert "hunter2" not in str(caught.value)


async def test_jobs_are_kept_in_the_process_while_redis_is_unreachable(cleanup: list[str]) -> None:
    prefix = unique_prefix()
    cleanup.append(prefix)
    queue = await redis_queue(prefix)
    client = queue._client
    try:
        queue._client = aioredis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        await queue.put("during the outage")
        assert queue.qsize() == 1
        assert await queue.get() == "during the outage"
        queue.task_done()
        async with asyncio.timeout(5):
            await queue.join()
        assert queue.qsize() == 0
    finally:
        await queue._redis().aclose()
        queue._client = client
        await queue.aclose()


# --- the memory writer's jobs -----------------------------------------------------------------


def stored(content: str, *, role: str = "user", user: str = "discord:1") -> StoredMessage:
    return StoredMessage(
        id=uuid.uuid4().hex,
        conversation_key="discord:c1",
        user_key=user,
        role=role,  # type: ignore[arg-type]
        content=content,
        platform="discord",
        channel_id="c1",
        created_at=datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC),
        user_name="Alice",
        guild_id="g1",
        platform_message_id="m1",
    )


def test_a_turn_survives_the_trip_through_json() -> None:
    turn = TurnRecord(
        user_message=stored("my cat is called Miso"),
        reply=stored("What a lovely name!", role="assistant"),
        embedding=[0.25, -0.5, 1.0],
        recalled_ids=("m-1", "m-2"),
    )
    assert decode_turn(encode_turn(turn)) == turn
    bare = TurnRecord(user_message=stored("hello there friend"), reply=None)
    assert decode_turn(encode_turn(bare)) == bare


@pytest.fixture
def database_url() -> Iterator[str]:
    with fresh_postgres_database("we_work_queue") as url:
        yield url


async def test_two_memory_writers_share_one_queue(database_url: str, cleanup: list[str]) -> None:
    prefix = unique_prefix()
    cleanup.append(prefix)
    store = SQLConversationStore(database_url)
    await store.start()
    vectors, embedder = InMemoryVectorMemory(), FakeEmbedder()
    writers: list[MemoryWriter] = []
    queues: list[RedisWorkQueue[TurnRecord]] = []
    try:
        for _ in range(2):
            queue: RedisWorkQueue[TurnRecord] = RedisWorkQueue(
                require_redis(), name="memory-writer", encode=encode_turn, decode=decode_turn, prefix=prefix
            )
            await queue.start()
            queues.append(queue)
            writer = MemoryWriter(store, vectors, embedder, queue=queue, batch_size=4)
            await writer.start()
            writers.append(writer)
        await store.touch_user(
            "discord:1", platform="discord", user_id="1", display_name="Alice", seen_at=datetime.now(UTC)
        )
        turns = []
        for i in range(24):
            question = stored(f"message {i}: I really enjoy swimming in the lake")
            await store.add_message(question)
            turns.append(TurnRecord(user_message=question, reply=stored(f"reply {i}", role="assistant")))
        for turn in turns:
            await writers[0].submit(turn)
        async with asyncio.timeout(20):
            await writers[0].drain()
        assert writers[0].written + writers[1].written == 24
        assert writers[1].written > 0  # the second process took part
        assert writers[0].failed == writers[1].failed == 0
        history = await store.recent_messages("discord:c1", 100)
        assert sorted(m.content for m in history if m.role == "assistant") == sorted(
            f"reply {i}" for i in range(24)
        )
    finally:
        for writer in writers:
            await writer.aclose()
        for queue in queues:
            await queue.aclose()
        await store.aclose()


async def test_a_deleted_stream_is_made_again_and_jobs_go_on(
    cleanup: list[str], redis_client: aioredis.Redis
) -> None:
    """Someone clears the keys (``FLUSHDB``, a prefix delete) while a consumer waits for jobs."""
    prefix = unique_prefix()
    cleanup.append(prefix)
    queue = await redis_queue(prefix)
    try:
        waiting = asyncio.create_task(queue.get())
        await asyncio.sleep(0.2)  # blocked in XREADGROUP
        keys = [key async for key in redis_client.scan_iter(match=prefix + "*")]
        await redis_client.delete(*keys)
        await asyncio.sleep(0.2)
        await queue.put("after the wipe")
        async with asyncio.timeout(10):
            assert await waiting == "after the wipe"
        queue.task_done()
        async with asyncio.timeout(5):
            await queue.join()
    finally:
        await queue.aclose()
