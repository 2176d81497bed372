"""Discord: the real discord.py client in front of the engine.

``start_discord(app, stack)`` is what ``whisperengine run`` calls: when ``DISCORD_TOKEN``
is set it logs in, registers the slash commands, connects to the gateway in the
background, and registers the disconnect on ``stack``. ``stt`` transcribes voice messages;
``tts`` speaks the replies of personas with ``voice_replies``. See ``client.py`` for behaviour.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from engine.ports import SpeechToText, TextToSpeech

if TYPE_CHECKING:
    from bot.app import App

    from .client import DiscordAdapter


async def start_discord(
    app: App,
    stack: contextlib.AsyncExitStack,
    *,
    stt: SpeechToText | None = None,
    tts: TextToSpeech | None = None,
) -> DiscordAdapter | None:
    """Start the Discord adapter when a token is configured; None otherwise."""
    if app.settings.discord_token is None:
        return None
    from adapters.guard import platform_guard

    from .client import DiscordAdapter
    from .config import DiscordConfig

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


__all__ = ["start_discord"]
