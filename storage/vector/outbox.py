"""A :class:`engine.ports.VectorMemory` whose writes survive the vector store being down.

:class:`DurableVectorMemory` wraps the real vector store (Chroma) and an *outbox* in the primary
database (the ``vector_outbox`` table, migration 0004; :class:`VectorOutbox` is the part of
``SQLConversationStore`` it uses).

Writes (``add``, ``update_metadata``, ``delete``, ``drop_scope``)
    go straight to the vector store while it answers and the outbox is empty. When the store is
    unreachable (``BackendUnavailable``, no answer within ``timeout_s``, or its circuit breaker
    open) the write is appended to the outbox instead and the call returns normally. While the
    outbox holds anything, every new write is appended behind it too, so the vector store sees
    all writes in the order they were made. ``drop_scope`` removes the scope's rows still waiting
    in the outbox before it queues itself (a forgotten user's texts do not wait in the database).
Replay
    A background task asks the vector store every ``probe_interval_s`` while the outbox is not
    empty; once it answers, the rows are applied in ``id`` order, a batch at a time, and deleted
    once applied. Every operation is idempotent (upsert by id, delete, drop), so a replay cut
    short and redone from the start of its batch leaves the same result. Processes sharing one
    database share the outbox: any of them may replay any row, and order holds within a process.
Reads
    ``query`` returns ``[]`` while the store is unreachable: the reply goes on without long-term
    recall (the engine's keyword search in the primary database still works). ``count`` raises.

Health is ``degraded`` while the store is unreachable or the outbox is being replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from engine.breaker import BreakerState, CircuitBreaker
from engine.errors import BackendUnavailable, CircuitOpen, StorageError
from engine.health import ComponentHealth
from engine.ports import MetadataValue, Vector, VectorHit, VectorItem, VectorMemory

logger = logging.getLogger(__name__)

OutboxOp = Literal["add", "update_metadata", "delete", "drop_scope"]


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One queued vector-store write (a row of ``vector_outbox``)."""

    id: int
    scope: str
    op: OutboxOp
    payload: Mapping[str, Any]
    created_at: datetime


class VectorOutbox(Protocol):
    """Where queued writes wait: ``SQLConversationStore`` on SQLite or PostgreSQL."""

    async def enqueue_vector_op(self, scope: str, op: OutboxOp, payload: Mapping[str, Any]) -> int:
        """Append one write; returns its id (ids grow in the order writes were appended)."""
        ...

    async def vector_outbox_batch(self, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` queued writes, oldest first."""
        ...

    async def delete_vector_outbox(self, ids: Sequence[int]) -> int:
        """Remove applied writes; returns how many rows were removed."""
        ...

    async def delete_vector_outbox_scope(self, scope: str) -> int:
        """Remove every queued write of ``scope``; returns how many rows were removed."""
        ...

    async def count_vector_outbox(self) -> int: ...


def encode_items(items: Sequence[VectorItem]) -> dict[str, Any]:
    """The JSON payload of an ``add``: ids, texts, embeddings and metadatas, in item order."""
    return {
        "ids": [item.id for item in items],
        "texts": [item.text for item in items],
        "embeddings": [[float(x) for x in item.embedding] for item in items],
        "metadatas": [dict(item.metadata) for item in items],
    }


def decode_items(payload: Mapping[str, Any]) -> list[VectorItem]:
    return [
        VectorItem(id=id_, text=text, embedding=list(embedding), metadata=dict(metadata))
        for id_, text, embedding, metadata in zip(
            payload["ids"], payload["texts"], payload["embeddings"], payload["metadatas"], strict=True
        )
    ]


class DurableVectorMemory:
    """``vectors`` while it answers; writes queued in ``outbox`` while it does not."""

    def __init__(
        self,
        vectors: VectorMemory,
        outbox: VectorOutbox,
        *,
        breaker: CircuitBreaker | None = None,
        timeout_s: float = 5.0,
        probe_interval_s: float = 5.0,
        batch_size: int = 100,
        service: str = "Chroma",
    ) -> None:
        if timeout_s <= 0 or probe_interval_s <= 0 or batch_size < 1:
            raise ValueError("timeout_s and probe_interval_s must be positive, batch_size at least 1")
        self.vectors = vectors
        self.outbox = outbox
        self.breaker = breaker or CircuitBreaker(service, failure_threshold=3, reset_timeout_s=30.0)
        self.service = service
        self._timeout_s = timeout_s
        self._probe_interval_s = probe_interval_s
        self._batch_size = batch_size
        self._inner_started = False
        self._pending = 0
        self._appending = 0  # inserts into the outbox under way
        self._appended = 0  # inserts into the outbox finished
        self._replay_lock = asyncio.Lock()
        self._replayer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.replayed = 0
        """Queued writes applied to the vector store so far."""

    @property
    def pending(self) -> int:
        """Writes waiting in the outbox (as this process counts them)."""
        return self._pending

    @property
    def available(self) -> bool:
        return self._inner_started and self.breaker.state is BreakerState.CLOSED

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._replayer is not None:
            return
        try:
            self._pending = await self.outbox.count_vector_outbox()  # left by an earlier run
        except (BackendUnavailable, StorageError) as exc:
            logger.warning("cannot count the vector outbox (%s): writes queue until it is read", exc)
            self._pending = 1  # unknown: queue (keeping order) until the replay finds it empty
        try:
            await self._start_inner()
        except BackendUnavailable as exc:
            logger.warning("%s; memory writes will wait in the database until it answers", exc)
        if self._pending:
            logger.info("%d memory writes wait in the vector outbox", self._pending)
        self._replayer = asyncio.create_task(self._replay_loop(), name="vector-outbox-replay")

    async def _start_inner(self) -> None:
        if self._inner_started:
            return
        try:
            async with asyncio.timeout(self._timeout_s + 5.0):
                await self.vectors.start()
        except TimeoutError as exc:
            self.breaker.record_failure("no answer at start-up")
            raise BackendUnavailable(self.service, "no answer at start-up") from exc
        except BackendUnavailable as exc:
            self.breaker.record_failure(str(exc))
            raise
        self._inner_started = True

    async def aclose(self) -> None:
        replayer, self._replayer = self._replayer, None
        if replayer is not None:
            replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replayer
        if self._inner_started:
            self._inner_started = False
            await self.vectors.aclose()

    async def ping(self) -> None:
        await self._start_inner()
        await self.breaker.call(self.vectors.ping, timeout_s=self._timeout_s)

    async def health(self, backend: str) -> ComponentHealth:
        """``ok``; ``degraded`` while the store is unreachable (no recall, writes queued) or while
        queued writes are replayed."""
        try:
            await self.ping()
        except BackendUnavailable as exc:
            reason = self.breaker.last_error or str(exc)
            return ComponentHealth(
                "vectors",
                "degraded",
                backend,
                f"{self.service} unreachable ({reason}): replies go without long-term recall; "
                f"{self._pending} memory writes queued in the database",
            )
        if self._pending:
            return ComponentHealth(
                "vectors", "degraded", backend, f"replaying {self._pending} queued memory writes"
            )
        return ComponentHealth("vectors", "ok", backend)

    # --- VectorMemory port -------------------------------------------------------------

    async def add(self, scope: str, items: Sequence[VectorItem]) -> None:
        if not items:
            return
        await self._write(scope, "add", encode_items(items), lambda: self.vectors.add(scope, items))

    async def update_metadata(self, scope: str, metadata: Mapping[str, Mapping[str, MetadataValue]]) -> None:
        if not metadata:
            return
        payload = {"metadata": {item_id: dict(meta) for item_id, meta in metadata.items()}}
        await self._write(
            scope, "update_metadata", payload, lambda: self.vectors.update_metadata(scope, metadata)
        )

    async def delete(self, scope: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        await self._write(scope, "delete", {"ids": list(ids)}, lambda: self.vectors.delete(scope, ids))

    async def drop_scope(self, scope: str) -> None:
        if not self._must_queue():
            try:
                await self.breaker.call(lambda: self.vectors.drop_scope(scope), timeout_s=self._timeout_s)
                return
            except BackendUnavailable as exc:
                logger.warning("%s; queueing the removal of %s's vectors", exc, scope)
        self._removed(await self.outbox.delete_vector_outbox_scope(scope))
        await self._enqueue(scope, "drop_scope", {})

    async def query(self, scope: str, embedding: Vector, k: int) -> list[VectorHit]:
        if not self._inner_started:
            return []
        try:
            return await self.breaker.call(
                lambda: self.vectors.query(scope, embedding, k), timeout_s=self._timeout_s
            )
        except CircuitOpen:
            return []
        except BackendUnavailable as exc:
            logger.warning("%s; recalling nothing from long-term memory", exc)
            self._wake.set()  # the replay task's probe notices when it is back
            return []

    async def count(self, scope: str) -> int:
        await self._start_inner()
        return await self.breaker.call(lambda: self.vectors.count(scope), timeout_s=self._timeout_s)

    # --- writes and the outbox ---------------------------------------------------------

    def _removed(self, rows: int) -> None:
        # Another process sharing the database may have replayed rows this one counted (or the
        # reverse): never below zero; an empty table found by the replay resets the count.
        self._pending = max(0, self._pending - rows)

    def _must_queue(self) -> bool:
        return self._pending > 0 or not self.available

    async def _write(
        self, scope: str, op: OutboxOp, payload: dict[str, Any], direct: Callable[[], Awaitable[None]]
    ) -> None:
        if not self._must_queue():
            try:
                await self.breaker.call(direct, timeout_s=self._timeout_s)
                return
            except BackendUnavailable as exc:
                logger.warning("%s; queueing the memory write in the database", exc)
        await self._enqueue(scope, op, payload)

    async def _enqueue(self, scope: str, op: OutboxOp, payload: Mapping[str, Any]) -> None:
        self._pending += 1  # before the insert awaits: writes arriving meanwhile queue behind it
        self._appending += 1
        try:
            await self.outbox.enqueue_vector_op(scope, op, payload)
        except BaseException:
            self._pending -= 1
            raise
        finally:
            self._appending -= 1
            self._appended += 1
        self._wake.set()

    async def _replay_loop(self) -> None:
        while True:
            if not self._pending and self.available:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self._probe_interval_s)
            try:
                await self.replay()
            except BackendUnavailable as exc:
                logger.debug("vector outbox: replay waits: %s", exc)
            except StorageError:
                logger.exception("vector outbox: replay failed; trying again in %gs", self._probe_interval_s)

    async def replay(self) -> int:
        """If the vector store answers, apply every queued write in order; returns how many.

        Raises ``BackendUnavailable`` when the store (still, or again) does not answer; what was
        applied before that is already off the outbox."""
        async with self._replay_lock:
            await self._start_inner()
            try:
                async with asyncio.timeout(self._timeout_s):
                    await self.vectors.ping()
            except TimeoutError as exc:
                self.breaker.record_failure(f"no answer within {self._timeout_s:g}s")
                raise BackendUnavailable(self.service, "no answer to the health probe") from exc
            except BackendUnavailable as exc:
                self.breaker.record_failure(str(exc))
                raise
            self.breaker.record_success()  # queries may use it again; writes queue until the end
            applied = 0
            while self._pending > 0:
                quiet, appended = self._appending == 0, self._appended
                batch = await self.outbox.vector_outbox_batch(self._batch_size)
                if not batch:
                    if quiet and self._appending == 0 and self._appended == appended:
                        self._pending = 0  # nothing was being appended, and the table is empty
                        break
                    await asyncio.sleep(0.01)  # a row being appended is about to appear
                    continue
                for entry in batch:
                    try:
                        await self._apply(entry)
                    except BackendUnavailable as exc:
                        self.breaker.record_failure(str(exc))
                        done = [e.id for e in batch[: batch.index(entry)]]
                        self._removed(await self.outbox.delete_vector_outbox(done))
                        raise
                self._removed(await self.outbox.delete_vector_outbox([e.id for e in batch]))
                applied += len(batch)
                self.replayed += len(batch)
            if applied:
                logger.info("vector outbox: %d queued memory writes applied to %s", applied, self.service)
            return applied

    async def _apply(self, entry: OutboxEntry) -> None:
        """Apply one queued write. One the vector store rejects (``StorageError``) is logged and
        dropped: kept, it would hold back every write behind it for good."""
        try:
            async with asyncio.timeout(self._timeout_s * 4):
                match entry.op:
                    case "add":
                        await self.vectors.add(entry.scope, decode_items(entry.payload))
                    case "update_metadata":
                        await self.vectors.update_metadata(entry.scope, dict(entry.payload["metadata"]))
                    case "delete":
                        await self.vectors.delete(entry.scope, list(entry.payload["ids"]))
                    case "drop_scope":
                        await self.vectors.drop_scope(entry.scope)
                    case _:
                        raise StorageError(f"unknown op {entry.op!r}")
        except TimeoutError as exc:
            raise BackendUnavailable(self.service, "no answer while replaying queued writes") from exc
        except (StorageError, KeyError, TypeError, ValueError) as exc:
            logger.error(
                "vector outbox: dropping queued %s #%d of %s: %s", entry.op, entry.id, entry.scope, exc
            )
