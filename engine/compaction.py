"""Compaction of old turns into session summaries: a memory-care job.

Each run of :class:`SessionCompactor` (called by ``MemoryCare`` after its cleanup) asks the
store for every (user, conversation) with messages older than ``after_days``
(``ConversationStore.conversation_spans``), reads the turns after that pair's watermark,
groups them into sessions (a gap of more than ``session_gap_s`` starts a new one) and writes,
for each session that ended before the cut-off, one memory of kind ``"session_summary"``
(a session where the user said nothing worth remembering, only "hi" or "ok", gets none):

* text: ``"Alice: [conversation 2023-05-08 13:56-15:10 UTC] <summary>"``: the speaker's name
  first like every memory, then the session's time span, then the summary: the LLM's, when
  one is given and answers (``engine.memory_llm.BackgroundLLM``), else an extractive one: the
  user's most important sentences (``score_importance``), in their order, up to
  ``summary_max_chars``;
* provenance: every message id of the session (the user's and the replies), its
  platform and channel; ``created_at``: the session's start; the span also in the vector
  metadata (``session_start``, ``session_end``).

Its id is derived from the user, the conversation and the session's first message, so a run
interrupted between writing a summary and its watermark rewrites the same memory. Summaries
are written as they are, without duplicate or contradiction care: they describe the past and
must not supersede what the user says now.

The watermark (the end of the last compacted session) is a setting under the user's scope,
``memory_compacted:<conversation_key>``, so ``forget_user`` erases it with the rest and each
turn is compacted once. Bounded: at most ``max_sessions`` sessions per run and at most
``scan_limit`` conversations looked at (a cursor walks on across runs), ``max_messages``
messages read per conversation per read. Messages are kept: they are the user's history.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.events import ChatMessage
from engine.memory import memory_text, vector_metadata, worth_remembering
from engine.memory_care import score_importance
from engine.memory_llm import BackgroundLLM
from engine.ports import (
    ConversationSpan,
    ConversationStore,
    Embedder,
    MemoryRecord,
    MetadataValue,
    StoredMessage,
    VectorItem,
    VectorMemory,
)

logger = logging.getLogger(__name__)

WATERMARK_PREFIX = "memory_compacted:"
SUMMARY_KIND = "session_summary"
SUMMARY_IMPORTANCE = 0.7
"""A summary stands for many turns: important enough never to be cleaned up."""
MIN_SENTENCE_IMPORTANCE = 0.5
"""Sentences scored lower (small talk) are left out of an extractive summary when others exist."""
MAX_TRANSCRIPT_CHARS = 6000
MAX_PROMPT_TURN_CHARS = 400


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    after_days: float = 2.0
    """Turns older than this are compacted."""
    session_gap_s: float = 3600.0
    """A longer silence starts a new session."""
    max_sessions: int = 20
    """Most sessions summarised per run."""
    summary_max_chars: int = 500
    scan_limit: int = 500
    """Most conversations looked at per run."""
    max_messages: int = 500
    """Most messages read at once from one conversation."""


def split_sessions(messages: Sequence[StoredMessage], gap_s: float) -> list[list[StoredMessage]]:
    """Messages (oldest first) in sessions: a silence longer than ``gap_s`` starts a new one."""
    sessions: list[list[StoredMessage]] = []
    for message in messages:
        if sessions and (message.created_at - sessions[-1][-1].created_at).total_seconds() <= gap_s:
            sessions[-1].append(message)
        else:
            sessions.append([message])
    return sessions


_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")


def _shorten(text: str, max_chars: int) -> str:
    if len(text) <= max_chars:
        return text
    cut = text[: max_chars - 1].rsplit(" ", 1)[0] or text[: max_chars - 1]
    return cut.rstrip(" ,;:") + "…"


def extractive_summary(messages: Sequence[StoredMessage], max_chars: int) -> str:
    """The user's most important sentences of a session (``score_importance``; small talk left
    out), in their order, within ``max_chars``."""
    sentences: list[str] = []
    for message in messages:
        if message.role != "user":
            continue
        for match in _SENTENCE.finditer(message.content):
            sentence = " ".join(match.group().split())
            if sentence and sentence not in sentences:
                sentences.append(sentence)
    scores = [score_importance(sentence) for sentence in sentences]
    if max(scores, default=0.0) >= MIN_SENTENCE_IMPORTANCE:  # small talk only when nothing else
        sentences = [
            s for s, score in zip(sentences, scores, strict=True) if score >= MIN_SENTENCE_IMPORTANCE
        ]
        scores = [score for score in scores if score >= MIN_SENTENCE_IMPORTANCE]
    if not sentences:
        return ""
    ranked = sorted(range(len(sentences)), key=lambda i: (-scores[i], i))
    chosen: list[int] = []
    used = 0
    for i in ranked:
        cost = len(sentences[i]) + (1 if chosen else 0)
        if used + cost <= max_chars:
            chosen.append(i)
            used += cost
    if not chosen:
        return _shorten(sentences[ranked[0]], max_chars)
    return " ".join(sentences[i] for i in sorted(chosen))


def summary_prompt(user_name: str, session: Sequence[StoredMessage], max_chars: int) -> list[ChatMessage]:
    """A short prompt asking for a first-person summary of a session's transcript."""
    lines: list[str] = []
    used = 0
    for message in session:
        text = _shorten(" ".join(message.content.split()), MAX_PROMPT_TURN_CHARS)
        line = f"{message.user_name or message.role}: {text}"
        if used + len(line) > MAX_TRANSCRIPT_CHARS:
            lines.append("[...]")
            break
        lines.append(line)
        used += len(line) + 1
    system = (
        f"Summarise this past conversation for {user_name}'s long-term memory: what {user_name} "
        f"said about themselves, did or planned. Write in the first person as {user_name} would, "
        f"at most 3 short sentences and {max_chars} characters. Plain text only, no preamble."
    )
    return [ChatMessage("system", system), ChatMessage("user", "\n".join(lines))]


_PREAMBLE = re.compile(r"^(summary|here is (a|the) summary)\s*[:\-]\s*", re.IGNORECASE)


def clean_summary(answer: str, user_name: str, max_chars: int) -> str | None:
    """An LLM's summary as one line within ``max_chars``; None when nothing usable is left."""
    text = " ".join(answer.replace("```", " ").split()).strip("\"' ")
    text = _PREAMBLE.sub("", text)
    if user_name and text.lower().startswith(f"{user_name.lower()}:"):
        text = text[len(user_name) + 1 :].strip()
    if len(text) < 3:
        return None
    return _shorten(text, max_chars)


def session_span(start: datetime, end: datetime) -> str:
    """``"2023-05-08 13:56-15:10 UTC"`` (the end's date too when it differs)."""
    end_format = "%H:%M" if end.date() == start.date() else "%Y-%m-%d %H:%M"
    return f"{start:%Y-%m-%d %H:%M}-{end.strftime(end_format)} UTC"


def summary_id(user_key: str, conversation_key: str, first_message_id: str) -> str:
    digest = hashlib.sha256(f"{user_key}\n{conversation_key}\n{first_message_id}".encode())
    return "session-" + digest.hexdigest()[:32]


def _parse_watermark(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


class SessionCompactor:
    """Writes one summary memory per old session per user, each turn once (see module doc)."""

    def __init__(
        self,
        store: ConversationStore,
        vectors: VectorMemory,
        embedder: Embedder,
        *,
        llm: BackgroundLLM | None = None,
        policy: CompactionPolicy | None = None,
    ) -> None:
        self._store = store
        self._vectors = vectors
        self._embedder = embedder
        self._llm = llm
        self.policy = policy or CompactionPolicy()
        self._cursor: tuple[str, str] | None = None
        self.summaries = 0
        self.llm_summaries = 0

    async def run_once(self, now: datetime) -> int:
        """One bounded pass; returns how many sessions it compacted (summarised, or passed over
        when nothing in them was worth a summary)."""
        policy = self.policy
        cutoff = now - timedelta(days=policy.after_days)
        spans = await self._store.conversation_spans(
            before=cutoff, after=self._cursor, limit=policy.scan_limit
        )
        done = 0
        finished: tuple[str, str] | None = self._cursor
        for span in spans:
            count, complete = await self._compact(span, cutoff, policy.max_sessions - done)
            done += count
            if not complete:
                break  # the session budget is spent: this conversation comes first next run
            finished = (span.user_key, span.conversation_key)
        else:
            finished = finished if len(spans) >= policy.scan_limit else None
        self._cursor = finished
        return done

    async def _compact(self, span: ConversationSpan, cutoff: datetime, allowance: int) -> tuple[int, bool]:
        """Summarise the closed sessions of one conversation (at most ``allowance``);
        returns how many, and whether nothing old is left there."""
        key = WATERMARK_PREFIX + span.conversation_key
        done = 0
        while True:
            after = _parse_watermark(await self._store.get_setting(span.user_key, key))
            if after is not None and after >= span.newest:
                return done, True
            limit = self.policy.max_messages
            messages = await self._store.conversation_messages(
                span.user_key, span.conversation_key, after=after, limit=limit
            )
            sessions = split_sessions(messages, self.policy.session_gap_s)
            if len(messages) >= limit and len(sessions) > 1:
                sessions.pop()  # it may go on past what was read
            closed = [s for s in sessions if s[-1].created_at < cutoff]
            if not closed:
                return done, True
            for session in closed:
                if done >= allowance:
                    return done, False
                await self._summarise(span, session)
                await self._store.set_setting(span.user_key, key, session[-1].created_at.isoformat())
                done += 1
            if len(messages) < limit:
                return done, True

    async def _summarise(self, span: ConversationSpan, session: Sequence[StoredMessage]) -> None:
        said = [m for m in session if m.role == "user"]
        if not any(worth_remembering(m.content) for m in said):
            return  # nothing worth a summary ("hi", "ok"): only the watermark moves
        user_name = said[-1].user_name or span.user_key
        max_chars = self.policy.summary_max_chars
        summary = None
        if self._llm is not None:
            answer = await self._llm.complete(summary_prompt(user_name, session, max_chars))
            summary = clean_summary(answer, user_name, max_chars) if answer is not None else None
        if summary is not None:
            self.llm_summaries += 1
        else:
            summary = extractive_summary(session, max_chars)
        if not summary:
            return
        start, end = session[0].created_at, session[-1].created_at
        record = MemoryRecord(
            id=summary_id(span.user_key, span.conversation_key, session[0].id),
            user_key=span.user_key,
            text=memory_text(user_name, f"[conversation {session_span(start, end)}] {summary}"),
            created_at=start,
            kind=SUMMARY_KIND,
            importance=SUMMARY_IMPORTANCE,
            platform=said[-1].platform,
            channel_id=said[-1].channel_id,
            source_message_ids=tuple(m.id for m in session),
        )
        [embedding] = await self._embedder.embed([record.text])
        metadata: dict[str, MetadataValue] = {
            **vector_metadata(record),
            "session_start": start.isoformat(),
            "session_end": end.isoformat(),
        }
        await self._store.add_memories([record])
        await self._vectors.add(
            span.user_key,
            [VectorItem(id=record.id, text=record.text, embedding=embedding, metadata=metadata)],
        )
        self.summaries += 1
