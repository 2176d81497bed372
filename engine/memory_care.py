"""Memory care: the rules that keep long-term memory tidy, and the job that applies them.

On write (``MemoryWriter``, in the background): every message is first read by
``engine/statements.py``: what kind of statement each part of it is (fact, question,
hypothetical, negation, quote, joke, small talk) and which of the speaker's own slots it fills
as a fact. A message that only asks is not made a memory at all (it stays a turn of its
conversation). Every other memory gets an importance from :func:`score_importance` (first-person
facts, preferences, plans, names and dates score higher, small talk lower; a hypothetical, a
quote or a joke at most ``NOT_ASSERTED_IMPORTANCE``). Its nearest memories in the user's own
vector partition decide what happens:

* a memory that says the same thing, as the same kind of statement (cosine >=
  ``CarePolicy.duplicate_similarity``; "my dog isn't called Rex" is no restatement of "my dog is
  called Rex") is *reinforced* instead of copied: importance up (bounded), ``mentions`` up, the
  new message id added to its sources (provenance keeps both), ``updated_at`` set;
* a memory it contradicts is *superseded*: the newer statement wins, the older one is kept as
  history with ``superseded_by`` set and is left out of recall. Contradiction takes all of:
  :func:`conflicts` — the same speaker gives one of their own slots a different value, both as
  facts ("I live in Berlin" / "I live in Lisbon"; never a question, hypothetical, negation,
  quote or joke, never someone else's dog), and the older memory fills no other slot that the
  newer leaves alone; the embeddings — the two statements of the slot, embedded on their own,
  are at least ``CarePolicy.same_slot_similarity`` close (they are about the same thing); and,
  when an LLM is there for memory work, its "yes" to :func:`confirmation_prompt` — an LLM that
  fails, times out or answers anything but yes leaves the older memory be. A neighbour that
  conflicts by the rules is never taken for a duplicate, superseded or not.

After a reply the recalled memories are marked used (``use_count``, ``last_used_at``).
:func:`effective_importance` decays a memory's importance with the time since it was last
used (or written); :class:`MemoryCare` periodically deletes memories that have been idle past
the retention, were never reinforced, and whose effective importance fell below a floor —
from SQL (and so the keyword index) and from the vector store — at most ``batch_size`` per run —
then runs its ``compactor`` (``engine/compaction.py``: old turns into session summaries).
The store methods memory care uses are part of the ``ConversationStore`` port.

Thresholds measured with all-MiniLM-L6-v2 on "Alice: ..." texts: paraphrases and restatements
0.97-0.99 ("my dog is called rex" / "My dog's name is Rex" 0.969), but a negation too ("my dog
is called Biscuit" / "my dog isn't called Biscuit" 0.976: hence the same kind for a duplicate);
one slot, another value 0.66-0.98 ("I work at Google" / "I work at a small bakery" 0.661,
"I'm from Porto" / "I'm from Chicago" 0.673, "I live in Berlin" / "I live in Lisbon" 0.766,
favourite colour green/blue 0.898, 34/35 years old 0.978); the same words read as a slot but
about something else 0.44-0.60 ("I live in Berlin" / "I live in constant fear of spiders" 0.439,
"I moved to Lisbon" / "I moved to the sofa for a nap" 0.578, "I'm from Porto" / "I'm from the
future" 0.597) — the rest of such misreadings the rules themselves reject ("my name is on the
waiting list" 0.736, "my birthday is a big deal" 0.818: no value). These pairs are not in the
phrasing corpus the tests use.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from engine.background import cancel_and_wait
from engine.errors import WhisperEngineError
from engine.events import ChatMessage, utcnow
from engine.memory_llm import BackgroundLLM
from engine.ports import ConversationStore, Embedder, MemoryState, Vector, VectorMemory
from engine.statements import NOT_ASSERTED, SlotFact, split_speaker, stated_facts, statement_kind

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CarePolicy:
    """The thresholds of memory care (see the module docstring for the measurements)."""

    duplicate_similarity: float = 0.92
    related_similarity: float = 0.70
    """Nearest memories at least this close are checked as duplicates."""
    same_slot_similarity: float = 0.6
    """The two statements of one slot must be this close to be a contradiction."""
    neighbours: int = 5
    reinforce_delta: float = 0.1
    max_importance: float = 1.0
    half_life_days: float = 180.0
    retention_days: float = 365.0
    cleanup_below: float = 0.2
    """Effective importance under which an idle, never reinforced memory is deleted."""
    cleanup_max_importance: float = 0.7
    """Memories scored at least this important are never cleaned up, however old."""
    batch_size: int = 200


# --- rules ---------------------------------------------------------------------------------

_FIRST_PERSON_FACT = re.compile(
    r"\b(i am|i'm|im|my|mine|i live|i work|i have|i've|i had|i like|i love|i hate|i prefer|i enjoy|"
    r"i need|i want|i was born|i grew up|i study|i moved|i got|i own|we have|our)\b"
)
_PLAN = re.compile(
    r"\b(going to|gonna|plan|planning|will|i'll|tomorrow|next (week|month|year|weekend)|soon|"
    r"appointment|deadline|trip|wedding|interview)\b"
)
_NAME = re.compile(r"\b(my name is|call me|named|called|name's)\b")
_DATE = re.compile(
    r"\b(birthday|anniversary|born|monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
    r"january|february|march|april|may|june|july|august|september|october|november|december|"
    r"\d{1,4}(st|nd|rd|th)?)\b"
)
_SMALL_TALK = re.compile(
    r"^\W*(hi|hey|hello|yo|thanks|thank you|thx|ok|okay|lol|haha+|hmm+|good (morning|night|evening)|"
    r"how are you|what's up|sup|bye|see you|nice|cool|great|sure|yes|no|yeah|nope)\b"
)


NOT_ASSERTED_IMPORTANCE = 0.5
"""The most a hypothetical, a quote or a joke scores: kept, but never an important memory."""
QUESTION_IMPORTANCE = 0.1


def score_importance(content: str) -> float:
    """A rule-based importance in [0.1, 0.9]: facts about the speaker high, small talk low; a
    question 0.1, a hypothetical, quote or joke at most ``NOT_ASSERTED_IMPORTANCE``."""
    kind = statement_kind(content)
    if kind == "question":
        return QUESTION_IMPORTANCE
    text = content.strip().lower()
    score = 0.5
    if _SMALL_TALK.search(text):
        score -= 0.2
    if _FIRST_PERSON_FACT.search(text):
        score += 0.2
    if _PLAN.search(text):
        score += 0.1
    if _NAME.search(text):
        score += 0.1
    if _DATE.search(text):
        score += 0.1
    if kind in NOT_ASSERTED:
        score = min(score, NOT_ASSERTED_IMPORTANCE)
    return round(min(max(score, 0.1), 0.9), 2)


@dataclass(frozen=True, slots=True)
class Conflict:
    """One slot given two values by the same speaker, both stated as facts."""

    slot: str
    older: SlotFact
    newer: SlotFact
    speaker: str


def _same_value(a: str, b: str) -> bool:
    """Equal, or one only extends the other ("berlin" / "berlin mitte")."""
    return a == b or a.startswith(b + " ") or b.startswith(a + " ")


def conflicts(older: str, newer: str) -> list[Conflict]:
    """The slots to which ``newer`` gives another value than ``older`` (both memory texts,
    ``"Name: ..."``): same speaker, both facts of their own. Empty when ``older`` also fills a
    slot that ``newer`` leaves alone: superseding it would hide that fact."""
    old_speaker, old_words = split_speaker(older)
    new_speaker, new_words = split_speaker(newer)
    if old_speaker.casefold() != new_speaker.casefold():
        return []
    old_facts = stated_facts(old_words)
    if not old_facts:
        return []
    new_facts = stated_facts(new_words)
    if any(slot not in new_facts for slot in old_facts):
        return []
    return [
        Conflict(slot, old_facts[slot], fact, new_speaker)
        for slot, fact in new_facts.items()
        if slot in old_facts and not _same_value(old_facts[slot].value, fact.value)
    ]


def contradicts(older: str, newer: str) -> bool:
    """Whether the rules alone read ``newer`` as replacing ``older`` (see :func:`conflicts`)."""
    return bool(conflicts(older, newer))


CONFIRM_SYSTEM = "You keep the memory of a chat companion up to date. Answer with one word: yes or no."


def confirmation_prompt(older: str, newer: str) -> list[ChatMessage]:
    """The short yes/no question put to the LLM before ``newer`` supersedes ``older``."""
    speaker, old_words = split_speaker(older)
    _, new_words = split_speaker(newer)
    who = speaker or "The user"
    question = (
        f'Earlier {who} said: "{old_words.strip()}"\n'
        f'Now {who} says: "{new_words.strip()}"\n'
        f"Does the new message state, as a fact about {who} themself (not a question, joke, wish, "
        "guess or someone else's words), that the earlier statement is no longer true? Yes or no?"
    )
    return [ChatMessage("system", CONFIRM_SYSTEM), ChatMessage("user", question)]


_THINKING = re.compile(r"<(think|thinking)>.*?(?:</\1>|$)", re.IGNORECASE | re.DOTALL)
_ANSWER = re.compile(r"\W*(yes|no)\b", re.IGNORECASE)


def read_confirmation(answer: str | None) -> bool:
    """True only for an answer that starts with "yes" (a reasoning model's thinking left out)."""
    if answer is None:
        return False
    match = _ANSWER.match(_THINKING.sub("", answer))
    return match is not None and match.group(1).lower() == "yes"


def _cosine(a: Vector, b: Vector) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    return dot / norm if norm else 0.0


class ContradictionCheck:
    """The embedding and LLM steps of a contradiction, after the rules (:func:`conflicts`)."""

    def __init__(self, embedder: Embedder, policy: CarePolicy, llm: BackgroundLLM | None = None) -> None:
        self._embedder = embedder
        self.policy = policy
        self.llm = llm
        """Asked to confirm each contradiction; None: the rules and embeddings decide."""
        self.asked = 0
        self.confirmed = 0

    async def confirmed_ids(
        self, newer: str, candidates: Mapping[str, tuple[str, Sequence[Conflict]]]
    ) -> set[str]:
        """Of ``candidates`` (memory id → its text and its conflicts with ``newer``), the ids
        of the memories ``newer`` supersedes."""
        if not candidates:
            return set()
        pairs = [(memory_id, conflict) for memory_id, (_, found) in candidates.items() for conflict in found]
        texts = [f"{c.speaker}: {side.words}" for _, c in pairs for side in (c.older, c.newer)]
        vectors = await self._embedder.embed(texts)
        about_something_else = {  # every conflicting slot of a memory must be about the same thing
            memory_id
            for i, (memory_id, _) in enumerate(pairs)
            if _cosine(vectors[2 * i], vectors[2 * i + 1]) < self.policy.same_slot_similarity
        }
        close = set(candidates) - about_something_else
        if self.llm is None:
            return close
        confirmed: set[str] = set()
        for memory_id in sorted(close):
            self.asked += 1
            older_text = candidates[memory_id][0]
            if read_confirmation(await self.llm.complete(confirmation_prompt(older_text, newer))):
                confirmed.add(memory_id)
                self.confirmed += 1
            else:
                logger.info("memory care: the LLM did not confirm that a memory is superseded")
        return confirmed


def effective_importance(state: MemoryState, now: datetime, half_life_days: float) -> float:
    """Importance halved every ``half_life_days`` since the memory was last used (or written)."""
    last = max(state.last_used_at or state.created_at, state.created_at)
    idle_days = max((now - last).total_seconds(), 0.0) / 86400.0
    return float(state.importance * 0.5 ** (idle_days / half_life_days))


# --- the job -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CareReport:
    scanned: int
    deleted: int
    sessions_compacted: int = 0


class CareJob(Protocol):
    """A further bounded job run after each cleanup (``engine.compaction.SessionCompactor``)."""

    async def run_once(self, now: datetime) -> int:
        """One bounded pass; returns how many items it produced."""
        ...


class MemoryCare:
    """The periodic memory-care job: cleanup of idle, unimportant memories in bounded batches.

    ``run_once(now)`` looks at no more than ``policy.batch_size`` candidates (walking the
    table by id across runs, so no candidate is starved) and deletes the ones whose effective
    importance fell below ``policy.cleanup_below``; then ``compactor`` (when given) turns old
    turns into session summaries. ``start()`` runs it every ``interval_s``.
    """

    def __init__(
        self,
        store: ConversationStore,
        vectors: VectorMemory,
        *,
        policy: CarePolicy | None = None,
        interval_s: float = 3600.0,
        compactor: CareJob | None = None,
    ) -> None:
        self._store = store
        self._vectors = vectors
        self.policy = policy or CarePolicy()
        self.interval_s = interval_s
        self.compactor = compactor
        self._cursor = ""
        self._task: asyncio.Task[None] | None = None
        self.runs = 0
        self.deleted = 0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="memory-care")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                report = await self.run_once(utcnow())
            except WhisperEngineError:
                logger.exception("memory care run failed")
                continue
            if report.deleted or report.sessions_compacted:
                logger.info(
                    "memory care: %d of %d candidates deleted, %d sessions compacted",
                    report.deleted,
                    report.scanned,
                    report.sessions_compacted,
                )

    async def run_once(self, now: datetime) -> CareReport:
        """One bounded pass of cleanup (and compaction); returns what it looked at and did."""
        policy = self.policy
        candidates = await self._store.stale_memories(
            idle_before=now - timedelta(days=policy.retention_days),
            max_importance=policy.cleanup_max_importance,
            max_mentions=1,
            after_id=self._cursor,
            limit=policy.batch_size,
        )
        self._cursor = candidates[-1].id if len(candidates) >= policy.batch_size else ""
        doomed: dict[str, list[str]] = {}
        for state in candidates:
            if effective_importance(state, now, policy.half_life_days) < policy.cleanup_below:
                doomed.setdefault(state.user_key, []).append(state.id)
        deleted = 0
        for user_key, ids in doomed.items():
            deleted += await self._store.delete_memories(user_key, ids)
            await self._vectors.delete(user_key, ids)
        self.runs += 1
        self.deleted += deleted
        compacted = await self.compactor.run_once(now) if self.compactor is not None else 0
        return CareReport(scanned=len(candidates), deleted=deleted, sessions_compacted=compacted)
