"""Check-ins: the bot writes first, at a local time each user chose.

A user opts in with a time of day and an IANA time zone (``/checkin 08:00 Europe/Berlin``).
The schedule is one JSON setting under the user's own scope (key ``"checkin"``), so
``ConversationStore.forget_user`` erases it with everything else, and export includes it.

When (:func:`next_due`, pure)
    * The chosen time on a local day, computed with ``zoneinfo``: across a DST change the next
      08:00 is 23 or 25 hours away, never a fixed 24. A time the clocks skip that day (02:30 when
      they jump from 02:00 to 03:00) comes an hour later; a time they pass twice, the first time.
    * At most one per local day, and never before the moment the schedule was set.
    * No burst after downtime: a check-in more than ``grace`` late is skipped and the next one
      scheduled. One within ``grace`` still goes out.
    * Back-off: after two unanswered check-ins the interval doubles (every 2 days, then 4, capped
      at 7). Any message from the user (their message count grew since the last check-in) makes
      it daily again.

What
    The persona of the user's private chat, their relationship (familiarity, emotional trend),
    the memories recall finds for what they said lately plus their newest ones, the recent turns
    of the private chat, and a stage direction as the last message. The text goes out through
    the platform's :class:`engine.ports.DirectMessenger` and is stored as an assistant message
    of the private chat, so a reply continues the conversation.

The scheduler
    :class:`CheckinScheduler` loads every schedule page by page at start (cost: one pass over
    the schedules, never per tick) and keeps them in a heap by wake time. Each tick handles at
    most ``max_per_tick`` due schedules; the rest wait for the next tick (and are skipped once
    past ``grace``). Before composing, the schedule is read again from the store: one turned off
    or erased meanwhile is dropped, never written to. A schedule waiting out a back-off is looked
    at again at each daily time (one store read), so a reply brings it back to daily at once.
    Delivery is at most once: the check-in is recorded as sent before it goes out, so a failed
    send is not repeated that day. A failed composition (the LLM is down) is retried after
    ``retry_after`` while still within ``grace``. Several processes each running a scheduler
    over the same database would each send: enable check-ins in one process only.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import heapq
import logging
import re
import time as time_module
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from engine.background import cancel_and_wait
from engine.errors import (
    BackendUnavailable,
    ConversationBusy,
    InputError,
    LLMError,
    StorageError,
    WhisperEngineError,
)
from engine.events import ChatMessage, MemoryHit, Turn, UniversalMessage, new_id, utcnow
from engine.memory import record_hit
from engine.ports import DirectMessenger, StoredMessage, UserProfile
from engine.prompt import build_prompt
from engine.user_settings import CHECKIN_SETTING

if TYPE_CHECKING:
    from engine.pipeline import Engine

logger = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(minutes=30)
MAX_INTERVAL_DAYS = 7
BACK_OFF_AFTER = 2
"""Unanswered check-ins after which the interval starts doubling."""
NEWEST_MEMORIES = 3
RECALL_HINT = "plans goals hopes worries how I feel"
"""Added to the recall query: a check-in follows up on these more than on small talk."""

_TIME = re.compile(r"(\d{1,2}):(\d{2})")


# --- input ---------------------------------------------------------------------------------


def parse_time(text: str) -> time:
    """A time of day from ``HH:MM`` (24-hour clock); InputError otherwise."""
    match = _TIME.fullmatch(text.strip())
    if match is not None:
        hour, minute = int(match.group(1)), int(match.group(2))
        if hour < 24 and minute < 60:
            return time(hour, minute)
    raise InputError(
        f"{text.strip()!r} is not a time of day: use HH:MM on the 24-hour clock, like 08:00 or 21:30."
    )


@functools.cache
def _zone_names() -> dict[str, str]:
    """Every IANA zone name this machine knows (the system's, else the tzdata package's), by lower case."""
    return {name.lower(): name for name in available_timezones()}


@functools.cache
def time_zone_names() -> list[str]:
    """Every IANA zone name this machine knows, sorted (for autocompletion)."""
    return sorted(_zone_names().values())


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone by name (any letter case); InputError naming close matches otherwise."""
    wanted = name.strip().replace(" ", "_")
    known = _zone_names().get(wanted.lower())
    if known is not None:
        with contextlib.suppress(ZoneInfoNotFoundError, ValueError):
            return ZoneInfo(known)
    close = difflib.get_close_matches(wanted.lower(), list(_zone_names()), n=2, cutoff=0.75)
    hint = f" Did you mean {' or '.join(_zone_names()[c] for c in close)}?" if close else ""
    raise InputError(
        f"Unknown time zone {name.strip()!r}: use a name from the IANA time zone database, like "
        f"Europe/Berlin, America/New_York or Asia/Tokyo.{hint}"
    )


# --- the schedule --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckinSchedule:
    """One user's check-ins: where, when, and how the last ones went."""

    user_key: str
    platform: str
    user_id: str
    at: time
    """The local time of day."""
    timezone: str
    """An IANA name, e.g. ``Europe/Berlin``."""
    since: datetime
    """When the schedule was set (UTC): no check-in is due before it."""
    user_name: str = ""
    last_sent_at: datetime | None = None
    last_sent_on: date | None = None
    """The local day of the last check-in."""
    unanswered: int = 0
    """Check-ins in a row the user has not answered."""
    messages_seen: int = 0
    """The user's message count when the last check-in went out; more since means an answer."""

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "user_id": self.user_id,
            "user_name": self.user_name,
            "time": f"{self.at:%H:%M}",
            "timezone": self.timezone,
            "since": self.since.isoformat(),
            "last_sent_at": self.last_sent_at.isoformat() if self.last_sent_at else None,
            "last_sent_on": self.last_sent_on.isoformat() if self.last_sent_on else None,
            "unanswered": self.unanswered,
            "messages_seen": self.messages_seen,
        }

    @classmethod
    def from_json(cls, user_key: str, data: Any) -> CheckinSchedule | None:
        """The stored form read back; None (and a warning) for anything malformed."""
        if data is None:
            return None
        try:
            last_sent_at = data.get("last_sent_at")
            last_sent_on = data.get("last_sent_on")
            schedule = cls(
                user_key=user_key,
                platform=str(data["platform"]),
                user_id=str(data["user_id"]),
                user_name=str(data.get("user_name") or ""),
                at=parse_time(str(data["time"])),
                timezone=parse_timezone(str(data["timezone"])).key,
                since=_aware(datetime.fromisoformat(data["since"])),
                last_sent_at=_aware(datetime.fromisoformat(last_sent_at)) if last_sent_at else None,
                last_sent_on=date.fromisoformat(last_sent_on) if last_sent_on else None,
                unanswered=max(int(data.get("unanswered") or 0), 0),
                messages_seen=max(int(data.get("messages_seen") or 0), 0),
            )
        except (AttributeError, KeyError, TypeError, ValueError, InputError) as exc:
            logger.warning("ignoring the malformed check-in schedule of %s: %s", user_key, exc)
            return None
        return schedule

    def with_message_count(self, count: int) -> CheckinSchedule:
        """This schedule after the user's messages so far: any since the last check-in resets the
        back-off."""
        if self.unanswered and count > self.messages_seen:
            return replace(self, unanswered=0)
        return self

    def sent(self, at: datetime, day: date, message_count: int) -> CheckinSchedule:
        """This schedule after a check-in for local ``day`` went out at ``at``."""
        return replace(
            self,
            last_sent_at=at,
            last_sent_on=day,
            unanswered=self.unanswered + 1,
            messages_seen=message_count,
        )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def interval_days(unanswered: int) -> int:
    """Days between check-ins: 1, and after two unanswered ones 2, then 4, at most 7."""
    if unanswered < BACK_OFF_AFTER:
        return 1
    return min(1 << min(unanswered - BACK_OFF_AFTER + 1, 8), MAX_INTERVAL_DAYS)


def local_time_on(day: date, at: time, zone: ZoneInfo) -> datetime:
    """``at`` on local ``day``, in UTC. A skipped time comes out later by the size of the gap
    (PEP 495, fold=0); a repeated one is its first occurrence."""
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def next_due(schedule: CheckinSchedule, now: datetime, *, grace: timedelta = DEFAULT_GRACE) -> datetime:
    """When the schedule's next check-in is due (UTC): at most ``grace`` in the past (due now),
    else in the future. See the module docstring for the rules."""
    zone = schedule.zone
    if schedule.last_sent_on is None:
        day = schedule.since.astimezone(zone).date()
    else:
        day = schedule.last_sent_on + timedelta(days=interval_days(schedule.unanswered))
    # After a long downtime, start near today rather than walking every missed day.
    day = max(day, now.astimezone(zone).date() - timedelta(days=1))
    earliest = max(schedule.since, now - grace)
    due = local_time_on(day, schedule.at, zone)
    while due < earliest:
        day += timedelta(days=1)
        due = local_time_on(day, schedule.at, zone)
    return due


def next_daily_time(schedule: CheckinSchedule, after: datetime) -> datetime:
    """The first local check-in time strictly after ``after`` (UTC), whatever the back-off."""
    zone = schedule.zone
    day = after.astimezone(zone).date() - timedelta(days=1)
    due = local_time_on(day, schedule.at, zone)
    while due <= after:
        day += timedelta(days=1)
        due = local_time_on(day, schedule.at, zone)
    return due


def describe(schedule: CheckinSchedule, now: datetime, *, grace: timedelta = DEFAULT_GRACE) -> str:
    """One or two sentences for ``/checkin show``."""
    days = interval_days(schedule.unanswered)
    local = next_due(schedule, now, grace=grace).astimezone(schedule.zone)
    if days == 1:
        how_often = "every day"
    else:
        how_often = (
            f"every {days} days for now (the last {schedule.unanswered} went unanswered; "
            "any message from you makes it daily again)"
        )
    return (
        f"I check in {how_often} at {schedule.at:%H:%M} ({schedule.timezone}), by direct message on "
        f"{schedule.platform.capitalize()}. Next: {local:%a %d %b %H:%M}."
    )


def stage_direction(name: str, local: datetime) -> str:
    """The last message of a check-in's prompt: what to write, and when it is for the user."""
    hour = local.hour
    part = "morning" if 5 <= hour < 12 else "afternoon" if 12 <= hour < 18 else "evening"
    who = name or "them"
    return (
        f"(Check-in: {who} has not written; you are writing first. It is {local:%A} {part}, "
        f"{local:%H:%M}, for them. Write a short, warm message in your own voice: ask how they are, "
        "and follow up on something you remember about them (a plan, a goal, how they have been "
        "feeling) if there is one. Two or three sentences at most, one question. Do not mention "
        "that this message was scheduled.)"
    )


# --- the scheduler -------------------------------------------------------------------------


class CheckinScheduler:
    """Sends due check-ins in the background; also what the ``/checkin`` commands call.

    ``messengers`` maps a platform name (``"discord"``, ``"telegram"``) to its DirectMessenger;
    schedules of other platforms stay stored, untouched, until that platform runs again.
    ``clock`` returns the current time (aware UTC); tests pass their own.
    """

    def __init__(
        self,
        engine: Engine,
        messengers: Mapping[str, DirectMessenger],
        *,
        clock: Callable[[], datetime] = utcnow,
        tick_s: float = 60.0,
        grace: timedelta = DEFAULT_GRACE,
        max_per_tick: int = 20,
        retry_after: timedelta = timedelta(minutes=5),
        page_size: int = 500,
        reload_s: float = 3600.0,
    ) -> None:
        self._engine = engine
        self._store = engine.store
        self.messengers = dict(messengers)
        self.clock = clock
        self.tick_s = tick_s
        self.grace = grace
        self.max_per_tick = max_per_tick
        self.retry_after = retry_after
        self._page_size = page_size
        self.reload_s = reload_s
        self._next_load = 0.0
        self._heap: list[tuple[datetime, int, str]] = []
        self._entry: dict[str, int] = {}
        """The live heap entry of each tracked user; older entries of theirs are stale."""
        self._counter = 0
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self.sent = 0
        self.failed = 0

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        try:
            await self.load()
        except WhisperEngineError:  # the bot starts anyway; the loop loads them once it can
            logger.exception("check-ins: could not load the schedules; trying again shortly")
            self._next_load = 0.0
        else:
            self._next_load = time_module.monotonic() + self.reload_s
        logger.info("check-ins: %d schedules on %s", self.tracked, ", ".join(sorted(self.messengers)))
        self._stop.clear()
        self._task = asyncio.create_task(self._loop(), name="checkin-scheduler")

    async def aclose(self, timeout_s: float = 10.0) -> None:
        """Stop after the tick in progress (cancelled after ``timeout_s``)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            await cancel_and_wait(task)

    async def load(self) -> int:
        """Track every stored schedule not tracked yet (page by page); returns how many.

        Run at start, and every ``reload_s``: schedules written elsewhere (moved to another
        user key when accounts are linked, or set through another process) are picked up."""
        now = self.clock()
        added = 0
        after = ""
        while True:
            page = await self._store.settings_with_key(
                CHECKIN_SETTING, after_scope=after, limit=self._page_size
            )
            for user_key, value in page:
                if user_key in self._entry:
                    continue
                schedule = CheckinSchedule.from_json(user_key, value)
                if schedule is not None and schedule.platform in self.messengers:
                    self._wake(schedule, now)
                    added += 1
            if len(page) < self._page_size:
                return added
            after = page[-1][0]

    async def _loop(self) -> None:
        """The task's error boundary: a failed tick is logged and the next one runs."""
        while not self._stop.is_set():
            try:
                if time_module.monotonic() >= self._next_load:
                    await self.load()
                    self._next_load = time_module.monotonic() + self.reload_s
                await self.tick()
            except Exception:
                logger.exception("check-in tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.tick_s)

    # --- the commands ---------------------------------------------------------------------

    async def set_schedule(
        self, user_key: str, *, platform: str, user_id: str, user_name: str, at: str, timezone: str
    ) -> CheckinSchedule:
        """Check in daily at ``at`` (HH:MM) in ``timezone``; InputError for bad input. What was
        sent before is kept (no second check-in the same day); the back-off starts over."""
        local_time, zone = parse_time(at), parse_timezone(timezone)
        if platform not in self.messengers:
            raise InputError(f"Check-ins can't be sent on {platform} by this bot.")
        now = self.clock()
        previous = await self._stored(user_key)
        schedule = CheckinSchedule(
            user_key=user_key,
            platform=platform,
            user_id=user_id,
            user_name=user_name,
            at=local_time,
            timezone=zone.key,
            since=now,
            last_sent_at=previous.last_sent_at if previous else None,
            last_sent_on=previous.last_sent_on if previous else None,
            messages_seen=previous.messages_seen if previous else 0,
        )
        await self._store.set_setting(user_key, CHECKIN_SETTING, schedule.to_json())
        self._wake(schedule, now)
        logger.info("check-ins for %s at %s %s", user_key, schedule.at, schedule.timezone)
        return schedule

    async def turn_off(self, user_key: str) -> bool:
        """Stop the user's check-ins; False when there were none."""
        had = await self._stored(user_key) is not None
        await self._store.delete_setting(user_key, CHECKIN_SETTING)
        self._entry.pop(user_key, None)
        return had

    async def schedule_of(self, user_key: str) -> CheckinSchedule | None:
        """The user's schedule, with their replies since the last check-in taken into account."""
        schedule = await self._stored(user_key)
        if schedule is None:
            return None
        profile = await self._store.get_user(user_key)
        return schedule.with_message_count(profile.message_count if profile else 0)

    def describe(self, schedule: CheckinSchedule) -> str:
        return describe(schedule, self.clock(), grace=self.grace)

    async def _stored(self, user_key: str) -> CheckinSchedule | None:
        return CheckinSchedule.from_json(user_key, await self._store.get_setting(user_key, CHECKIN_SETTING))

    # --- ticks ----------------------------------------------------------------------------

    def _push(self, user_key: str, wake_at: datetime) -> None:
        self._counter += 1
        self._entry[user_key] = self._counter
        heapq.heappush(self._heap, (wake_at, self._counter, user_key))

    def _wake(self, schedule: CheckinSchedule, now: datetime) -> None:
        """Track the schedule: wake when it is due, or at its next daily time if sooner (a reply
        during a back-off makes it due)."""
        due = next_due(schedule, now, grace=self.grace)
        self._push(schedule.user_key, min(due, next_daily_time(schedule, now)))

    @property
    def tracked(self) -> int:
        """How many schedules are waited on."""
        return len(self._entry)

    @property
    def running(self) -> bool:
        return self._task is not None

    async def tick(self) -> int:
        """Send the check-ins due now, at most ``max_per_tick`` of them; returns how many went out."""
        now = self.clock()
        handled = sent = 0
        while self._heap and self._heap[0][0] <= now and handled < self.max_per_tick:
            _, number, user_key = heapq.heappop(self._heap)
            if self._entry.get(user_key) != number:
                continue  # rescheduled or turned off since
            handled += 1
            try:
                sent += await self._visit(user_key, now)
            except (LLMError, BackendUnavailable, ConversationBusy) as exc:
                self.failed += 1
                logger.warning("check-in for %s not written (%s); trying again later", user_key, exc)
                self._push(user_key, now + self.retry_after)
            except WhisperEngineError:
                self.failed += 1
                logger.exception("check-in for %s failed", user_key)
                self._push(user_key, now + self.retry_after)
        return sent

    async def _visit(self, user_key: str, now: datetime) -> bool:
        """Send the user's check-in if it is due; otherwise track its next wake time."""
        stored = await self._stored(user_key)
        if stored is None or stored.platform not in self.messengers:
            self._entry.pop(user_key, None)  # turned off, or the user was forgotten
            return False
        profile = await self._store.get_user(user_key)
        count = profile.message_count if profile else 0
        schedule = stored.with_message_count(count)
        due = next_due(schedule, now, grace=self.grace)
        if due > now:
            self._wake(schedule, now)
            return False
        # Recorded before it goes out: a failed send is not repeated today (at most once), and
        # one the platform refuses (a blocked bot) counts as unanswered, so it backs off.
        done = schedule.sent(now, due.astimezone(schedule.zone).date(), count)
        messenger = self.messengers[schedule.platform]
        try:
            channel_id = await messenger.direct_channel(schedule.user_id)
        except InputError as exc:
            await self._record(done, now)
            self.failed += 1
            logger.warning("no private chat with %s for a check-in: %s", user_key, exc)
            return False
        async with self._engine.locks.hold(f"{schedule.platform}:{channel_id}"):
            text = await self.compose(schedule, profile, channel_id, due)
            if not text:
                raise LLMError("the language model wrote an empty check-in")
            await self._record(done, now)
            try:
                delivered = await messenger.send_direct(schedule.user_id, text)
            except WhisperEngineError as exc:
                self.failed += 1
                logger.warning("check-in for %s could not be delivered: %s", user_key, exc)
                return False
            await self._engine.add_assistant_message(
                StoredMessage(
                    id=new_id(),
                    conversation_key=f"{schedule.platform}:{delivered.channel_id}",
                    user_key=user_key,
                    role="assistant",
                    content=text,
                    platform=schedule.platform,
                    channel_id=delivered.channel_id,
                    created_at=utcnow(),
                    user_name=self._engine.bot_name,
                    platform_message_id=delivered.message_id,
                )
            )
        self.sent += 1
        logger.info("check-in sent to %s", user_key)
        return True

    async def _record(self, schedule: CheckinSchedule, now: datetime) -> None:
        await self._store.set_setting(schedule.user_key, CHECKIN_SETTING, schedule.to_json())
        self._wake(schedule, now)

    # --- composing ------------------------------------------------------------------------

    async def compose(
        self, schedule: CheckinSchedule, profile: UserProfile | None, channel_id: str, due: datetime
    ) -> str:
        """The check-in's text, written by the LLM in the persona of the user's private chat."""
        engine = self._engine
        name = (profile.display_name if profile else "") or schedule.user_name
        private_chat = UniversalMessage(
            content="",
            user_id=schedule.user_id,
            user_name=name,
            platform=schedule.platform,
            channel_id=channel_id,
            is_direct=True,
        )
        persona = await engine.personas.for_message(private_chat)
        relationship = await engine.relationships.get(schedule.user_key, profile)
        rows = await self._store.recent_messages(private_chat.conversation_key, engine.config.recent_turns)
        turns = [Turn(m.role, m.content, m.user_name, m.created_at) for m in rows]
        memories = await self._memories(schedule.user_key, [m.content for m in rows if m.role == "user"])
        prompt = build_prompt(
            persona=persona,
            user_message=stage_direction(relationship.preferred_name or name, due.astimezone(schedule.zone)),
            user_name=name,
            turns=turns,
            memories=memories,
            profile=profile,
            budget=engine.config.budget,
            relationship=relationship,
            style=engine.config.prompt_style,
        )
        return await self._write(prompt.messages)

    async def _memories(self, user_key: str, said: list[str]) -> list[MemoryHit]:
        """Recalled for what the user said lately (and what check-ins follow up on), then their
        newest memories that recall left out, superseded ones excluded."""
        query = " ".join([*said[-3:], RECALL_HINT])
        try:
            hits = await self._engine.recall.recall(user_key, query)
            newest = await self._store.list_memories(user_key, limit=NEWEST_MEMORIES)
            fresh = [m for m in newest if m.id not in {hit.memory_id for hit in hits}]
            states = await self._store.memory_states(user_key, [m.id for m in fresh]) if fresh else []
        except (StorageError, BackendUnavailable):
            logger.exception("memory recall failed for the check-in of %s; writing without it", user_key)
            return []
        replaced = {state.id for state in states if state.superseded_by}
        return hits + [record_hit(m) for m in fresh if m.id not in replaced]

    async def _write(self, messages: tuple[ChatMessage, ...]) -> str:
        engine = self._engine
        parts = [
            chunk
            async for chunk in engine.llm.stream(
                messages, max_tokens=engine.config.budget.reply_tokens, temperature=engine.config.temperature
            )
        ]
        return "".join(parts).strip()


__all__ = [
    "CHECKIN_SETTING",
    "DEFAULT_GRACE",
    "CheckinSchedule",
    "CheckinScheduler",
    "describe",
    "interval_days",
    "local_time_on",
    "next_daily_time",
    "next_due",
    "parse_time",
    "parse_timezone",
    "stage_direction",
    "time_zone_names",
]
