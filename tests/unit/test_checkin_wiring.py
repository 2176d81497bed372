"""``bot.checkins.start_checkins``: the scheduler starts only when check-ins are on and a running
platform can write first, and each such platform gets it for its ``/checkin`` command."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bot.checkins import start_checkins
from config.settings import Settings
from engine.checkins import CheckinScheduler
from engine.errors import ConfigError
from engine.pipeline import Engine
from engine.ports import DirectMessageSent

MakeEngine = Callable[..., AbstractAsyncContextManager[Engine]]


@dataclass
class PlatformThatWritesFirst:
    checkins: CheckinScheduler | None = None

    async def direct_channel(self, user_id: str) -> str:
        return user_id

    async def send_direct(self, user_id: str, text: str) -> DirectMessageSent:
        return DirectMessageSent(channel_id=user_id, message_id="1")


class PlatformThatOnlyAnswers:
    checkins = None


def app_for(engine: Engine, tmp_path: Path, **settings: Any) -> Any:
    config = Settings(_env_file=None, data_dir=tmp_path, **settings)  # type: ignore[call-arg]
    return SimpleNamespace(settings=config, engine=engine, choices={})


async def test_started_for_the_platforms_that_can_write_first(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    telegram, slack = PlatformThatWritesFirst(), PlatformThatOnlyAnswers()
    async with make_engine() as engine, contextlib.AsyncExitStack() as stack:
        app = app_for(engine, tmp_path, checkin_tick_s=5, checkin_grace_minutes=10, checkin_max_per_tick=3)
        scheduler = await start_checkins(app, stack, {"discord": None, "telegram": telegram, "slack": slack})
        assert scheduler is not None and scheduler.running and telegram.checkins is scheduler
        assert list(scheduler.messengers) == ["telegram"]
        assert (scheduler.tick_s, scheduler.grace.total_seconds(), scheduler.max_per_tick) == (5, 600, 3)
        assert app.choices["checkins"] == "on (telegram)"
        await stack.aclose()  # the stack owns the scheduler's shutdown
        assert not scheduler.running


async def test_not_started_when_turned_off_or_no_platform_can_write_first(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    telegram = PlatformThatWritesFirst()
    async with make_engine() as engine, contextlib.AsyncExitStack() as stack:
        off = app_for(engine, tmp_path, checkins_enabled=False)
        assert await start_checkins(off, stack, {"telegram": telegram}) is None
        assert telegram.checkins is None and "checkins" not in off.choices
        on = app_for(engine, tmp_path)
        assert await start_checkins(on, stack, {"slack": PlatformThatOnlyAnswers(), "discord": None}) is None


async def test_a_grace_window_shorter_than_two_ticks_is_a_config_error(
    make_engine: MakeEngine, tmp_path: Path
) -> None:
    async with make_engine() as engine, contextlib.AsyncExitStack() as stack:
        app = app_for(engine, tmp_path, checkin_tick_s=600, checkin_grace_minutes=15)
        with pytest.raises(ConfigError, match="CHECKIN_GRACE_MINUTES"):
            await start_checkins(app, stack, {"telegram": PlatformThatWritesFirst()})
