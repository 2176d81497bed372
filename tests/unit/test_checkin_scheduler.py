"""``CheckinScheduler`` with the real SQLite store and a fake clock: what goes out, when, to
whom, what the LLM was told, what is stored, and what is never sent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.checkins import CHECKIN_SETTING, CheckinSchedule, CheckinScheduler
from engine.errors import InputError, LLMError
from engine.events import ChatMessage, UniversalMessage
from engine.pipeline import Engine
from engine.ports import DirectMessageSent
from tests.fakes.ports import FakeLLM

BERLIN = ZoneInfo("Europe/Berlin")
CHECKIN_TEXT = "Good morning! How is the training going?"
REPLY_TEXT = "Glad to hear it."
MakeEngine = Callable[..., AbstractAsyncContextManager[Engine]]


def berlin(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(UTC)  # type: ignore[misc]


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclass
class RecordingMessenger:
    """A test double of the DirectMessenger port (the platform): records what it is asked to send."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    refuse: bool = False
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def direct_channel(self, user_id: str) -> str:
        return user_id  # like Telegram: the private chat has the user's id

    async def send_direct(self, user_id: str, text: str) -> DirectMessageSent:
        if self.refuse:
            raise InputError("Telegram refused the request: Forbidden: bot was blocked by the user")
        self.sent.append((user_id, text))
        self.arrived.set()
        return DirectMessageSent(channel_id=user_id, message_id=str(len(self.sent)))


def scripted(messages: Sequence[ChatMessage]) -> str:
    return CHECKIN_TEXT if messages[-1].content.startswith("(Check-in") else REPLY_TEXT


def checkin_prompts(llm: FakeLLM) -> list[list[ChatMessage]]:
    return [p for p in llm.prompts if p[-1].content.startswith("(Check-in")]


async def say(engine: Engine, user_id: str, text: str, *, platform: str = "telegram") -> None:
    message = UniversalMessage(
        content=text, user_id=user_id, user_name="Ana", platform=platform, channel_id=user_id, is_direct=True
    )
    await engine.handle(message).collect()
    await engine.writer.drain()
    await engine.relationships.drain()


async def opt_in(
    scheduler: CheckinScheduler, user_id: str, at: str = "08:00", *, platform: str = "telegram"
) -> CheckinSchedule:
    return await scheduler.set_schedule(
        f"{platform}:{user_id}",
        platform=platform,
        user_id=user_id,
        user_name="Ana",
        at=at,
        timezone="Europe/Berlin",
    )


async def test_check_in_goes_out_at_the_local_time_drawing_on_memory(make_engine: MakeEngine) -> None:
    llm = FakeLLM(scripted)
    messenger = RecordingMessenger()
    clock = FakeClock(berlin(2026, 6, 5, 7, 0))
    async with make_engine(llm) as engine:
        await say(engine, "7", "I'm training for the Lisbon half marathon in October, wish me luck")
        scheduler = CheckinScheduler(engine, {"telegram": messenger}, clock=clock)
        await scheduler.load()
        await opt_in(scheduler, "7")

        clock.now = berlin(2026, 6, 5, 7, 59)
        assert await scheduler.tick() == 0
        clock.now = berlin(2026, 6, 5, 8, 0, 20)
        assert await scheduler.tick() == 1
        assert messenger.sent == [("7", CHECKIN_TEXT)]

        [prompt] = checkin_prompts(llm)
        system = "\n\n".join(m.content for m in prompt if m.role == "system")
        assert system.startswith("You are Ember")  # the persona of the private chat
        # the memory reached the prompt (among the recent turns here, so not repeated as a memory)
        assert any("Lisbon half marathon" in m.content for m in prompt[:-1])
        assert "You are talking with Ana" in system
        assert "Friday morning, 08:00" in prompt[-1].content
        assert [(m.role, m.content) for m in prompt[1:-2]][-1] == ("assistant", REPLY_TEXT)  # recent turns

        stored = await engine.store.recent_messages("telegram:7", 10)
        assert (stored[-1].role, stored[-1].content, stored[-1].user_key) == (
            "assistant",
            CHECKIN_TEXT,
            "telegram:7",
        )
        schedule = CheckinSchedule.from_json(
            "telegram:7", await engine.store.get_setting("telegram:7", CHECKIN_SETTING)
        )
        assert schedule is not None
        assert schedule.last_sent_on == date(2026, 6, 5) and schedule.unanswered == 1
        exported = await engine.export_user("telegram:7")
        assert exported["settings"]["checkin"]["time"] == "08:00"  # type: ignore[index]

        clock.now = berlin(2026, 6, 5, 8, 10)
        assert await scheduler.tick() == 0  # at most one a day
        assert len(messenger.sent) == 1


async def test_how_the_user_has_been_feeling_reaches_the_check_in(make_engine: MakeEngine) -> None:
    llm = FakeLLM(scripted)
    clock = FakeClock(berlin(2026, 6, 5, 7, 0))
    async with make_engine(llm) as engine:
        for text in (
            "I feel so sad and lonely today",
            "I miss my grandmother, I cried all night",
            "everything feels hopeless and I am heartbroken",
        ):
            await say(engine, "7", text)
        scheduler = CheckinScheduler(engine, {"telegram": RecordingMessenger()}, clock=clock)
        await opt_in(scheduler, "7")
        clock.now = berlin(2026, 6, 5, 8, 0)
        assert await scheduler.tick() == 1
        [prompt] = checkin_prompts(llm)
        assert "They have seemed mostly sad lately." in prompt[-2].content  # the relationship's trend


async def test_the_conversation_continues_from_the_check_in(make_engine: MakeEngine) -> None:
    llm = FakeLLM(scripted)
    messenger = RecordingMessenger()
    clock = FakeClock(berlin(2026, 6, 5, 7, 0))
    async with make_engine(llm) as engine:
        await say(engine, "7", "hello there, nice to meet you")  # turns are cached now
        scheduler = CheckinScheduler(engine, {"telegram": messenger}, clock=clock)
        await opt_in(scheduler, "7")
        clock.now = berlin(2026, 6, 5, 8, 0)
        assert await scheduler.tick() == 1
        await say(engine, "7", "pretty good, thanks for asking")
        answer = next(p for p in llm.prompts if p[-1].content == "pretty good, thanks for asking")
        assert (answer[-3].role, answer[-3].content) == ("assistant", CHECKIN_TEXT)


async def test_no_burst_after_downtime(make_engine: MakeEngine) -> None:
    messenger = RecordingMessenger()
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(FakeLLM(scripted)) as engine:
        scheduler = CheckinScheduler(engine, {"telegram": messenger}, clock=clock)
        await opt_in(scheduler, "7")
        clock.now = berlin(2026, 6, 6, 12, 0)  # five check-ins missed while down
        assert await scheduler.tick() == 0
        clock.now = berlin(2026, 6, 7, 8, 1)
        assert await scheduler.tick() == 1
        assert await scheduler.tick() == 0
        assert len(messenger.sent) == 1


async def test_a_restarted_scheduler_skips_what_it_missed(make_engine: MakeEngine) -> None:
    messenger = RecordingMessenger()
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(FakeLLM(scripted)) as engine:
        await opt_in(CheckinScheduler(engine, {"telegram": messenger}, clock=clock), "7")
        clock.now = berlin(2026, 6, 3, 8, 45)  # back up after two days, 45 minutes past the time
        restarted = CheckinScheduler(engine, {"telegram": messenger}, clock=clock)
        assert await restarted.load() == 1
        assert await restarted.tick() == 0
        clock.now = berlin(2026, 6, 4, 8, 0)
        assert await restarted.tick() == 1


async def test_unanswered_check_ins_back_off_and_a_message_resets_it(make_engine: MakeEngine) -> None:
    messenger = RecordingMessenger()
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(FakeLLM(scripted)) as engine:
        scheduler = CheckinScheduler(engine, {"telegram": messenger}, clock=clock)
        await opt_in(scheduler, "7")
        sent_on: list[int] = []
        for hour in range(9 * 24):  # look every hour for nine days
            clock.now = berlin(2026, 6, 1, 7, 30) + timedelta(hours=hour)
            if await scheduler.tick():
                sent_on.append(hour // 24)
        assert sent_on == [0, 1, 3, 7]
        shown = await scheduler.schedule_of("telegram:7")
        assert shown is not None and shown.unanswered == 4
        assert "every 7 days for now" in scheduler.describe(shown)

        await say(engine, "7", "sorry, I was away on a trip")  # on 9 June, between two check-ins
        shown = await scheduler.schedule_of("telegram:7")
        assert shown is not None and shown.unanswered == 0
        clock.now = berlin(2026, 6, 10, 8, 0)  # the next daily time: daily again
        assert await scheduler.tick() == 1
        assert len(messenger.sent) == 5


async def test_turned_off_and_forgotten_users_get_nothing(make_engine: MakeEngine) -> None:
    messenger = RecordingMessenger()
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(FakeLLM(scripted)) as engine:
        scheduler = CheckinScheduler(engine, {"telegram": messenger}, clock=clock)
        await say(engine, "1", "my name is Bo and I like tea")
        await opt_in(scheduler, "1")
        await opt_in(scheduler, "2")
        assert scheduler.tracked == 2
        assert await scheduler.turn_off("telegram:2") is True
        assert await scheduler.turn_off("telegram:2") is False
        await engine.forget_user("telegram:1")  # erases the schedule with everything else
        clock.now = berlin(2026, 6, 1, 8, 0)
        assert await scheduler.tick() == 0
        assert messenger.sent == [] and scheduler.tracked == 0
        assert await engine.store.settings_with_key(CHECKIN_SETTING) == []


async def test_each_tick_handles_a_bounded_number(make_engine: MakeEngine) -> None:
    messenger = RecordingMessenger()
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(FakeLLM(scripted)) as engine:
        scheduler = CheckinScheduler(engine, {"telegram": messenger}, clock=clock, max_per_tick=2)
        for user in "12345":
            await opt_in(scheduler, user)
        clock.now = berlin(2026, 6, 1, 8, 0)
        assert [await scheduler.tick() for _ in range(4)] == [2, 2, 1, 0]
        assert sorted(user for user, _ in messenger.sent) == list("12345")


async def test_an_llm_failure_is_retried_within_the_grace_window_only(make_engine: MakeEngine) -> None:
    messenger = RecordingMessenger()
    llm = FakeLLM(scripted, fail_with=LLMError("the model is down"))
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(llm) as engine:
        scheduler = CheckinScheduler(
            engine, {"telegram": messenger}, clock=clock, retry_after=timedelta(minutes=5)
        )
        await opt_in(scheduler, "1")
        await opt_in(scheduler, "2", at="09:00")
        clock.now = berlin(2026, 6, 1, 8, 0)
        assert await scheduler.tick() == 0
        clock.now = berlin(2026, 6, 1, 8, 3)
        assert await scheduler.tick() == 0 and len(llm.prompts) == 1  # not before retry_after
        llm.fail_with = None
        clock.now = berlin(2026, 6, 1, 8, 5)
        assert await scheduler.tick() == 1  # the retry, 5 minutes late
        assert messenger.sent == [("1", CHECKIN_TEXT)]

        llm.fail_with = LLMError("down again")
        for minute in range(0, 40, 5):
            clock.now = berlin(2026, 6, 1, 9, minute)
            assert await scheduler.tick() == 0
        llm.fail_with = None
        clock.now = berlin(2026, 6, 1, 9, 45)
        assert await scheduler.tick() == 0  # past the grace window: skipped, not sent late
        clock.now = berlin(2026, 6, 2, 8, 0)
        assert await scheduler.tick() == 1
        clock.now = berlin(2026, 6, 2, 9, 0)
        assert await scheduler.tick() == 1  # user 2's next one
        assert [user for user, _ in messenger.sent] == ["1", "1", "2"]


async def test_a_refused_delivery_counts_as_unanswered_and_is_not_repeated(make_engine: MakeEngine) -> None:
    messenger = RecordingMessenger(refuse=True)
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(FakeLLM(scripted)) as engine:
        scheduler = CheckinScheduler(engine, {"telegram": messenger}, clock=clock)
        await opt_in(scheduler, "1")
        clock.now = berlin(2026, 6, 1, 8, 0)
        assert await scheduler.tick() == 0
        clock.now = berlin(2026, 6, 1, 8, 10)
        assert await scheduler.tick() == 0
        stored = await scheduler.schedule_of("telegram:1")
        assert stored is not None and stored.unanswered == 1 and stored.last_sent_on == date(2026, 6, 1)
        assert scheduler.failed == 1
        assert await engine.store.recent_messages("telegram:1", 5) == []  # nothing stored as said


async def test_schedules_of_platforms_not_running_are_kept_untouched(make_engine: MakeEngine) -> None:
    telegram, discord = RecordingMessenger(), RecordingMessenger()
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(FakeLLM(scripted)) as engine:
        both = CheckinScheduler(engine, {"telegram": telegram, "discord": discord}, clock=clock)
        await opt_in(both, "1")
        await opt_in(both, "2", platform="discord")
        before = await engine.store.get_setting("discord:2", CHECKIN_SETTING)

        telegram_only = CheckinScheduler(engine, {"telegram": telegram}, clock=clock)
        assert await telegram_only.load() == 1
        clock.now = berlin(2026, 6, 1, 8, 0)
        assert await telegram_only.tick() == 1
        assert telegram.sent and not discord.sent
        assert await engine.store.get_setting("discord:2", CHECKIN_SETTING) == before
        with pytest.raises(InputError, match="can't be sent on discord"):
            await opt_in(telegram_only, "3", platform="discord")


async def test_bad_input_is_refused_and_nothing_is_stored(make_engine: MakeEngine) -> None:
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(FakeLLM(scripted)) as engine:
        scheduler = CheckinScheduler(engine, {"telegram": RecordingMessenger()}, clock=clock)
        with pytest.raises(InputError, match="HH:MM"):
            await opt_in(scheduler, "1", at="8 in the morning")
        with pytest.raises(InputError, match="Unknown time zone 'Europe/Paris2'"):
            await scheduler.set_schedule(
                "telegram:1",
                platform="telegram",
                user_id="1",
                user_name="A",
                at="08:00",
                timezone="Europe/Paris2",
            )
        assert await engine.store.settings_with_key(CHECKIN_SETTING) == []
        assert scheduler.tracked == 0


async def test_the_background_task_sends_when_due_and_stops(make_engine: MakeEngine) -> None:
    messenger = RecordingMessenger()
    clock = FakeClock(berlin(2026, 6, 1, 7, 0))
    async with make_engine(FakeLLM(scripted)) as engine:
        await opt_in(CheckinScheduler(engine, {"telegram": messenger}, clock=clock), "1")
        scheduler = CheckinScheduler(engine, {"telegram": messenger}, clock=clock, tick_s=0.01)
        await scheduler.start()
        assert scheduler.tracked == 1
        clock.now = berlin(2026, 6, 1, 8, 0)
        await asyncio.wait_for(messenger.arrived.wait(), 10)
        await scheduler.aclose()
        assert messenger.sent == [("1", CHECKIN_TEXT)] and scheduler.sent == 1
