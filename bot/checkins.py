"""Check-ins in the running process: the scheduler, started when a platform can write first.

``start_checkins(app, stack, adapters)`` is called by ``start_platforms`` with every platform
adapter it started (None for those it did not). The adapters that are
:class:`engine.ports.DirectMessenger`\\ s (Discord, Telegram) carry the check-ins; the
scheduler is handed to each of them (``adapter.checkins``) for its ``/checkin`` command and is
closed before them (it is pushed on ``stack`` after them). Nothing starts when
``CHECKINS_ENABLED`` is false or no such platform runs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from engine.checkins import CheckinScheduler
from engine.errors import ConfigError
from engine.ports import DirectMessenger

if TYPE_CHECKING:
    from bot.app import App

logger = logging.getLogger(__name__)


@runtime_checkable
class CheckinPlatform(DirectMessenger, Protocol):
    """A platform adapter that sends check-ins and serves the ``/checkin`` command."""

    checkins: CheckinScheduler | None


async def start_checkins(
    app: App, stack: contextlib.AsyncExitStack, adapters: Mapping[str, object | None]
) -> CheckinScheduler | None:
    """Start the check-in scheduler over the platforms that can write first; None when off."""
    settings = app.settings
    messengers = {name: adapter for name, adapter in adapters.items() if isinstance(adapter, CheckinPlatform)}
    if not settings.checkins_enabled or not messengers:
        return None
    if settings.checkin_grace_minutes * 60 < 2 * settings.checkin_tick_s:
        raise ConfigError(
            f"a check-in may be {settings.checkin_grace_minutes:g} minutes late but is looked for only "
            f"every {settings.checkin_tick_s:g} s: most would be skipped; allow at least two ticks",
            variable="CHECKIN_GRACE_MINUTES",
        )
    scheduler = CheckinScheduler(
        app.engine,
        messengers,
        tick_s=settings.checkin_tick_s,
        grace=timedelta(minutes=settings.checkin_grace_minutes),
        max_per_tick=settings.checkin_max_per_tick,
    )
    await scheduler.start()
    stack.push_async_callback(scheduler.aclose)
    for adapter in messengers.values():
        adapter.checkins = scheduler
    app.choices["checkins"] = f"on ({', '.join(sorted(messengers))})"
    return scheduler


__all__ = ["CheckinPlatform", "start_checkins"]
