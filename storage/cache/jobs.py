"""A work queue in Redis shared by processes: :class:`RedisWorkQueue` (``engine.ports.WorkQueue``).

Keys, under ``{prefix}jobs:{name}:``:

``pending``                 the list of jobs waiting (LPUSH in, taken from the right: FIFO)
``processing:{consumer}``   the jobs one consumer (one queue instance) has taken and not yet done
``alive:{consumer}``        that consumer's heartbeat, expiring ``alive_ttl_s`` after its last beat
``unfinished``              the set of ids of jobs not yet done, wherever they are
``failed``                  jobs that could not be decoded, kept for a person to look at

The reliable-list pattern: a job is moved atomically from ``pending`` to the consumer's
``processing`` list (``BLMOVE`` / ``LMOVE``), and removed from there (``LREM``) only once it is
done. At start, and every few heartbeats, jobs in the ``processing`` list of a consumer whose
heartbeat has expired (a crashed process) go back to the front of ``pending``. A process that
stops cleanly gives back the jobs it took but did not do. Delivery is at least once.

Each instance prefetches up to ``prefetch`` jobs at a time (``get`` waits for one, then moves
what else is there), so ``get_nowait``/``empty`` answer from jobs already taken, as
``asyncio.Queue``'s do. ``task_done`` is synchronous, as in ``asyncio.Queue``: the acks go to
Redis from a background task; ``join`` waits until every job put by this instance is done, by
whichever process took it. ``put`` waits while ``pending`` holds ``maxsize`` jobs (back-pressure).
While Redis is unreachable, ``put`` keeps the job in this process, which does it itself: nothing
is lost, nothing is shared until Redis is back.

Jobs are encoded with ``encode``/``decode`` (text); :func:`encode_turn`/:func:`decode_turn` do
it for the memory writer's :class:`engine.memory.TurnRecord`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import math
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from config.urls import redact_url
from engine.errors import BackendUnavailable, StorageError
from engine.memory import TurnRecord
from engine.ports import StoredMessage
from storage.cache.locks import stop_if_cancelled
from storage.cache.redis import glob_escape
from storage.cache.redis_connection import connect_redis, not_started, redis_errors

logger = logging.getLogger(__name__)

T = TypeVar("T")

_BLOCK_S = 1.0
_RETRY_S = 1.0
_REQUEUE_EVERY_BEATS = 3

# KEYS[1]: a dead consumer's processing list, KEYS[2]: pending. Moves every job back to the
# end of pending that is taken next; returns how many.
_REQUEUE_SCRIPT = """
local n = 0
while true do
  local job = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not job then return n end
  n = n + 1
end
"""


class RedisWorkQueue(Generic[T]):
    """A queue of jobs in Redis; ``name`` tells queues apart (one per kind of worker)."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        encode: Callable[[T], str],
        decode: Callable[[str], T],
        prefix: str = "we:",
        maxsize: int = 1000,
        prefetch: int = 32,
        alive_ttl_s: float = 30.0,
        connect_timeout_s: float = 2.0,
        op_timeout_s: float = 2.0,
    ) -> None:
        if maxsize < 1 or prefetch < 1 or alive_ttl_s <= 0:
            raise ValueError("maxsize and prefetch must be at least 1, alive_ttl_s positive")
        self._url = url
        self._encode = encode
        self._decode = decode
        self.maxsize = maxsize
        self.prefetch = prefetch
        self.alive_ttl_s = alive_ttl_s
        self._connect_timeout_s = connect_timeout_s
        self.op_timeout_s = op_timeout_s
        self.consumer = uuid.uuid4().hex
        base = f"{prefix}jobs:{name}:"
        self._base = base
        self._pending = base + "pending"
        self._processing = f"{base}processing:{self.consumer}"
        self._alive = f"{base}alive:{self.consumer}"
        self._unfinished = base + "unfinished"
        self._failed = base + "failed"
        self._client: aioredis.Redis | None = None
        self._requeue: AsyncScript | None = None
        self._taken: collections.deque[tuple[str | None, T]] = collections.deque()
        """Jobs moved to our processing list (or kept here: raw None), not yet handed out."""
        self._handed: collections.deque[str | None] = collections.deque()
        """Jobs handed to the worker, oldest first, until ``task_done``."""
        self._kept = 0
        """Jobs put while Redis was unreachable, kept in this process and not yet done."""
        self._degraded = False
        self._to_ack: list[str] = []
        self._ack_wanted = asyncio.Event()
        self._own: set[str] = set()
        """Ids of jobs put here and not yet known to be done."""
        self._tasks: list[asyncio.Task[None]] = []
        self.requeued = 0

    def __repr__(self) -> str:
        return f"RedisWorkQueue({redact_url(self._url)!r}, {self._base!r})"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        client = await connect_redis(
            self._url,
            connect_timeout_s=self._connect_timeout_s,
            socket_timeout_s=_BLOCK_S + 5.0,  # a blocking BLMOVE waits _BLOCK_S: leave room for it
        )
        try:
            with self._errors():
                await client.set(self._alive, "1", px=self._alive_ms)
        except BaseException:
            await client.aclose()
            raise
        self._client = client
        self._requeue = client.register_script(_REQUEUE_SCRIPT)
        await self.requeue_stale()
        self._tasks = [
            asyncio.create_task(self._beat(), name=f"{self._base}heartbeat"),
            asyncio.create_task(self._acker(), name=f"{self._base}acker"),
        ]

    async def aclose(self) -> None:
        """Send the acks still due, give back the jobs taken and not done, stop beating."""
        client = self._client
        if client is None:
            return
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        try:
            with self._errors():
                await self._flush_acks()
                given_back = await self._script()(keys=[self._processing, self._pending])
                await client.delete(self._alive)
            if given_back:
                logger.info("%s: gave back %d jobs not done", self._base, given_back)
        except (BackendUnavailable, StorageError) as exc:
            logger.warning(
                "%s: could not give back the jobs taken; another process takes them once this "
                "one's heartbeat expires: %s",
                self._base,
                exc,
            )
        self._taken.clear()
        self._handed.clear()
        self._client = None
        await client.aclose()

    async def ping(self) -> None:
        with self._errors():
            await self._redis().ping()

    # --- asyncio.Queue's interface ----------------------------------------------------------

    async def put(self, item: T) -> None:
        """Queue a job in Redis; while Redis is unreachable, this process keeps it and does it."""
        job_id = uuid.uuid4().hex
        raw = json.dumps({"id": job_id, "job": self._encode(item)})
        client = self._redis()
        try:
            while True:
                with self._errors():
                    async with asyncio.timeout(self.op_timeout_s):
                        if await client.llen(self._pending) < self.maxsize:
                            break
                await asyncio.sleep(0.05)
            with self._errors():
                async with asyncio.timeout(self.op_timeout_s), client.pipeline(transaction=True) as pipe:
                    pipe.sadd(self._unfinished, job_id)
                    pipe.lpush(self._pending, raw)
                    await pipe.execute()
        except BackendUnavailable as exc:
            if not self._degraded:
                logger.warning(
                    "%s: Redis is unreachable; this process does its own jobs: %s", self._base, exc
                )
            self._degraded = True
            self._kept += 1
            self._taken.append((None, item))
            return
        if self._degraded:
            logger.info("%s: Redis is back; jobs are shared again", self._base)
            self._degraded = False
        self._own.add(job_id)

    async def get(self) -> T:
        while not self._taken:
            await self._take()
            stop_if_cancelled()
        return self._hand_out()

    def get_nowait(self) -> T:
        if not self._taken:
            raise asyncio.QueueEmpty
        return self._hand_out()

    def empty(self) -> bool:
        return not self._taken

    def task_done(self) -> None:
        if not self._handed:
            raise ValueError("task_done() called more times than jobs were taken")
        raw = self._handed.popleft()
        if raw is None:  # a job kept while Redis was unreachable
            self._kept -= 1
            return
        self._to_ack.append(raw)
        self._ack_wanted.set()

    async def join(self) -> None:
        """Wait until every job put here is done, by this process or another."""
        while self._own or self._kept:
            if self._own:
                ids = list(self._own)
                try:
                    with self._errors():
                        flags = await self._redis().smismember(self._unfinished, ids)
                except BackendUnavailable:
                    flags = [True] * len(ids)  # unknown until Redis answers again
                for job_id, unfinished in zip(ids, flags, strict=True):
                    if not unfinished:
                        self._own.discard(job_id)
            if self._own or self._kept:
                await asyncio.sleep(0.05)

    def qsize(self) -> int:
        return len(self._own) + self._kept

    # --- inside ------------------------------------------------------------------------

    @property
    def _alive_ms(self) -> int:
        return max(1, math.ceil(self.alive_ttl_s * 1000))

    def _hand_out(self) -> T:
        raw, job = self._taken.popleft()
        self._handed.append(raw)
        return job

    async def _take(self) -> None:
        """Wait (a while) for one job, then take what else is pending, up to ``prefetch``."""
        client = self._redis()
        try:
            with self._errors():
                raw = await client.blmove(self._pending, self._processing, _BLOCK_S, "RIGHT", "LEFT")
                moved = [] if raw is None else [raw]
                while moved and len(moved) < self.prefetch:
                    more = await client.lmove(self._pending, self._processing, "RIGHT", "LEFT")
                    if more is None:
                        break
                    moved.append(more)
        except BackendUnavailable as exc:
            stop_if_cancelled()
            logger.warning("%s: cannot take jobs (retrying): %s", self._base, exc)
            await asyncio.sleep(_RETRY_S)
            return
        for raw in moved:
            job_id: str | None = None
            try:
                envelope = json.loads(raw)
                job_id = str(envelope["id"])
                self._taken.append((raw, self._decode(envelope["job"])))
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("%s: a job that cannot be decoded is set aside in 'failed': %s", self._base, exc)
                with self._errors():
                    async with client.pipeline(transaction=True) as pipe:
                        pipe.rpush(self._failed, raw)
                        pipe.lrem(self._processing, 1, raw)
                        if job_id is not None:
                            pipe.srem(self._unfinished, job_id)
                        await pipe.execute()

    async def _flush_acks(self) -> None:
        acks, self._to_ack = self._to_ack, []
        if not acks:
            return
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                for raw in acks:
                    pipe.lrem(self._processing, 1, raw)
                    pipe.srem(self._unfinished, json.loads(raw)["id"])
                await pipe.execute()
        except BaseException:
            self._to_ack[:0] = acks  # sent again next time
            raise

    async def _acker(self) -> None:
        while True:
            await self._ack_wanted.wait()
            self._ack_wanted.clear()
            try:
                with self._errors():
                    await self._flush_acks()
            except (BackendUnavailable, StorageError) as exc:
                stop_if_cancelled()
                logger.warning("%s: could not acknowledge jobs (retrying): %s", self._base, exc)
                await asyncio.sleep(_RETRY_S)
                self._ack_wanted.set()
            stop_if_cancelled()

    async def _beat(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(self.alive_ttl_s / 3)
            beats += 1
            try:
                with self._errors():
                    await self._redis().set(self._alive, "1", px=self._alive_ms)
                if beats % _REQUEUE_EVERY_BEATS == 0:
                    await self.requeue_stale()
            except (BackendUnavailable, StorageError) as exc:
                stop_if_cancelled()
                logger.warning("%s: heartbeat failed (retrying): %s", self._base, exc)
            stop_if_cancelled()

    async def requeue_stale(self) -> int:
        """Give the jobs of consumers whose heartbeat expired back to ``pending``; how many."""
        client = self._redis()
        requeued = 0
        marker = self._base + "processing:"
        with self._errors():
            async for key in client.scan_iter(match=glob_escape(marker) + "*", count=200):
                consumer = key[len(marker) :]
                if consumer == self.consumer or await client.exists(self._base + "alive:" + consumer):
                    continue
                requeued += int(await self._script()(keys=[key, self._pending]))
        if requeued:
            self.requeued += requeued
            logger.warning("%s: %d jobs of a stopped process handed out again", self._base, requeued)
        return requeued

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise not_started("the work queue is not started")
        return self._client

    def _script(self) -> AsyncScript:
        if self._requeue is None:
            raise not_started("the work queue is not started")
        return self._requeue

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self._url, "Redis queue operation")


# --- the memory writer's jobs ------------------------------------------------------------------


def _message_to_json(message: StoredMessage | None) -> dict[str, Any] | None:
    if message is None:
        return None
    data = dataclasses.asdict(message)
    data["created_at"] = message.created_at.isoformat()
    return data


def _message_from_json(data: dict[str, Any] | None) -> StoredMessage | None:
    if data is None:
        return None
    return StoredMessage(**{**data, "created_at": datetime.fromisoformat(data["created_at"])})


def encode_turn(turn: TurnRecord) -> str:
    """A :class:`TurnRecord` as JSON text (every field; messages' times in ISO 8601)."""
    data: dict[str, Any] = {}
    for field in dataclasses.fields(turn):
        value = getattr(turn, field.name)
        if isinstance(value, StoredMessage):
            data[field.name] = _message_to_json(value)
        elif isinstance(value, tuple):
            data[field.name] = list(value)
        elif value is not None and field.name == "embedding":
            data[field.name] = [float(x) for x in value]
        else:
            data[field.name] = value
    return json.dumps(data, separators=(",", ":"))


def decode_turn(raw: str) -> TurnRecord:
    """The :class:`TurnRecord` that :func:`encode_turn` wrote."""
    data = json.loads(raw)
    values: dict[str, Any] = {}
    for field in dataclasses.fields(TurnRecord):
        if field.name not in data:
            continue
        value = data[field.name]
        if field.name in ("user_message", "reply"):
            value = _message_from_json(value)
        elif isinstance(value, list) and field.name != "embedding":
            value = tuple(value)
        values[field.name] = value
    return TurnRecord(**values)
