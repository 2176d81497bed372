"""Starting the Telegram and Slack adapters for ``whisperengine run``: what each adapter needs is
taken from the :class:`bot.app.App` here, so ``adapters/`` never reaches back into the process.
(Discord's counterpart is ``bot.discord.start_discord``.)"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from adapters.guard import platform_guard
from engine.ports import SpeechToText, TextToSpeech

if TYPE_CHECKING:
    from adapters.slack.adapter import SlackAdapter
    from adapters.telegram.adapter import TelegramAdapter, VoiceEncoder
    from bot.app import App


async def start_telegram(
    app: App,
    stack: contextlib.AsyncExitStack,
    *,
    stt: SpeechToText | None = None,
    tts: TextToSpeech | None = None,
    voice_encoder: VoiceEncoder | None = None,
) -> TelegramAdapter | None:
    """Log in and start polling (or the webhook route) when ``TELEGRAM_TOKEN`` is set; the
    shutdown goes on ``stack``. None when no token is configured."""
    if app.settings.telegram_token is None:
        return None
    from adapters.telegram.adapter import TelegramAdapter
    from adapters.telegram.config import TelegramConfig

    adapter = TelegramAdapter(
        app.engine,
        TelegramConfig.from_settings(app.settings),
        stt=stt,
        tts=tts,
        voice_encoder=voice_encoder,
        guard=platform_guard(
            "telegram", app.settings, service="Telegram Bot API", variable="TELEGRAM_API_BASE_URL"
        ),
    )
    await adapter.start()
    stack.push_async_callback(adapter.aclose)
    app.reporters["telegram"] = adapter.guard.health
    return adapter


async def start_slack(app: App, stack: contextlib.AsyncExitStack) -> SlackAdapter | None:
    """Check the token, then connect over Socket Mode (``SLACK_APP_TOKEN`` set) or serve the
    HTTP Events API, when ``SLACK_BOT_TOKEN`` is set; the shutdown goes on ``stack``. None when
    no token is configured."""
    if app.settings.slack_bot_token is None:
        return None
    from adapters.slack.adapter import SlackAdapter
    from adapters.slack.config import SlackConfig

    adapter = SlackAdapter(
        app.engine,
        SlackConfig.from_settings(app.settings),
        cache=app.cache,
        guard=platform_guard("slack", app.settings, service="Slack Web API", variable="SLACK_API_BASE_URL"),
    )
    await adapter.start()
    stack.push_async_callback(adapter.aclose)
    app.reporters["slack"] = adapter.guard.health
    return adapter
