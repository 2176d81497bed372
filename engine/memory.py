"""Long-term memory: recall on the reply path, writes in the background.

``recall`` embeds the user's message and asks the vector store for that user's nearest
memories (one partition per user, so it is never a filtered scan). Provenance travels
in the vector metadata, so a recall is one embedding and one vector query.

``MemoryWriter`` owns a bounded queue and one worker task. After a reply the engine
submits a :class:`TurnRecord`; the worker stores the assistant's turn, turns the user's
message into a memory (the speaker's name kept in the text; its time in the metadata) and
writes vectors and metadata. The recall query is that same text, so its embedding,
computed on the reply path anyway, is reused: the writer embeds only what has none.
A full queue makes ``submit`` wait (back-pressure) rather than drop anything; ``aclose``
drains the queue before it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from engine.errors import WhisperEngineError
from engine.events import MemoryHit, new_id
from engine.ports import (
    ConversationStore,
    Embedder,
    MemoryRecord,
    MetadataValue,
    StoredMessage,
    Vector,
    VectorItem,
    VectorMemory,
)

logger = logging.getLogger(__name__)

MIN_MEMORY_CHARS = 12


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One exchange, handed to the background writer after the reply."""

    user_message: StoredMessage
    reply: StoredMessage | None
    embedding: Vector | None = None
    """The embedding of ``memory_text`` of the user's message, when recall computed it."""


def memory_text(user_name: str, content: str) -> str:
    """What is stored, embedded and queried: who said it matters as much as what was said."""
    return f"{user_name}: {content.strip()}"


def worth_remembering(content: str) -> bool:
    """Cheap filter for the baseline extractor: skip greetings, one-word replies and commands."""
    text = content.strip()
    return len(text) >= MIN_MEMORY_CHARS and len(text.split()) >= 3 and not text.startswith("/")


def _metadata(record: MemoryRecord) -> dict[str, MetadataValue]:
    return {
        "created_at": record.created_at.isoformat(),
        "platform": record.platform,
        "channel_id": record.channel_id,
        "kind": record.kind,
        "importance": record.importance,
        "sources": ",".join(record.source_message_ids),
    }


def _hit(memory_id: str, text: str, similarity: float, meta: dict[str, MetadataValue]) -> MemoryHit:
    sources = str(meta.get("sources") or "")
    return MemoryHit(
        memory_id=memory_id,
        text=text,
        score=similarity,
        created_at=datetime.fromisoformat(str(meta["created_at"])),
        platform=str(meta.get("platform", "")),
        channel_id=str(meta.get("channel_id", "")),
        source_message_ids=tuple(s for s in sources.split(",") if s),
    )


class MemoryRecall:
    """Finds a user's memories relevant to a message."""

    def __init__(
        self, vectors: VectorMemory, embedder: Embedder, *, top_k: int, min_similarity: float
    ) -> None:
        self._vectors = vectors
        self._embedder = embedder
        self.top_k = top_k
        self.min_similarity = min_similarity

    async def embed(self, text: str) -> Vector:
        [embedding] = await self._embedder.embed([text])
        return embedding

    async def recall(self, user_key: str, text: str, k: int | None = None) -> list[MemoryHit]:
        if not text.strip():
            return []
        return await self.recall_by_vector(user_key, await self.embed(text), k)

    async def recall_by_vector(
        self, user_key: str, embedding: Vector, k: int | None = None
    ) -> list[MemoryHit]:
        hits = await self._vectors.query(user_key, embedding, k or self.top_k)
        return [
            _hit(h.id, h.text, h.similarity, dict(h.metadata))
            for h in hits
            if h.similarity >= self.min_similarity
        ]

    async def forget(self, user_key: str) -> None:
        await self._vectors.drop_scope(user_key)


class MemoryWriter:
    """The background write path: a bounded queue drained by one worker."""

    def __init__(
        self,
        store: ConversationStore,
        vectors: VectorMemory,
        embedder: Embedder,
        *,
        queue_size: int = 1000,
        batch_size: int = 32,
    ) -> None:
        self._store = store
        self._vectors = vectors
        self._embedder = embedder
        self._queue: asyncio.Queue[TurnRecord] = asyncio.Queue(maxsize=queue_size)
        self._batch_size = batch_size
        self._worker: asyncio.Task[None] | None = None
        self.written = 0
        self.failed = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="memory-writer")

    async def submit(self, record: TurnRecord) -> None:
        await self._queue.put(record)

    async def drain(self) -> None:
        """Wait until everything submitted so far has been written (or failed and been logged)."""
        await self._queue.join()

    async def aclose(self, timeout_s: float = 30.0) -> None:
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(self._queue.join(), timeout_s)
        except TimeoutError:
            logger.error("memory writer: %d turns still queued at shutdown", self._queue.qsize())
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self.write(batch)
                self.written += len(batch)
            except WhisperEngineError:
                self.failed += len(batch)
                logger.exception("memory writer: failed to store %d turns", len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def write(self, batch: Sequence[TurnRecord]) -> None:
        """Store replies and memories of a batch of turns."""
        for turn in batch:
            if turn.reply is not None:
                await self._store.add_message(turn.reply)
        remembered = [turn for turn in batch if worth_remembering(turn.user_message.content)]
        records = [
            MemoryRecord(
                id=new_id(),
                user_key=m.user_key,
                text=memory_text(m.user_name, m.content),
                created_at=m.created_at,
                kind="message",
                platform=m.platform,
                channel_id=m.channel_id,
                source_message_ids=(m.id,),
            )
            for m in (turn.user_message for turn in remembered)
        ]
        if not records:
            return
        embeddings = await self._embeddings(records, [turn.embedding for turn in remembered])
        by_user: dict[str, list[VectorItem]] = {}
        for record, embedding in zip(records, embeddings, strict=True):
            by_user.setdefault(record.user_key, []).append(
                VectorItem(id=record.id, text=record.text, embedding=embedding, metadata=_metadata(record))
            )
        await self._store.add_memories(records)
        for user_key, items in by_user.items():
            await self._vectors.add(user_key, items)

    async def _embeddings(
        self, records: Sequence[MemoryRecord], known: Sequence[Vector | None]
    ) -> list[Vector]:
        """Reuse the embeddings computed on the reply path; embed the rest in one batch."""
        missing = [i for i, vector in enumerate(known) if vector is None]
        fresh = iter(await self._embedder.embed([records[i].text for i in missing]) if missing else [])
        return [vector if vector is not None else next(fresh) for vector in known]
