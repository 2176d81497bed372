"""The bot's relationship with each user: how well they know each other, how the user has
been feeling lately, and what the user likes to be called.

Stored as one JSON setting per user (scope = the user_key, key ``"relationship"``), so
``ConversationStore.forget_user`` erases it with the rest; the preferred name lives in
``users.preferred_name`` (``ConversationStore.set_preferred_name``).

Familiarity stages, from the interaction count (messages the user has sent) and the days
since the first one — a stage needs both:

    ========== ============== ===========
    stage      interactions   days known
    ========== ============== ===========
    new        < 5            any
    acquainted ≥ 5            any
    familiar   ≥ 25           ≥ 3
    close      ≥ 100          ≥ 14
    ========== ============== ===========

Emotional trend: the labels of the user's last ``RECENT_EMOTIONS`` messages (from the
engine's emotion detector). With at least ``MIN_TREND`` of them, the newest
``RECENT_WINDOW`` are compared with the earlier ones: a feeling whose share rose by at least
``SHIFT`` gives "sadder than usual" and the like; otherwise a feeling held by at least half
of all of them gives "mostly cheerful lately"; several feelings with none dominant give
"mixed feelings lately"; mostly neutral says nothing.

Updated off the reply path: the engine hands each message to ``RelationshipTracker.observe``
after the reply, and one background task writes. Reads on the reply path come from a
per-process memo of the profiles written or read before.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.background import drain_and_stop
from engine.emotion import EMOTIONS, NEUTRAL
from engine.errors import InputError, WhisperEngineError
from engine.ports import ConversationStore, UserProfile

logger = logging.getLogger(__name__)

RELATIONSHIP_SETTING = "relationship"

STAGES = ("new", "acquainted", "familiar", "close")
# (stage, minimum interactions, minimum days known), strongest first
STAGE_THRESHOLDS: tuple[tuple[str, int, float], ...] = (
    ("close", 100, 14.0),
    ("familiar", 25, 3.0),
    ("acquainted", 5, 0.0),
)

RECENT_EMOTIONS = 20
RECENT_WINDOW = 5
MIN_TREND = 3
SHIFT = 0.4
MAX_NAME_CHARS = 40

# How a feeling reads in a sentence: "mostly cheerful lately", "sadder than usual".
_ADJECTIVE = {
    "joy": "cheerful",
    "sadness": "sad",
    "anger": "frustrated",
    "fear": "anxious",
    "surprise": "surprised",
}
_COMPARATIVE = {
    "joy": "happier",
    "sadness": "sadder",
    "anger": "more frustrated",
    "fear": "more anxious",
    "surprise": "more surprised",
}


def familiarity_stage(interactions: int, days_known: float) -> str:
    """The stage for this many interactions over this many days (see the module's table)."""
    for stage, min_interactions, min_days in STAGE_THRESHOLDS:
        if interactions >= min_interactions and days_known >= min_days:
            return stage
    return "new"


@dataclass(frozen=True, slots=True)
class EmotionTrend:
    """The user's recent feelings: counts per label, the dominant one, and a short phrase."""

    counts: Mapping[str, int]
    dominant: str | None
    summary: str | None
    """E.g. "mostly cheerful lately", "sadder than usual"; None when there is nothing to say."""


def emotion_trend(labels: Sequence[str]) -> EmotionTrend:
    """The trend of emotion labels, oldest first (see the module docstring)."""
    counts = Counter(labels)
    total = len(labels)
    dominant = max(counts, key=lambda k: (counts[k], -_order(k))) if counts else None
    if total < MIN_TREND:
        return EmotionTrend(dict(counts), dominant, None)
    recent, earlier = labels[-RECENT_WINDOW:], labels[:-RECENT_WINDOW]
    if len(earlier) >= MIN_TREND:
        recent_counts, earlier_counts = Counter(recent), Counter(earlier)
        shifts = {
            label: recent_counts[label] / len(recent) - earlier_counts[label] / len(earlier)
            for label in _COMPARATIVE
        }
        label = max(shifts, key=lambda k: (shifts[k], -_order(k)))
        if shifts[label] >= SHIFT:
            return EmotionTrend(dict(counts), dominant, f"{_COMPARATIVE[label]} than usual")
    if dominant is not None and counts[dominant] * 2 >= total:
        if dominant == NEUTRAL or dominant not in _ADJECTIVE:
            return EmotionTrend(dict(counts), dominant, None)
        return EmotionTrend(dict(counts), dominant, f"mostly {_ADJECTIVE[dominant]} lately")
    feelings = [label for label in counts if label != NEUTRAL]
    summary = "mixed feelings lately" if len(feelings) >= 2 else None
    return EmotionTrend(dict(counts), dominant, summary)


def _order(label: str) -> int:
    return EMOTIONS.index(label) if label in EMOTIONS else len(EMOTIONS)


# --- "call me X" -------------------------------------------------------------------------

_CALL_ME = re.compile(
    r"(?P<before>[\w'\u2019 ]{0,24}?)\b[Cc]all\s+[Mm]e\s+"
    r"(?P<name>[^\W\d_][\w'\u2019-]{0,23}(?:\s+[A-Z][\w'\u2019-]{0,23})?)"
)
_NEGATION = re.compile(
    r"\b(?:don'?t|don\u2019t|do\s+not|never|not|stop|won'?t|can'?t|cannot|shouldn'?t)\s*$",
    re.IGNORECASE,
)
# Words that follow "call me" without being a name ("call me back", "call me later").
_NOT_NAMES = frozenset(
    [
        "back",
        "later",
        "late",
        "soon",
        "tomorrow",
        "tonight",
        "today",
        "now",
        "anytime",
        "sometime",
        "whenever",
        "when",
        "if",
        "at",
        "on",
        "in",
        "by",
        "after",
        "before",
        "maybe",
        "again",
        "crazy",
        "old",
        "silly",
        "stupid",
        "lazy",
        "paranoid",
        "weird",
        "whatever",
        "anything",
        "something",
        "a",
        "an",
        "the",
        "what",
        "please",
        "up",
        "out",
        "first",
        "next",
    ]
)


def detect_preferred_name(text: str) -> str | None:
    """The name in "call me X" / "please call me X" / "you can call me X"; None otherwise.

    Refused: negated requests ("don't call me late"), and words that are not names ("call me
    back", "call me later"). In a message with capital letters the name must be capitalised.
    """
    lowercase_only = text == text.lower()
    for match in _CALL_ME.finditer(text):
        before = match.group("before")
        if _NEGATION.search(before):
            continue
        words = match.group("name").split()
        if words[0].lower() in _NOT_NAMES:
            continue
        if not lowercase_only and not words[0][0].isupper():
            continue
        if len(words) > 1 and words[1].lower() in _NOT_NAMES:
            words = words[:1]
        name = " ".join(words).strip("'\u2019-")
        if name:
            return name[:MAX_NAME_CHARS] if not lowercase_only else name[:MAX_NAME_CHARS].title()
    return None


def clean_preferred_name(name: str) -> str:
    """A name fit to store, or InputError (empty, too long, or with line breaks)."""
    cleaned = " ".join(name.split())
    if not cleaned:
        raise InputError("The name is empty.")
    if len(cleaned) > MAX_NAME_CHARS:
        raise InputError(f"Names can be at most {MAX_NAME_CHARS} characters.")
    return cleaned


# --- the profile ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelationshipProfile:
    """What the bot knows of its relationship with one user."""

    user_key: str
    interactions: int = 0
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    recent_emotions: tuple[str, ...] = ()
    preferred_name: str | None = None
    updated_at: datetime | None = field(default=None, compare=False)

    def days_known(self, now: datetime | None = None) -> float:
        if self.first_seen is None:
            return 0.0
        return max(((now or datetime.now(UTC)) - self.first_seen).total_seconds() / 86400.0, 0.0)

    def stage(self, now: datetime | None = None) -> str:
        return familiarity_stage(self.interactions, self.days_known(now))

    def trend(self) -> EmotionTrend:
        return emotion_trend(self.recent_emotions)

    def with_profile(self, profile: UserProfile | None) -> RelationshipProfile:
        """This relationship with the store's newer count, dates and preferred name."""
        if profile is None:
            return self
        return RelationshipProfile(
            user_key=self.user_key,
            interactions=max(profile.message_count, self.interactions),
            first_seen=profile.first_seen,
            last_seen=profile.last_seen,
            recent_emotions=self.recent_emotions,
            preferred_name=profile.preferred_name,
            updated_at=self.updated_at,
        )

    def to_json(self, now: datetime | None = None) -> dict[str, Any]:
        """The stored (and exported) form; ``stage`` and ``trend`` are as of ``now``."""
        trend = self.trend()
        return {
            "interactions": self.interactions,
            "first_seen": _iso(self.first_seen),
            "last_seen": _iso(self.last_seen),
            "stage": self.stage(now),
            "recent_emotions": list(self.recent_emotions),
            "emotion_counts": dict(trend.counts),
            "dominant_emotion": trend.dominant,
            "trend": trend.summary,
            "preferred_name": self.preferred_name,
            "updated_at": _iso(self.updated_at),
        }

    @classmethod
    def from_json(cls, user_key: str, data: Any) -> RelationshipProfile:
        if not isinstance(data, dict):
            return cls(user_key)
        emotions = data.get("recent_emotions")
        name = data.get("preferred_name")
        return cls(
            user_key=user_key,
            interactions=int(data.get("interactions") or 0),
            first_seen=_parse_time(data.get("first_seen")),
            last_seen=_parse_time(data.get("last_seen")),
            recent_emotions=tuple(str(e) for e in emotions) if isinstance(emotions, list) else (),
            preferred_name=name if isinstance(name, str) else None,
            updated_at=_parse_time(data.get("updated_at")),
        )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def describe(relationship: RelationshipProfile, now: datetime | None = None) -> str:
    """One or two sentences for the prompt: the stage, and the trend when there is one."""
    stage = relationship.stage(now)
    sentences = {
        "new": "You have only just met them.",
        "acquainted": "You are getting to know each other.",
        "familiar": "You know each other fairly well by now.",
        "close": "You are close: you have talked often, over a long time.",
    }
    text = sentences[stage]
    summary = relationship.trend().summary
    if summary == "mixed feelings lately":
        text += " Lately their feelings have been mixed."
    elif summary is not None and summary.endswith("than usual"):
        text += f" Lately they seem {summary}."
    elif summary is not None:
        text += f" They have seemed {summary}."
    return text


# --- the tracker ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """One user message as the tracker sees it, after the reply."""

    user_key: str
    content: str
    emotion: str
    profile: UserProfile | None
    seen_at: datetime


class RelationshipTracker:
    """Keeps each user's relationship profile; writes in one background task."""

    def __init__(
        self,
        store: ConversationStore,
        *,
        queue_size: int = 1000,
        memo_size: int = 10_000,
        recent_emotions: int = RECENT_EMOTIONS,
    ) -> None:
        self._store = store
        self._queue: asyncio.Queue[Observation] = asyncio.Queue(maxsize=queue_size)
        self._memo: OrderedDict[str, RelationshipProfile] = OrderedDict()
        self._reads: dict[str, asyncio.Future[RelationshipProfile]] = {}
        self._memo_size = memo_size
        self._recent = recent_emotions
        self._worker: asyncio.Task[None] | None = None
        self.failed = 0

    async def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="relationship-tracker")

    async def aclose(self, timeout_s: float = 30.0) -> None:
        if self._worker is None:
            return
        await drain_and_stop(self._worker, self._queue, timeout_s=timeout_s, what="relationship tracker")
        self._worker = None

    @property
    def depth(self) -> int:
        """Observations waiting to be written."""
        return self._queue.qsize()

    async def drain(self) -> None:
        """Wait until every observation so far has been written (or failed and been logged)."""
        await self._queue.join()

    def observe(self, observation: Observation) -> None:
        """Queue an update; never waits. A full queue drops it (and logs)."""
        try:
            self._queue.put_nowait(observation)
        except asyncio.QueueFull:
            self.failed += 1
            logger.warning("relationship tracker: queue full, update of %s dropped", observation.user_key)

    async def get(self, user_key: str, profile: UserProfile | None = None) -> RelationshipProfile:
        """The user's relationship (memoised), brought up to date with ``profile`` when given."""
        cached = self._memo.get(user_key)
        if cached is None:
            # a burst of one user's messages reads the stored relationship once
            reading = self._reads.get(user_key)
            if reading is None:
                reading = self._reads[user_key] = asyncio.ensure_future(self._read(user_key))
                reading.add_done_callback(lambda _: self._reads.pop(user_key, None))
            cached = await asyncio.shield(reading)
        else:
            self._memo.move_to_end(user_key)
        return cached.with_profile(profile)

    async def _read(self, user_key: str) -> RelationshipProfile:
        stored = await self._store.get_setting(user_key, RELATIONSHIP_SETTING)
        relationship = self._memo.get(user_key) or RelationshipProfile.from_json(user_key, stored)
        self._remember(relationship)
        return relationship

    async def set_preferred_name(self, user_key: str, name: str | None) -> bool:
        """Set (``None``: clear) the user's preferred name; False when the user is unknown."""
        cleaned = None if name is None else clean_preferred_name(name)
        found = await self._store.set_preferred_name(user_key, cleaned)
        cached = self._memo.get(user_key)
        if cached is not None:
            self._remember(
                RelationshipProfile(
                    user_key=user_key,
                    interactions=cached.interactions,
                    first_seen=cached.first_seen,
                    last_seen=cached.last_seen,
                    recent_emotions=cached.recent_emotions,
                    preferred_name=cleaned,
                    updated_at=cached.updated_at,
                )
            )
        return found

    def forget(self, user_key: str) -> None:
        """Drop the memo of a user whose stored data was erased."""
        self._memo.pop(user_key, None)

    def _remember(self, relationship: RelationshipProfile) -> None:
        self._memo[relationship.user_key] = relationship
        self._memo.move_to_end(relationship.user_key)
        while len(self._memo) > self._memo_size:
            self._memo.popitem(last=False)

    async def _run(self) -> None:
        while True:
            observation = await self._queue.get()
            try:
                await self.update(observation)
            except WhisperEngineError:
                self.failed += 1
                logger.exception("relationship tracker: failed to update %s", observation.user_key)
            finally:
                self._queue.task_done()

    async def update(self, observation: Observation) -> RelationshipProfile:
        """Apply one observation and store the result."""
        current = await self.get(observation.user_key, observation.profile)
        name = detect_preferred_name(observation.content)
        preferred = current.preferred_name
        if (
            name is not None
            and name != preferred
            and await self._store.set_preferred_name(observation.user_key, name)
        ):
            preferred = name
        profile = observation.profile
        updated = RelationshipProfile(
            user_key=observation.user_key,
            interactions=profile.message_count if profile is not None else current.interactions + 1,
            first_seen=current.first_seen or observation.seen_at,
            last_seen=max(current.last_seen or observation.seen_at, observation.seen_at),
            recent_emotions=(*current.recent_emotions, observation.emotion)[-self._recent :],
            preferred_name=preferred,
            updated_at=datetime.now(UTC),
        )
        await self._store.set_setting(observation.user_key, RELATIONSHIP_SETTING, updated.to_json())
        self._remember(updated)
        return updated
