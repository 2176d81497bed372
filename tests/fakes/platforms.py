"""``whisperengine run`` against the fake platforms: ``build_app`` + ``start_platforms``.

Usage::

    async with FakeDiscord() as dc, FakeTelegram() as tg, FakeSlack() as slack, FakeLLMServer() as llm:
        async with running_platforms(llm.openai_base_url, tmp_path, discord=dc, telegram=tg, slack=slack) as (
            app,
            started,
        ):
            ...

Each fake given is configured through its own ``*_settings`` helper (Slack in Socket Mode, so
no port needs finding) and waited for: Discord until the gateway connection is identified,
Slack until its socket is open (Telegram polls as soon as it is started). Speech engines are
off unless ``settings`` turn them on (``stt_backend``, ``tts_backends``), to keep start-up fast.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.fakes.discord_server import FakeDiscord, discord_settings
from tests.fakes.slack_server import FakeSlack, slack_settings
from tests.fakes.telegram_server import FakeTelegram, llm_settings, telegram_settings


@contextlib.asynccontextmanager
async def running_platforms(
    llm_base_url: str,
    data_dir: Path,
    *,
    discord: FakeDiscord | None = None,
    telegram: FakeTelegram | None = None,
    slack: FakeSlack | None = None,
    **settings: Any,
) -> AsyncIterator[tuple[Any, list[str]]]:
    """Yields ``(app, started platform names)`` once every given platform is connected.

    ``settings`` override the Settings fields (e.g. ``web_enabled=True, web_port=0``).
    """
    from bot.app import build_app, start_platforms
    from config.settings import Settings

    values: dict[str, Any] = {
        **llm_settings(llm_base_url, data_dir),
        "stt_backend": "off",
        "tts_backends": ["off"],
    }
    if discord is not None:
        values |= discord_settings(discord)
    if telegram is not None:
        values |= telegram_settings(telegram)
    if slack is not None:
        values |= slack_settings(slack, socket_mode=True)
    config = Settings(_env_file=None, **(values | settings))  # type: ignore[call-arg]
    async with build_app(config) as app, contextlib.AsyncExitStack() as stack:
        started = await start_platforms(app, stack)
        if discord is not None:
            await discord.wait_connected()
        if slack is not None:
            await slack.wait_for(lambda: bool(slack.sockets))
        yield app, started
