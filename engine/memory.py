"""Long-term memory: recall on the reply path, writes in the background.

``MemoryRecall.search`` finds the user's memories for a message in two ways at once: the
keyword index (``ConversationStore.keyword_search``: FTS5 BM25 | PostgreSQL ``ts_rank_cd``) is
asked as soon as the message arrives, the vector store (one partition per user, so never a
filtered scan) as soon as the message is embedded; :func:`fuse` merges the two candidate lists
(each scaled by its best score, keyword weighted above dense; recency and importance as small
extra terms; memories said by someone the message names ranked up). Without a keyword index,
recall is dense only. Provenance travels in the vector metadata and the memory rows, so a recall
is one embedding, one vector query and one keyword query. The README's Memory section has the
LoCoMo measurements behind the weights.

``MemoryWriter`` owns a bounded queue and one worker task. After a reply the engine
submits a :class:`TurnRecord`; the worker stores the assistant's turn, turns the user's
message into a memory (unless it only asks: :func:`asks_only`; the speaker's name kept in the
text; its time in the metadata; the day and the turn it followed kept as keyword-only
:func:`search_context`) and writes vectors and metadata. The recall query is that same text, so its embedding,
computed on the reply path anyway, is reused: the writer embeds only what has none.
A full queue makes ``submit`` wait (back-pressure) rather than drop anything; ``aclose``
drains the queue before it stops.

The writer also scores importance, reinforces near-duplicates instead of copying them, supersedes
contradicted memories (left out of recall, kept as history) and marks recalled memories
used: see ``engine/memory_care.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Protocol

from engine.background import ReplyPriority, drain_and_stop
from engine.errors import WhisperEngineError
from engine.events import MemoryHit, utcnow
from engine.memory_care import CarePolicy, ContradictionCheck, conflicts, score_importance
from engine.memory_llm import BackgroundLLM
from engine.ports import (
    ConversationStore,
    Embedder,
    MemoryRecord,
    MemoryState,
    MetadataValue,
    StoredMessage,
    Vector,
    VectorHit,
    VectorItem,
    VectorMemory,
    WorkQueue,
    WriteBatch,
)
from engine.statements import split_speaker, stated_facts, statement_kind

logger = logging.getLogger(__name__)

MIN_MEMORY_CHARS = 12
MAX_SPEAKER_CHARS = 64


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """One exchange, handed to the background writer after the reply."""

    user_message: StoredMessage
    reply: StoredMessage | None
    embedding: Vector | None = None
    """The embedding of ``memory_text`` of the user's message, when recall computed it."""
    recalled_ids: tuple[str, ...] = ()
    """The memories recall found for this message: marked used in the background."""
    follows: str = ""
    """The turn the user's message followed in the conversation (``memory_text`` of it), if any."""


def memory_text(user_name: str, content: str) -> str:
    """What is stored, embedded and queried: who said it matters as much as what was said."""
    return f"{user_name}: {content.strip()}"


def message_memory_id(message: StoredMessage) -> str:
    """The id of the memory made of a user's message: the same every time that message is
    written, so a job done twice (at-least-once delivery) writes one memory."""
    return hashlib.sha256(f"memory:{message.id}".encode()).hexdigest()[:32]


def speaker_of(text: str) -> str:
    """Who said a memory made by :func:`memory_text` ("" when the text has no speaker)."""
    name, sep, _ = text.partition(": ")
    return name if sep and 0 < len(name) <= MAX_SPEAKER_CHARS else ""


def search_context(said_at: datetime, follows: str) -> str:
    """Keyword-only words of a memory: the day it was said and the turn it followed.

    "Yes, it was amazing!" is found by the question it answered; "in May 2023" by its date.
    """
    day = f"{said_at.day} {said_at:%B %Y}"
    return f"{day}\n{follows.strip()}" if follows.strip() else day


def worth_remembering(content: str) -> bool:
    """Cheap filter for the baseline extractor: skip greetings, one-word replies and commands
    (a short message that states one of the speaker's facts, "im 28 now", is kept)."""
    text = content.strip()
    if text.startswith("/"):
        return False
    return (len(text) >= MIN_MEMORY_CHARS and len(text.split()) >= 3) or bool(stated_facts(text))


def asks_only(text: str) -> bool:
    """Whether a message (or a memory's ``"Name: ..."`` text) only asks: no memory is made of
    it. It says nothing to remember; it stays a turn of its conversation."""
    return statement_kind(split_speaker(text)[1]) == "question"


def vector_metadata(record: MemoryRecord, state: MemoryState | None = None) -> dict[str, MetadataValue]:
    """The metadata stored with a memory's vector, with the care fields of ``state`` (None:
    those of a new memory)."""
    return {
        "created_at": record.created_at.isoformat(),
        "platform": record.platform,
        "channel_id": record.channel_id,
        "kind": record.kind,
        "importance": state.importance if state is not None else record.importance,
        "sources": ",".join(record.source_message_ids),
        "mentions": state.mentions if state is not None else 1,
        "superseded_by": (state.superseded_by or "") if state is not None else "",
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


def _superseded(hit: VectorHit) -> bool:
    return bool(hit.metadata.get("superseded_by"))


@dataclass(slots=True)
class _GroupCommit:
    """What the writer stages for one group commit (``MemoryWriter._commit``)."""

    at: datetime
    messages: list[StoredMessage] = field(default_factory=list)
    used: dict[str, list[str]] = field(default_factory=dict)
    memories: list[MemoryRecord] = field(default_factory=list)
    vectors: dict[str, list[VectorItem]] = field(default_factory=dict)
    supersede: list[tuple[str, str, str]] = field(default_factory=list)
    """(user_key, the superseded memory's id, the id of the memory that supersedes it)."""
    metadata: dict[str, dict[str, dict[str, MetadataValue]]] = field(default_factory=dict)
    """Scope → memory id → metadata keys to set on its vector (no re-embedding)."""

    def add(self, record: MemoryRecord, embedding: Vector) -> None:
        self.memories.append(record)
        item = VectorItem(
            id=record.id, text=record.text, embedding=embedding, metadata=vector_metadata(record)
        )
        self.vectors.setdefault(record.user_key, []).append(item)

    def update(self, scope: str, memory_id: str, **metadata: MetadataValue) -> None:
        self.metadata.setdefault(scope, {}).setdefault(memory_id, {}).update(metadata)

    def stages_near(self, scope: str, embedding: Vector, similarity: float) -> bool:
        """Whether a memory staged here for ``scope`` is at least ``similarity`` close."""
        return any(_cosine(item.embedding, embedding) >= similarity for item in self.vectors.get(scope, ()))

    def stages_conflicting(self, record: MemoryRecord) -> bool:
        """Whether a memory staged here for ``record``'s user fills one of its slots otherwise."""
        return any(conflicts(item.text, record.text) for item in self.vectors.get(record.user_key, ()))


def _cosine(a: Vector, b: Vector) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return dot / norm if norm else 0.0


class KeywordSearch(Protocol):
    """Full-text search over a user's memories (``ConversationStore.keyword_search``)."""

    async def keyword_search(self, user_key: str, query: str, k: int) -> list[tuple[MemoryRecord, float]]:
        """The user's ``k`` best keyword matches for ``query``, best first; higher scores are better."""
        ...


@dataclass(frozen=True, slots=True)
class FusionWeights:
    """How dense and keyword candidates are merged into one ranking.

    Each list's scores are divided by that list's best score (so each lies in [0, 1], the best
    match of each list at 1, a candidate missing from a list at 0), then

        score = keyword * kw + dense * cos + recency * 0.5 ** (age / half_life)
                + importance * (imp - 0.5) + speaker * [the query names who said it]

    where age is counted back from the newest candidate (so a ranking never depends on the
    wall clock), and the speaker term applies when the query contains, as a word, the name
    the memory's text starts with ("When did Melanie paint?" prefers what Melanie said).
    ``pool``: how many candidates each list contributes, as a multiple of ``k``.
    """

    keyword: float = 0.8
    dense: float = 0.2
    recency: float = 0.05
    importance: float = 0.05
    speaker: float = 0.4
    half_life_days: float = 30.0
    pool: int = 10
    min_pool: int = 20

    def pool_size(self, k: int) -> int:
        return max(k * self.pool, self.min_pool)


@dataclass(slots=True)
class _Candidate:
    hit: MemoryHit
    importance: float
    dense: float = 0.0
    keyword: float = 0.0


def _scaled(scores: Sequence[float]) -> list[float]:
    """Scores divided by the best one, floored at 0."""
    best = max(scores, default=0.0)
    return [max(score, 0.0) / best if best > 0 else 0.0 for score in scores]


def fuse(
    dense: Sequence[VectorHit],
    keyword: Sequence[tuple[MemoryRecord, float]],
    k: int,
    weights: FusionWeights,
    *,
    query: str = "",
) -> list[MemoryHit]:
    """The ``k`` best of both candidate lists for ``query`` under ``weights``; each hit's score
    is its fused score."""
    candidates: dict[str, _Candidate] = {}
    for hit, scaled in zip(dense, _scaled([h.similarity for h in dense]), strict=True):
        meta = dict(hit.metadata)
        candidates[hit.id] = _Candidate(
            _hit(hit.id, hit.text, hit.similarity, meta), _importance(meta.get("importance")), dense=scaled
        )
    for (record, _), scaled in zip(keyword, _scaled([score for _, score in keyword]), strict=True):
        candidate = candidates.get(record.id)
        if candidate is None:
            candidate = candidates[record.id] = _Candidate(record_hit(record), record.importance)
        candidate.keyword = scaled
    if not candidates:
        return []
    newest = max(c.hit.created_at for c in candidates.values())
    half_life_s = weights.half_life_days * 86400.0
    named = _named_speakers(query, {speaker_of(c.hit.text) for c in candidates.values()})

    def score(c: _Candidate) -> float:
        age_s = max((newest - c.hit.created_at).total_seconds(), 0.0)
        return (
            weights.keyword * c.keyword
            + weights.dense * c.dense
            + weights.recency * float(0.5 ** (age_s / half_life_s))
            + weights.importance * (c.importance - 0.5)
            + (weights.speaker if named and speaker_of(c.hit.text) in named else 0.0)
        )

    ranked = sorted(candidates.values(), key=score, reverse=True)[:k]
    return [replace(c.hit, score=score(c)) for c in ranked]


def _named_speakers(query: str, speakers: set[str]) -> set[str]:
    """The speakers whose name the query contains as a word (any case)."""
    lowered = query.casefold()
    return {
        name
        for name in speakers
        if name and re.search(rf"(?<!\w){re.escape(name.casefold())}(?!\w)", lowered)
    }


def _importance(value: MetadataValue | None) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.5


def record_hit(record: MemoryRecord) -> MemoryHit:
    """A stored memory as a recall hit (score 0: not found by a search)."""
    return MemoryHit(
        memory_id=record.id,
        text=record.text,
        score=0.0,
        created_at=record.created_at,
        platform=record.platform,
        channel_id=record.channel_id,
        source_message_ids=record.source_message_ids,
    )


class MemoryRecall:
    """Finds a user's memories relevant to a message.

    Dense only without ``keywords``. With it, hybrid: the vector store's nearest memories and
    the keyword index's best matches, asked concurrently, merged by :func:`fuse`.
    """

    def __init__(
        self,
        vectors: VectorMemory,
        embedder: Embedder,
        *,
        top_k: int,
        min_similarity: float,
        keywords: KeywordSearch | None = None,
        weights: FusionWeights | None = None,
    ) -> None:
        self._vectors = vectors
        self._embedder = embedder
        self._keywords = keywords
        self.top_k = top_k
        self.min_similarity = min_similarity
        self.weights = weights or FusionWeights()

    async def embed(self, text: str) -> Vector:
        [embedding] = await self._embedder.embed([text])
        return embedding

    async def recall(self, user_key: str, text: str, k: int | None = None) -> list[MemoryHit]:
        """Memories relevant to ``text`` (embedded as it is)."""
        hits, _ = await self.search(user_key, text, k=k)
        return hits

    async def search(
        self, user_key: str, text: str, *, embed_text: str | None = None, k: int | None = None
    ) -> tuple[list[MemoryHit], Vector | None]:
        """Memories relevant to ``text``, and the embedding of ``embed_text`` (default ``text``).

        The keyword search starts before the embedding is computed, and runs beside the vector
        query; the embedding is returned so the writer can reuse it.
        """
        if not text.strip():
            return [], None
        keyword_task = self._keyword_task(user_key, text, k)
        try:
            embedding = await self.embed(embed_text if embed_text is not None else text)
        except BaseException:
            if keyword_task is not None:
                keyword_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, WhisperEngineError):
                    await keyword_task
            raise
        return await self._recall(user_key, embedding, k, keyword_task, text), embedding

    async def recall_by_vector(
        self, user_key: str, embedding: Vector, k: int | None = None, *, text: str | None = None
    ) -> list[MemoryHit]:
        """Memories near ``embedding``; hybrid when ``text`` (the words to match) is given."""
        keyword_task = self._keyword_task(user_key, text, k) if text and text.strip() else None
        return await self._recall(user_key, embedding, k, keyword_task, text or "")

    def _keyword_task(
        self, user_key: str, text: str, k: int | None
    ) -> asyncio.Task[list[tuple[MemoryRecord, float]]] | None:
        if self._keywords is None:
            return None
        pool = self.weights.pool_size(k or self.top_k)
        return asyncio.ensure_future(self._keywords.keyword_search(user_key, text, pool))

    async def _recall(
        self,
        user_key: str,
        embedding: Vector,
        k: int | None,
        keyword_task: asyncio.Future[list[tuple[MemoryRecord, float]]] | None,
        text: str = "",
    ) -> list[MemoryHit]:
        k = k or self.top_k
        if keyword_task is None:
            hits = await self._vectors.query(user_key, embedding, k)
            return [
                _hit(h.id, h.text, h.similarity, dict(h.metadata))
                for h in hits
                if h.similarity >= self.min_similarity and not _superseded(h)
            ]
        dense, keyword = await asyncio.gather(
            self._vectors.query(user_key, embedding, self.weights.pool_size(k)), keyword_task
        )
        dense = [h for h in dense if h.similarity >= self.min_similarity and not _superseded(h)]
        return fuse(dense, keyword, k, self.weights, query=text)

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
        policy: CarePolicy | None = None,
        queue: WorkQueue[TurnRecord] | None = None,
        priority: ReplyPriority | None = None,
        llm: BackgroundLLM | None = None,
    ) -> None:
        self._store = store
        self._priority = priority
        """Replies being prepared go first (``ReplyPriority``); None: never wait."""
        self.policy = policy or CarePolicy()
        self._care_lock = asyncio.Lock()  # the worker and ``remember`` never interleave care
        self.observers: list[Callable[[Sequence[StoredMessage]], None]] = []
        """Called with the user messages of each written batch that were worth remembering
        (the fact extractor's feed); must return at once."""
        self.reinforced = 0
        self.superseded = 0
        self._vectors = vectors
        self._embedder = embedder
        self.contradictions = ContradictionCheck(embedder, self.policy, llm)
        """The embedding and LLM steps before a memory supersedes another (``llm``: the LLM
        that confirms each one; None: the rules and the embeddings decide)."""
        # in-process by default; a shared queue (Redis) lets several processes write the memories
        self._queue: WorkQueue[TurnRecord] = queue if queue is not None else asyncio.Queue(queue_size)
        self._batch_size = batch_size
        self._worker: asyncio.Task[None] | None = None
        self._writing = False
        self._stopping = False
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
        """Write what this process queued, finish the batch in progress (a shared queue's
        other jobs stay for the other writers), then stop."""
        worker = self._worker
        if worker is None:
            return
        self._stopping = True
        if self._writing:
            await asyncio.wait({worker}, timeout=timeout_s)
        await drain_and_stop(worker, self._queue, timeout_s=timeout_s, what="memory writer")
        self._worker = None

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._writing = True
            try:
                await self.write(batch)
                self.written += len(batch)
            except WhisperEngineError:
                self.failed += len(batch)
                logger.exception("memory writer: failed to store %d turns", len(batch))
            finally:
                self._writing = False
                for _ in batch:
                    self._queue.task_done()
            if self._stopping and self._queue.empty():
                return  # stopping: nothing more taken here to write

    async def write(self, batch: Sequence[TurnRecord]) -> None:
        """Store the replies and memories of a batch of turns, across users: one transaction
        (replies, new memories, memories used) and one vector upsert per user. Memory care adds
        its own small writes for the memories it reinforces or supersedes."""
        await self._give_way()
        remembered = [
            turn
            for turn in batch
            if worth_remembering(turn.user_message.content) and not asks_only(turn.user_message.content)
        ]
        records = [
            MemoryRecord(
                id=message_memory_id(m),
                user_key=m.user_key,
                text=memory_text(m.user_name, m.content),
                created_at=m.created_at,
                kind="message",
                importance=score_importance(m.content),
                platform=m.platform,
                channel_id=m.channel_id,
                source_message_ids=(m.id,),
                search_context=search_context(m.created_at, turn.follows),
            )
            for turn in remembered
            for m in (turn.user_message,)
        ]
        embeddings = await self._embeddings(records, [turn.embedding for turn in remembered])
        used: dict[str, list[str]] = {}
        for turn in batch:
            used.setdefault(turn.user_message.user_key, []).extend(turn.recalled_ids)
        commit = _GroupCommit(
            messages=[turn.reply for turn in batch if turn.reply is not None], used=used, at=utcnow()
        )
        async with self._care_lock:
            await self._care_for(records, embeddings, commit)
        if remembered:
            for observe in self.observers:
                observe([turn.user_message for turn in remembered])

    async def remember(self, records: Sequence[MemoryRecord]) -> None:
        """Write memories made elsewhere (extracted facts) with the same care as the user's
        messages: embedded in one batch, then each deduplicated or superseding (a question is
        left out)."""
        records = [record for record in records if not asks_only(record.text)]
        if not records:
            return
        embeddings = await self._embeddings(records, [None] * len(records))
        async with self._care_lock:
            await self._care_for(records, embeddings, _GroupCommit(at=utcnow()))

    async def _care_for(
        self, records: Sequence[MemoryRecord], embeddings: Sequence[Vector], commit: _GroupCommit
    ) -> None:
        """Check each memory against its nearest current memories (staged in ``commit``), then
        commit. A memory close to one staged in the same batch, or filling one of its slots,
        commits what is staged first, so that it is checked against it too."""
        for record, embedding in zip(records, embeddings, strict=True):
            if commit.stages_near(
                record.user_key, embedding, self.policy.related_similarity
            ) or commit.stages_conflicting(record):
                await self._commit(commit)
                commit = _GroupCommit(at=commit.at)
            await self._plan(record, embedding, commit)
        await self._commit(commit)

    async def _plan(self, record: MemoryRecord, embedding: Vector, commit: _GroupCommit) -> None:
        """One memory: a contradicted one is superseded, a duplicate reinforced (and nothing new
        stored), otherwise it is added."""
        policy = self.policy
        user_key = record.user_key
        hits = await self._vectors.query(user_key, embedding, policy.neighbours)
        if any(h.id == record.id for h in hits):
            return  # written before: a job done again after a crash
        current = [h for h in hits if not _superseded(h)]
        conflicting = {  # a message never contradicts itself: a fact drawn from it leaves it be
            h.id: (h.text, found)
            for h in current
            if (found := conflicts(h.text, record.text))
            and not set(record.source_message_ids) & set(str(h.metadata.get("sources") or "").split(","))
        }
        contradicted = await self.contradictions.confirmed_ids(record.text, conflicting)
        kind = statement_kind(split_speaker(record.text)[1])
        duplicate = next(
            (
                h
                for h in current
                if h.similarity >= policy.duplicate_similarity
                and h.id not in conflicting
                and statement_kind(split_speaker(h.text)[1]) == kind
            ),
            None,
        )
        if duplicate is not None and not contradicted:
            known = str(duplicate.metadata.get("sources") or "").split(",")
            fresh = [source for source in record.source_message_ids if source not in known]
            if not fresh:
                return  # the same message written again: nothing new was said
            state = None
            for source in fresh:  # one mention per message that said it; importance up once
                state = await self._store.reinforce_memory(
                    user_key,
                    duplicate.id,
                    source_message_id=source,
                    at=commit.at,
                    importance_delta=policy.reinforce_delta if source == fresh[0] else 0.0,
                    max_importance=policy.max_importance,
                )
                if state is None:
                    break
            if state is not None:
                commit.update(
                    user_key,
                    duplicate.id,
                    sources=",".join(state.source_message_ids),
                    importance=state.importance,
                    mentions=state.mentions,
                )
                self.reinforced += 1
                return
        commit.add(record, embedding)
        commit.supersede.extend((user_key, old_id, record.id) for old_id in sorted(contradicted))

    async def _commit(self, commit: _GroupCommit) -> None:
        """Write what ``commit`` staged: the store first (one transaction), then the vectors."""
        await self._give_way()
        await self._store.write_batch(
            WriteBatch(
                messages=commit.messages, memories=commit.memories, used=commit.used, used_at=commit.at
            )
        )
        for scope, items in commit.vectors.items():
            await self._vectors.add(scope, items)
        for user_key, old_id, newer_id in commit.supersede:
            if await self._store.supersede_memory(user_key, old_id, superseded_by=newer_id, at=commit.at):
                commit.update(user_key, old_id, superseded_by=newer_id)
                self.superseded += 1
        for scope, metadata in commit.metadata.items():
            await self._vectors.update_metadata(scope, metadata)

    async def _give_way(self) -> None:
        if self._priority is not None:
            await self._priority.give_way()

    async def _embeddings(
        self, records: Sequence[MemoryRecord], known: Sequence[Vector | None]
    ) -> list[Vector]:
        """Reuse the embeddings computed on the reply path; embed the rest in one batch."""
        missing = [i for i, vector in enumerate(known) if vector is None]
        fresh = iter(await self._embedder.embed([records[i].text for i in missing]) if missing else [])
        return [vector if vector is not None else next(fresh) for vector in known]
