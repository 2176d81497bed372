"""Memory care: the rules that keep long-term memory tidy, and the job that applies them.

On write (``MemoryWriter``, in the background): every new memory gets an importance from
:func:`score_importance` (first-person facts, preferences, plans, names and dates score higher,
small talk lower). Its nearest memories in the user's own vector partition decide what happens:

* a memory that says the same thing (cosine >= ``CarePolicy.duplicate_similarity``) is
  *reinforced* instead of copied: importance up (bounded), ``mentions`` up, the new message id
  added to its sources (provenance keeps both), ``updated_at`` set;
* a similar memory (cosine >= ``CarePolicy.related_similarity``) that fills the same slot with a
  different value (:func:`contradicts`: "I live in Berlin" / "I live in Lisbon") is
  *superseded*: the newer statement wins, the older one is kept as history with
  ``superseded_by`` set and is left out of recall.

After a reply the recalled memories are marked used (``use_count``, ``last_used_at``).
:func:`effective_importance` decays a memory's importance with the time since it was last
used (or written); :class:`MemoryCare` periodically deletes memories that have been idle past
the retention, were never reinforced, and whose effective importance fell below a floor —
from SQL (and so the keyword index) and from the vector store — at most ``batch_size`` per run —
then runs its ``compactor`` (``engine/compaction.py``: old turns into session summaries).
The store methods memory care uses are part of the ``ConversationStore`` port.

Thresholds measured with all-MiniLM-L6-v2 on "Alice: ..." texts: paraphrases and restatements
0.97-0.99 ("my dog is called Rex" / "My dog's name is Rex" 0.969); same slot, other value
0.77-0.90 ("I live in Berlin" / "I live in Lisbon" 0.766, favourite colour green/blue 0.898,
nurse/teacher 0.805); unrelated facts 0.55-0.66. The slot rule is checked before the
duplicate threshold, so a near-identical sentence with a new value is still a contradiction.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from engine.background import cancel_and_wait
from engine.errors import WhisperEngineError
from engine.events import utcnow
from engine.ports import ConversationStore, MemoryState, VectorMemory

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CarePolicy:
    """The thresholds of memory care (see the module docstring for the measurements)."""

    duplicate_similarity: float = 0.92
    related_similarity: float = 0.70
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


def score_importance(content: str) -> float:
    """A rule-based importance in [0.1, 0.9]: facts about the speaker high, small talk low."""
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
    if text.endswith("?") and not _FIRST_PERSON_FACT.search(text):
        score -= 0.1
    return round(min(max(score, 0.1), 0.9), 2)


# A slot pattern: group "slot" (optional) names what is described, group "value" its value.
_SLOTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("favourite", re.compile(r"\bmy (?:favou?rite|fav) (?P<slot>\w+(?: \w+)?) is (?P<value>[^.,;!?]+)")),
    ("name", re.compile(r"\b(?:my name is|call me) (?P<value>[^.,;!?]+)")),
    ("age", re.compile(r"\bi(?: am|'m) (?P<value>\d+) years? old")),
    ("live", re.compile(r"\bi(?: now| currently)? live in (?P<value>[^.,;!?]+)")),
    ("live", re.compile(r"\bi(?: have|'ve)? moved to (?P<value>[^.,;!?]+)")),
    ("work", re.compile(r"\bi(?: now| currently)? work (?:as|at|for) (?:an? |the )?(?P<value>[^.,;!?]+)")),
    ("work", re.compile(r"\bi(?: am|'m) an? (?P<value>\w+) by (?:profession|trade)")),
    ("my", re.compile(r"\bmy (?P<slot>\w+(?: \w+)?) is (?:called |named )?(?P<value>[^.,;!?]+)")),
)
_FILLER = frozenset(
    ["now", "currently", "these", "days", "again", "too", "also", "actually", "still", "anymore", "though"]
)
_CLAUSE = re.compile(r"\s+(?:and|but|so|because|since|where|which|with)\s+")


def _slots(text: str) -> dict[str, str]:
    """The slots a statement fills, e.g. ``{"live": "lisbon"}``, from its first-person phrases."""
    body = text.split(": ", 1)[1] if ": " in text else text
    body = body.lower().replace("\u2019", "'")
    found: dict[str, str] = {}
    for name, pattern in _SLOTS:
        for match in pattern.finditer(body):
            groups = match.groupdict()
            key = f"{name}:{groups['slot']}" if groups.get("slot") else name
            value = _CLAUSE.split(groups["value"], maxsplit=1)[0]
            words = [w for w in re.findall(r"[\w'-]+", value) if w not in _FILLER]
            if words and key not in found:
                found[key] = " ".join(words)
    return found


def contradicts(older: str, newer: str) -> bool:
    """Whether ``newer`` gives a different value to a slot ``older`` filled ("my X is Y",
    "I live in Y", "I work as Y", "my favourite X is Y", ...). A value that only extends the
    other ("Berlin" / "Berlin Mitte") is not a contradiction."""
    old_slots, new_slots = _slots(older), _slots(newer)
    for key, new_value in new_slots.items():
        old_value = old_slots.get(key)
        if old_value is None or old_value == new_value:
            continue
        if old_value.startswith(new_value + " ") or new_value.startswith(old_value + " "):
            continue
        return True
    return False


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
