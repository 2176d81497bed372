"""Fact extraction: the durable facts and preferences a user states, asked of the LLM.

The memory writer turns every worthwhile user message into a memory as it is (recall
depends on them) and hands those messages to :meth:`FactExtractor.observe`, which only
queues them. In the background the extractor takes at most ``batch_turns`` pending
messages of one user at a time and asks the LLM (``engine.memory_llm.BackgroundLLM``:
short prompt, low temperature, bounded tokens, a timeout, at most N calls a minute) for the
lasting facts in them, answered as JSON::

    {"facts": [{"fact": "I work as a nurse", "from": [2]}]}

Each fact becomes a memory of kind ``"fact"`` in the same format as every memory
(``"Alice: I work as a nurse"``) with provenance: the ids of the messages it came from, and
their platform, channel and time. It is written through ``MemoryWriter.remember``, so it is
deduplicated, reinforces or supersedes like any other memory.

When the LLM fails, times out or answers something :func:`parse_facts` cannot read, the
batch is left to the rule-based path (the message memories already written, with their
rule-based importance): nothing is retried and nothing crashes. Pending messages are held
in memory, at most ``max_pending`` (the oldest are dropped first); those still pending at
shutdown are dropped too: their message memories stay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.background import cancel_and_wait
from engine.errors import WhisperEngineError
from engine.events import ChatMessage, new_id
from engine.memory import MemoryWriter, memory_text
from engine.memory_care import score_importance
from engine.memory_llm import BackgroundLLM
from engine.ports import MemoryRecord, StoredMessage

logger = logging.getLogger(__name__)

FACT_IMPORTANCE = 0.7
"""The least importance of an extracted fact: lasting by definition, so never cleaned up."""
MAX_FACT_CHARS = 200
MAX_FACTS_PER_CALL = 20
MAX_TURN_CHARS = 500
"""Longer messages are cut in the prompt (their start usually carries the fact)."""

SYSTEM_PROMPT = (
    "You pick out lasting personal facts and preferences that the user states about themselves "
    "in chat messages: identity, work, home, family, pets, likes and dislikes, plans, dates. "
    "Skip small talk, questions, passing moods and anything not stated by the user. "
    "Write each fact in the first person as the user would say it, under 15 words, "
    'e.g. "I work as a nurse", "My favourite colour is green". '
    'Answer with JSON only: {"facts": [{"fact": "...", "from": [message numbers]}]}; '
    'with nothing to keep: {"facts": []}.'
)


@dataclass(frozen=True, slots=True)
class ExtractedFact:
    text: str
    turns: tuple[int, ...]
    """Indexes (from 0) of the batch's messages the fact came from."""


def extraction_prompt(user_name: str, messages: Sequence[StoredMessage]) -> list[ChatMessage]:
    """The two-message prompt asking for the facts in ``messages``, numbered from 1."""
    lines = [f"Messages from {user_name}:"]
    for number, message in enumerate(messages, start=1):
        text = " ".join(message.content.split())
        if len(text) > MAX_TURN_CHARS:
            text = text[:MAX_TURN_CHARS] + "…"
        lines.append(f"{number}. {text}")
    return [ChatMessage("system", SYSTEM_PROMPT), ChatMessage("user", "\n".join(lines))]


_FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.DOTALL)
_NOTHING = re.compile(r"\W*(none|no facts?|nothing)\W*", re.IGNORECASE)
_BULLET = re.compile(r"^(?:[-*•]|\d+[.)])\s+")
_MAX_JSON_STARTS = 20
_MISSING = object()


def _first_json(text: str) -> Any:
    """The first JSON object or array in ``text`` (models like to add words around it)."""
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(text) if ch in "[{"][:_MAX_JSON_STARTS]
    for start in starts:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        return value
    return _MISSING


def _turns(refs: object, count: int) -> tuple[int, ...]:
    """Valid 1-based message numbers as 0-based indexes; every message when none is valid."""
    items = refs if isinstance(refs, list) else [refs]
    found: list[int] = []
    for item in items:
        number = int(item.strip()) if isinstance(item, str) and item.strip().isdigit() else item
        if isinstance(number, int) and not isinstance(number, bool) and 1 <= number <= count:
            found.append(number - 1)
    return tuple(sorted(set(found))) if found else tuple(range(count))


def _clean(statement: str, user_name: str) -> str | None:
    text = " ".join(statement.split())
    text = _BULLET.sub("", text).strip().strip("\"'").strip()
    for prefix in ([f"{user_name}:"] if user_name else []) + ["user:"]:
        if text.lower().startswith(prefix.lower()):
            text = text[len(prefix) :].strip()
    if len(text) < 3 or len(text) > MAX_FACT_CHARS:
        return None
    return text


def parse_facts(output: str, turns: int, user_name: str = "") -> list[ExtractedFact] | None:
    """The facts in an LLM's answer, or None when it cannot be read as the asked-for JSON.

    Lenient about what models do: a code fence, words around the JSON, a bare list, strings
    instead of objects, ``text``/``statement`` for ``fact``, ``turns``/``messages`` for
    ``from``, message numbers as strings or out of range (then the fact is credited to every
    message of the batch), the user's name before a fact, duplicates (kept once), "none".
    """
    text = output.strip()
    fenced = _FENCE.search(text)
    if fenced:
        text = fenced.group(1).strip()
    if _NOTHING.fullmatch(text):
        return []
    data = _first_json(text)
    if isinstance(data, dict):
        data = next((data[k] for k in ("facts", "fact", "items") if k in data), _MISSING)
    if not isinstance(data, list):
        return None
    facts: list[ExtractedFact] = []
    seen: set[str] = set()
    for item in data[:MAX_FACTS_PER_CALL]:
        refs: object = None
        if isinstance(item, dict):
            statement = next((item[k] for k in ("fact", "text", "statement") if k in item), None)
            refs = next((item[k] for k in ("from", "turns", "messages", "sources") if k in item), None)
        else:
            statement = item
        if not isinstance(statement, str):
            continue
        clean = _clean(statement, user_name)
        if clean is None or clean.lower() in seen:
            continue
        seen.add(clean.lower())
        facts.append(ExtractedFact(clean, _turns(refs, turns)))
    return facts


def fact_records(facts: Sequence[ExtractedFact], batch: Sequence[StoredMessage]) -> list[MemoryRecord]:
    """One ``"fact"`` memory per fact, its provenance the messages it came from."""
    user_name = batch[-1].user_name or batch[-1].user_key
    records = []
    for fact in facts:
        sources = [batch[i] for i in fact.turns]
        latest = max(sources, key=lambda m: m.created_at)
        records.append(
            MemoryRecord(
                id=new_id(),
                user_key=latest.user_key,
                text=memory_text(user_name, fact.text),
                created_at=latest.created_at,
                kind="fact",
                importance=max(score_importance(fact.text), FACT_IMPORTANCE),
                platform=latest.platform,
                channel_id=latest.channel_id,
                source_message_ids=tuple(m.id for m in sources),
            )
        )
    return records


@dataclass(frozen=True, slots=True)
class ExtractionReport:
    calls: int
    facts: int
    fallbacks: int
    """Batches left to the rule-based path (LLM failed or its answer was unreadable)."""


class FactExtractor:
    """Asks the LLM for the facts in queued user messages, in bounded batches, in the background."""

    def __init__(
        self,
        writer: MemoryWriter,
        llm: BackgroundLLM,
        *,
        batch_turns: int = 8,
        max_pending: int = 1000,
        linger_s: float = 10.0,
    ) -> None:
        if batch_turns < 1:
            raise ValueError("batch_turns must be at least 1")
        self._writer = writer
        self._llm = llm
        self.batch_turns = batch_turns
        self.linger_s = linger_s
        self._pending: deque[StoredMessage] = deque()
        self._max_pending = max_pending
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.calls = 0
        self.facts = 0
        self.fallbacks = 0
        self.dropped = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def observe(self, messages: Sequence[StoredMessage]) -> None:
        """Queue user messages for extraction; returns at once (the oldest go when full)."""
        for message in messages:
            if message.role != "user":
                continue
            if len(self._pending) >= self._max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(message)
        if self._pending:
            self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="fact-extractor")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        if self._pending:
            logger.info("fact extraction: %d messages left unread at shutdown", len(self._pending))

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.linger_s)  # let a conversation gather into one batch
            self._wake.clear()
            try:
                report = await self.run_pending()
            except WhisperEngineError:
                logger.exception("fact extraction failed")
                continue
            if report.facts:
                logger.info("fact extraction: %d facts from %d LLM calls", report.facts, report.calls)

    def next_batch(self) -> list[StoredMessage]:
        """The oldest pending message and up to ``batch_turns - 1`` later ones of the same user."""
        if not self._pending:
            return []
        user_key = self._pending[0].user_key
        batch: list[StoredMessage] = []
        kept: deque[StoredMessage] = deque()
        while self._pending:
            message = self._pending.popleft()
            if message.user_key == user_key and len(batch) < self.batch_turns:
                batch.append(message)
            else:
                kept.append(message)
        self._pending = kept
        return batch

    async def run_pending(self) -> ExtractionReport:
        """Extract from everything pending, batch by batch (each waits for the call budget)."""
        calls, facts, fallbacks = self.calls, self.facts, self.fallbacks
        while batch := self.next_batch():
            await self.extract(batch)
        return ExtractionReport(self.calls - calls, self.facts - facts, self.fallbacks - fallbacks)

    async def extract(self, batch: Sequence[StoredMessage]) -> list[MemoryRecord]:
        """One LLM call for one user's messages; the facts written (none on fallback)."""
        if not batch:
            return []
        user_name = batch[-1].user_name or batch[-1].user_key
        self.calls += 1
        answer = await self._llm.complete(extraction_prompt(user_name, batch))
        facts = parse_facts(answer, len(batch), user_name) if answer is not None else None
        if facts is None:
            self.fallbacks += 1
            if answer is not None:
                logger.warning("fact extraction: unreadable LLM answer (%d chars) ignored", len(answer))
            return []
        records = fact_records(facts, batch)
        await self._writer.remember(records)
        self.facts += len(records)
        return records
