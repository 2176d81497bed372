"""The schedule math of check-ins (``engine/checkins.py``): input, time zones and DST, the
grace window (no burst after downtime), one per local day, back-off and its reset."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from engine.checkins import (
    CheckinSchedule,
    describe,
    interval_days,
    next_daily_time,
    next_due,
    parse_time,
    parse_timezone,
    stage_direction,
)
from engine.errors import InputError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
GRACE = timedelta(minutes=30)


def local(zone: ZoneInfo, *args: int) -> datetime:
    """A local wall-clock time, in UTC."""
    return datetime(*args, tzinfo=zone).astimezone(UTC)  # type: ignore[misc]


def schedule(
    at: str = "08:00", zone: str = "Europe/Berlin", *, since: datetime, **changes: object
) -> CheckinSchedule:
    base = CheckinSchedule(
        user_key="telegram:7", platform="telegram", user_id="7", at=parse_time(at), timezone=zone, since=since
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def send(s: CheckinSchedule, now: datetime, message_count: int = 0) -> CheckinSchedule:
    """What the scheduler records when it sends the check-in due at ``now``."""
    due = next_due(s, now)
    assert due <= now
    return s.sent(now, due.astimezone(s.zone).date(), message_count)


def run_days(
    s: CheckinSchedule, start: datetime, days: int, step: timedelta, *, answered: bool = True
) -> tuple[list[date], CheckinSchedule]:
    """Look every ``step`` for ``days`` days, sending whatever is due (the user answering each
    check-in, or never); the local days sent on."""
    sent_on: list[date] = []
    messages = 0
    now = start
    while now < start + timedelta(days=days):
        s = s.with_message_count(messages)
        if next_due(s, now) <= now:
            s = send(s, now, messages)
            assert s.last_sent_on is not None
            sent_on.append(s.last_sent_on)
            messages += answered
        now += step
    return sent_on, s


# --- input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"), [("08:00", time(8, 0)), ("8:05", time(8, 5)), (" 23:59 ", time(23, 59))]
)
def test_times_of_day_are_hh_mm(text: str, expected: time) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["24:00", "08:60", "8am", "0800", "08:00:00", "", "-1:00", "08.00"])
def test_bad_times_get_a_clear_error(text: str) -> None:
    with pytest.raises(InputError, match="HH:MM on the 24-hour clock"):
        parse_time(text)


def test_time_zones_are_iana_names_in_any_case() -> None:
    assert parse_timezone("Europe/Berlin").key == "Europe/Berlin"
    assert parse_timezone("europe/berlin").key == "Europe/Berlin"
    assert parse_timezone("America/New York").key == "America/New_York"
    assert parse_timezone("UTC").key == "UTC"


@pytest.mark.parametrize("name", ["Mars/Olympus_Mons", "CEST", "../../etc/passwd", "", "Europe/"])
def test_unknown_time_zones_get_a_clear_error(name: str) -> None:
    with pytest.raises(InputError, match="Unknown time zone"):
        parse_timezone(name)


def test_a_misspelt_time_zone_gets_a_suggestion() -> None:
    with pytest.raises(InputError, match="Did you mean Europe/Berlin"):
        parse_timezone("Europe/Berln")


# --- when ------------------------------------------------------------------------------------


def test_first_check_in_is_today_when_the_time_is_still_ahead() -> None:
    set_at = local(BERLIN, 2026, 6, 1, 7, 0)
    assert next_due(schedule(since=set_at), set_at) == local(BERLIN, 2026, 6, 1, 8, 0)


def test_a_time_already_past_when_set_starts_tomorrow_even_within_grace() -> None:
    set_at = local(BERLIN, 2026, 6, 1, 8, 10)
    assert next_due(schedule(since=set_at), set_at) == local(BERLIN, 2026, 6, 2, 8, 0)


def test_the_local_time_is_kept_across_the_spring_dst_change() -> None:
    # Europe/Berlin moves from CET (+1) to CEST (+2) on Sunday 29 March 2026.
    s = schedule(since=local(BERLIN, 2026, 3, 27, 12, 0))
    s = send(s, local(BERLIN, 2026, 3, 28, 8, 0))
    due = next_due(s, local(BERLIN, 2026, 3, 28, 9, 0))
    assert due == datetime(2026, 3, 29, 6, 0, tzinfo=UTC)  # 08:00 CEST
    assert due - s.last_sent_at == timedelta(hours=23)  # type: ignore[operator]
    assert due.astimezone(BERLIN).hour == 8


def test_the_local_time_is_kept_across_the_autumn_dst_change() -> None:
    # America/New_York moves from EDT (-4) to EST (-5) on Sunday 1 November 2026.
    s = schedule("07:30", "America/New_York", since=local(NEW_YORK, 2026, 10, 30, 12, 0))
    s = send(s, local(NEW_YORK, 2026, 10, 31, 7, 30))
    due = next_due(s, local(NEW_YORK, 2026, 10, 31, 8, 0))
    assert due == datetime(2026, 11, 1, 12, 30, tzinfo=UTC)  # 07:30 EST
    assert due - s.last_sent_at == timedelta(hours=25)  # type: ignore[operator]


def test_a_time_the_clocks_skip_comes_an_hour_later_that_day_only() -> None:
    s = schedule("02:30", since=local(BERLIN, 2026, 3, 28, 12, 0))
    due = next_due(s, local(BERLIN, 2026, 3, 28, 12, 0))
    assert due == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)  # 03:30 CEST: 02:30 does not exist that day
    s = send(s, due)
    assert next_due(s, due + timedelta(hours=1)) == local(BERLIN, 2026, 3, 30, 2, 30)


def test_a_time_the_clocks_pass_twice_is_its_first_occurrence() -> None:
    s = schedule("02:30", since=local(BERLIN, 2026, 10, 24, 12, 0))
    due = next_due(s, local(BERLIN, 2026, 10, 24, 12, 0))
    assert due == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST, before the clocks go back


def test_a_check_in_late_within_the_grace_window_is_still_due() -> None:
    s = schedule(since=local(BERLIN, 2026, 6, 1, 7, 0))
    due = local(BERLIN, 2026, 6, 1, 8, 0)
    assert next_due(s, due + timedelta(minutes=29)) == due


def test_a_check_in_later_than_the_grace_window_is_skipped_for_the_next_one() -> None:
    s = schedule(since=local(BERLIN, 2026, 6, 1, 7, 0))
    assert next_due(s, local(BERLIN, 2026, 6, 1, 8, 31)) == local(BERLIN, 2026, 6, 2, 8, 0)
    assert next_due(s, local(BERLIN, 2026, 6, 1, 8, 31), grace=timedelta(hours=1)) == local(
        BERLIN, 2026, 6, 1, 8, 0
    )


def test_no_burst_after_downtime_only_the_next_check_in() -> None:
    s = schedule(since=local(BERLIN, 2026, 6, 1, 7, 0))
    s = send(s, local(BERLIN, 2026, 6, 1, 8, 0))
    # Down from 2 June to 12 June, 14:00: ten check-ins were missed. Looking every minute
    # from then on sends exactly one a day, the first on 13 June.
    back = local(BERLIN, 2026, 6, 12, 14, 0)
    assert next_due(s, back) == local(BERLIN, 2026, 6, 13, 8, 0)
    sent_on, _ = run_days(s, back, 3, timedelta(minutes=1))
    assert sent_on == [date(2026, 6, 13), date(2026, 6, 14), date(2026, 6, 15)]


def test_no_burst_when_back_just_inside_the_grace_window_after_a_long_downtime() -> None:
    s = schedule(since=local(BERLIN, 2026, 1, 1, 7, 0))
    back = local(BERLIN, 2026, 6, 12, 8, 20)
    sent_on, _ = run_days(s, back, 2, timedelta(minutes=5))
    assert sent_on == [date(2026, 6, 12), date(2026, 6, 13), date(2026, 6, 14)]  # late one once, then daily


def test_at_most_one_a_local_day_even_when_the_time_is_moved_later() -> None:
    s = schedule(since=local(BERLIN, 2026, 6, 1, 7, 0))
    s = send(s, local(BERLIN, 2026, 6, 1, 8, 0))
    moved = replace(s, at=time(20, 0), since=local(BERLIN, 2026, 6, 1, 9, 0))  # what set_schedule keeps
    assert next_due(moved, local(BERLIN, 2026, 6, 1, 9, 0)) == local(BERLIN, 2026, 6, 2, 20, 0)


def test_a_time_just_before_midnight_is_not_sent_twice_around_midnight() -> None:
    s = schedule("23:50", since=local(BERLIN, 2026, 6, 1, 12, 0))
    sent_on, _ = run_days(s, local(BERLIN, 2026, 6, 1, 23, 0), 2, timedelta(minutes=7))
    assert sent_on == [date(2026, 6, 1), date(2026, 6, 2)]


# --- back-off ----------------------------------------------------------------------------------


def test_the_interval_doubles_after_two_unanswered_and_is_capped_at_a_week() -> None:
    assert [interval_days(n) for n in range(8)] == [1, 1, 2, 4, 7, 7, 7, 7]
    assert interval_days(1000) == 7


def test_unanswered_check_ins_are_spaced_out() -> None:
    start = local(BERLIN, 2026, 6, 1, 7, 0)
    sent_on, s = run_days(schedule(since=start), start, 30, timedelta(minutes=10), answered=False)
    days = [(d - date(2026, 6, 1)).days for d in sent_on]
    assert days == [0, 1, 3, 7, 14, 21, 28]
    assert s.unanswered == 7


def test_any_message_from_the_user_makes_it_daily_again() -> None:
    start = local(BERLIN, 2026, 6, 1, 7, 0)
    _, s = run_days(schedule(since=start), start, 8, timedelta(minutes=10), answered=False)  # days 0, 1, 3, 7
    assert s.unanswered == 4 and s.messages_seen == 0
    assert next_due(s, local(BERLIN, 2026, 6, 9, 7, 0)) == local(BERLIN, 2026, 6, 15, 8, 0)
    answered = s.with_message_count(1)
    assert answered.unanswered == 0
    assert next_due(answered, local(BERLIN, 2026, 6, 9, 7, 0)) == local(BERLIN, 2026, 6, 9, 8, 0)
    assert s.with_message_count(0) == s  # no new message: no change


def test_the_daily_time_wakes_a_backed_off_schedule_to_look_for_replies() -> None:
    s = schedule(since=local(BERLIN, 2026, 6, 1, 7, 0), unanswered=4, last_sent_on=date(2026, 6, 8))
    now = local(BERLIN, 2026, 6, 9, 8, 0)
    assert next_due(s, now) == local(BERLIN, 2026, 6, 15, 8, 0)
    assert next_daily_time(s, now) == local(BERLIN, 2026, 6, 10, 8, 0)  # strictly after now


# --- the stored form and the words -------------------------------------------------------------


def test_json_round_trip_and_malformed_values() -> None:
    s = schedule(
        since=local(BERLIN, 2026, 6, 1, 7, 0),
        user_name="Ana",
        last_sent_at=local(BERLIN, 2026, 6, 2, 8, 0, 5),
        last_sent_on=date(2026, 6, 2),
        unanswered=3,
        messages_seen=12,
    )
    assert CheckinSchedule.from_json(s.user_key, s.to_json()) == s
    assert CheckinSchedule.from_json("x", None) is None
    assert CheckinSchedule.from_json("x", "08:00") is None
    assert CheckinSchedule.from_json("x", {**s.to_json(), "timezone": "Nowhere/Land"}) is None
    assert CheckinSchedule.from_json("x", {**s.to_json(), "time": "25:00"}) is None


def test_describe_says_when_and_how_often() -> None:
    s = schedule(since=local(BERLIN, 2026, 6, 1, 7, 0))
    text = describe(s, local(BERLIN, 2026, 6, 1, 7, 0))
    assert text == (
        "I check in every day at 08:00 (Europe/Berlin), by direct message on Telegram. "
        "Next: Mon 01 Jun 08:00."
    )
    backed_off = replace(s, unanswered=3, last_sent_on=date(2026, 6, 4))
    text = describe(backed_off, local(BERLIN, 2026, 6, 4, 9, 0))
    assert "every 4 days for now" in text and "Next: Mon 08 Jun 08:00." in text


def test_stage_direction_names_the_user_and_their_local_time() -> None:
    text = stage_direction("Ana", datetime(2026, 6, 6, 8, 0, tzinfo=BERLIN))
    assert "Ana has not written" in text and "Saturday morning, 08:00" in text
