"""A work queue in Redis shared by processes: :class:`RedisWorkQueue` (``engine.ports.WorkQueue``).

Built on a Redis Stream with a consumer group, Redis's own at-least-once work queue. Keys, under
``{prefix}jobs:{name}:``:

``stream``                  the jobs (``XADD``), read by the consumer group ``workers``
                            (``XREADGROUP ... >``): each job goes to one consumer and stays in the
                            group's pending entries list until that consumer acknowledges it
                            (``XACK``, then ``XDEL``)
``alive:{consumer}``        a consumer's heartbeat, expiring ``alive_ttl_s`` after its last beat
``unfinished``              the set of ids of jobs not yet done, wherever they are
``failed``                  jobs that could not be decoded, kept for a person to look at

At start, and every few heartbeats, the pending jobs of consumers whose heartbeat has expired (a
crashed process) are claimed (``XPENDING`` + ``XCLAIM``) and done here, oldest first. A process
that stops cleanly gives back the jobs it took but did not do: they are added to the stream
again and acknowledged in one transaction. Delivery is at least once; the memory writer's
writes are idempotent (message and memory ids come from the platform message's id).

Each instance reads up to ``prefetch`` jobs at a time (``get`` waits for one), so
``get_nowait``/``empty`` answer from jobs already taken, as ``asyncio.Queue``'s do.
``task_done`` is synchronous, as in ``asyncio.Queue``: the acks go to Redis from a background
task; ``join`` waits until every job put by this instance is done, by whichever process took
it. ``put`` waits while ``maxsize`` jobs wait undelivered (back-pressure). While Redis is
unreachable, ``put`` keeps the job in this process, which does it itself: nothing is lost,
nothing is shared until Redis is back. ``take_shared=False`` makes an instance that only puts
jobs for others (``whisperengine worker``) to do, and does only those it kept during an outage.

Jobs are encoded with ``encode``/``decode`` (text); :func:`encode_turn`/:func:`decode_turn` do
it for the memory writer's :class:`engine.memory.TurnRecord`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import uuid
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from config.urls import redact_url
from engine.errors import BackendUnavailable, StorageError
from engine.memory import TurnRecord
from engine.ports import StoredMessage
from storage.cache.locks import stop_if_cancelled
from storage.cache.redis_connection import connect_redis, not_started, redis_errors

logger = logging.getLogger(__name__)

T = TypeVar("T")

GROUP = "workers"
_BLOCK_MS = 1000
_RETRY_S = 1.0
_REQUEUE_EVERY_BEATS = 3
_CLAIM_BATCH = 500


@dataclasses.dataclass(slots=True)
class _Taken(Generic[T]):
    """A job this instance holds: its stream entry (None: kept here during an outage)."""

    entry: str | None
    job_id: str | None
    job: T


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
        take_shared: bool = True,
    ) -> None:
        if maxsize < 1 or prefetch < 1 or alive_ttl_s <= 0:
            raise ValueError("maxsize and prefetch must be at least 1, alive_ttl_s positive")
        self._url = url
        self._encode = encode
        self._decode = decode
        self.maxsize = maxsize
        self.prefetch = prefetch
        self.alive_ttl_s = alive_ttl_s
        self.take_shared = take_shared
        self._connect_timeout_s = connect_timeout_s
        self.op_timeout_s = op_timeout_s
        self.consumer = uuid.uuid4().hex
        base = f"{prefix}jobs:{name}:"
        self._base = base
        self._stream = base + "stream"
        self._alive = f"{base}alive:{self.consumer}"
        self._unfinished = base + "unfinished"
        self._failed = base + "failed"
        self._client: aioredis.Redis | None = None
        self._taken: deque[_Taken[T]] = deque()
        """Jobs read or claimed (or kept here), not yet handed out."""
        self._handed: deque[_Taken[T]] = deque()
        """Jobs handed to the worker, oldest first, until ``task_done``."""
        self._kept = 0
        """Jobs put while Redis was unreachable, kept in this process and not yet done."""
        self._kept_wanted = asyncio.Event()
        self._degraded = False
        self._to_ack: list[_Taken[T]] = []
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
            socket_timeout_s=_BLOCK_MS / 1000 + 5.0,  # a blocking XREADGROUP waits: leave room
        )
        self._client = client
        try:
            with self._errors():
                await client.set(self._alive, "1", px=self._alive_ms)
            await self._ensure_group()
        except BaseException:
            self._client = None
            await client.aclose()
            raise
        if self.take_shared:
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
        not_done = [t for t in (*self._handed, *self._taken) if t.entry is not None]
        try:
            with self._errors():
                await self._flush_acks()
                if not_done:
                    await self._give_back(not_done)
                await client.delete(self._alive)
                await client.xgroup_delconsumer(self._stream, GROUP, self.consumer)
            if not_done:
                logger.info("%s: gave back %d jobs not done", self._base, len(not_done))
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
        fields = {"id": job_id, "job": self._encode(item)}
        client = self._redis()
        try:
            while True:  # back-pressure: wait for consumers to take some
                try:
                    if await self._waiting() < self.maxsize:
                        break
                except StorageError:  # the stream or its group was deleted: made again
                    await self._ensure_group()
                    continue
                await asyncio.sleep(0.05)
            with self._errors():
                async with asyncio.timeout(self.op_timeout_s), client.pipeline(transaction=True) as pipe:
                    pipe.sadd(self._unfinished, job_id)
                    pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
                    await pipe.execute()
        except BackendUnavailable as exc:
            if not self._degraded:
                logger.warning(
                    "%s: Redis is unreachable; this process does its own jobs: %s", self._base, exc
                )
            self._degraded = True
            self._kept += 1
            self._taken.append(_Taken(None, None, item))
            self._kept_wanted.set()
            return
        if self._degraded:
            logger.info("%s: Redis is back; jobs are shared again", self._base)
            self._degraded = False
        self._own.add(job_id)

    async def get(self) -> T:
        while not self._taken:
            if self.take_shared:
                await self._take()
            else:  # only the jobs kept here during an outage
                self._kept_wanted.clear()
                await self._kept_wanted.wait()
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
        taken = self._handed.popleft()
        if taken.entry is None:  # a job kept while Redis was unreachable
            self._kept -= 1
            return
        self._to_ack.append(taken)
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
        taken = self._taken.popleft()
        self._handed.append(taken)
        return taken.job

    async def _ensure_group(self) -> None:
        """The stream and its consumer group, made if they are not there."""
        with self._errors():
            try:
                await self._redis().xgroup_create(self._stream, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):  # there already: fine
                    raise

    async def _waiting(self) -> int:
        """Jobs in the stream not yet delivered to any consumer."""
        with self._errors():
            async with asyncio.timeout(self.op_timeout_s), self._redis().pipeline(transaction=False) as pipe:
                pipe.xlen(self._stream)
                pipe.xpending(self._stream, GROUP)
                length, pending = await pipe.execute()
        return int(length) - int(pending["pending"])

    async def _take(self) -> None:
        """Wait (a while) for jobs, and take up to ``prefetch`` of them."""
        client = self._redis()
        try:
            with self._errors():
                answer = await client.xreadgroup(
                    GROUP, self.consumer, {self._stream: ">"}, count=self.prefetch, block=_BLOCK_MS
                )
        except BackendUnavailable as exc:
            stop_if_cancelled()
            logger.warning("%s: cannot take jobs (retrying): %s", self._base, exc)
            await asyncio.sleep(_RETRY_S)
            return
        except StorageError as exc:  # the stream or its group was deleted (NOGROUP, UNBLOCKED)
            stop_if_cancelled()
            logger.warning("%s: the job stream is gone; making it again: %s", self._base, exc)
            await self._ensure_group()
            return
        for _stream, entries in answer or ():
            await self._accept(entries)

    async def _accept(self, entries: list[tuple[str, dict[str, str]]]) -> None:
        """Decode entries read or claimed; set aside those that cannot be decoded."""
        for entry, fields in entries:
            job_id = fields.get("id")
            try:
                self._taken.append(_Taken(entry, job_id, self._decode(fields["job"])))
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("%s: a job that cannot be decoded is set aside in 'failed': %s", self._base, exc)
                with self._errors():
                    async with self._redis().pipeline(transaction=True) as pipe:
                        pipe.rpush(self._failed, json.dumps(fields))
                        pipe.xack(self._stream, GROUP, entry)
                        pipe.xdel(self._stream, entry)
                        if job_id is not None:
                            pipe.srem(self._unfinished, job_id)
                        await pipe.execute()

    async def _give_back(self, jobs: list[_Taken[T]]) -> None:
        """Add jobs taken and not done to the stream again, and drop them from this consumer."""
        client = self._redis()
        entries = [t.entry for t in jobs if t.entry is not None]
        async with client.pipeline(transaction=True) as pipe:
            for taken in jobs:
                fields = {"id": taken.job_id or uuid.uuid4().hex, "job": self._encode(taken.job)}
                pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
            pipe.xack(self._stream, GROUP, *entries)
            pipe.xdel(self._stream, *entries)
            await pipe.execute()

    async def _flush_acks(self) -> None:
        acks, self._to_ack = self._to_ack, []
        if not acks:
            return
        entries = [t.entry for t in acks if t.entry is not None]
        try:
            async with self._redis().pipeline(transaction=True) as pipe:
                pipe.xack(self._stream, GROUP, *entries)
                pipe.xdel(self._stream, *entries)
                ids = [t.job_id for t in acks if t.job_id is not None]
                if ids:
                    pipe.srem(self._unfinished, *ids)
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
                if self.take_shared and beats % _REQUEUE_EVERY_BEATS == 0:
                    await self.requeue_stale()
            except (BackendUnavailable, StorageError) as exc:
                stop_if_cancelled()
                logger.warning("%s: heartbeat failed (retrying): %s", self._base, exc)
            stop_if_cancelled()

    async def requeue_stale(self) -> int:
        """Claim the pending jobs of consumers whose heartbeat expired, to be done here, oldest
        first; how many."""
        client = self._redis()
        claimed: list[tuple[str, dict[str, str]]] = []
        with self._errors():
            for consumer in await client.xinfo_consumers(self._stream, GROUP):
                name = str(consumer["name"])
                if name == self.consumer or await client.exists(f"{self._base}alive:{name}"):
                    continue
                while True:
                    pending = await client.xpending_range(
                        self._stream, GROUP, min="-", max="+", count=_CLAIM_BATCH, consumername=name
                    )
                    if not pending:
                        break
                    ids = [p["message_id"] for p in pending]
                    entries = await client.xclaim(self._stream, GROUP, self.consumer, 0, ids)
                    claimed.extend(e for e in entries if e[1])  # deleted meanwhile: nothing to do
                    gone = [i for i in ids if i not in {e[0] for e in entries if e[1]}]
                    if gone:
                        await client.xack(self._stream, GROUP, *gone)
                await client.xgroup_delconsumer(self._stream, GROUP, name)
        claimed.sort(key=lambda e: tuple(int(part) for part in e[0].split("-")))
        await self._accept(claimed)
        if claimed:
            self.requeued += len(claimed)
            logger.warning("%s: %d jobs of a stopped process handed out again", self._base, len(claimed))
        return len(claimed)

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise not_started("the work queue is not started")
        return self._client

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
