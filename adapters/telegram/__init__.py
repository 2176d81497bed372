"""Telegram: python-telegram-bot in front of the engine.

``start_telegram(app, stack)`` is what ``whisperengine run`` calls: when ``TELEGRAM_TOKEN``
is set it logs in, starts long polling (or the webhook route when ``TELEGRAM_WEBHOOK_URL``
is set) and registers the shutdown on ``stack``. See ``adapter.py`` for behaviour.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from engine.ports import SpeechToText, TextToSpeech

if TYPE_CHECKING:
    from bot.app import App

    from .adapter import TelegramAdapter, VoiceEncoder


async def start_telegram(
    app: App,
    stack: contextlib.AsyncExitStack,
    *,
    stt: SpeechToText | None = None,
    tts: TextToSpeech | None = None,
    voice_encoder: VoiceEncoder | None = None,
) -> TelegramAdapter | None:
    """Start the Telegram adapter when a token is configured; None otherwise."""
    if app.settings.telegram_token is None:
        return None
    from adapters.guard import platform_guard

    from .adapter import TelegramAdapter
    from .config import TelegramConfig

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


__all__ = ["start_telegram"]
