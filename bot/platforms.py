"""Starting the platform adapters for ``whisperengine run``: what each adapter needs is taken
from the :class:`bot.app.App` here, so ``adapters/`` never reaches back into the process."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from adapters.guard import platform_guard
from engine.ports import SpeechToText, TextToSpeech

if TYPE_CHECKING:
    from adapters.slack.adapter import SlackAdapter
    from adapters.telegram.adapter import TelegramAdapter, VoiceEncoder
    from bot.app import App
    from bot.discord.client import DiscordAdapter


async def start_discord(
    app: App,
    stack: contextlib.AsyncExitStack,
    *,
    stt: SpeechToText | None = None,
    tts: TextToSpeech | None = None,
) -> DiscordAdapter | None:
    """Log in, register the slash commands and connect to the gateway in the background when
    ``DISCORD_TOKEN`` is set; the disconnect goes on ``stack``. ``stt`` transcribes voice
    messages; ``tts`` speaks the replies of personas with ``voice_replies``. None when no token
    is configured."""
    if app.settings.discord_token is None:
        return None
    from bot.discord.client import DiscordAdapter
    from bot.discord.config import DiscordConfig

    adapter = DiscordAdapter(
        app.engine,
        DiscordConfig.from_settings(app.settings),
        store=app.store,
        vectors=app.vectors,
        health=app.health,
        choices=app.choices,
        stt=stt,
        tts=tts,
        guard=platform_guard("discord", app.settings, service="Discord API", variable="DISCORD_API_BASE_URL"),
    )
    await adapter.start()
    stack.push_async_callback(adapter.aclose)
    app.reporters["discord"] = adapter.guard.health
    return adapter


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
