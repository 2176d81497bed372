"""Slack: slack-bolt (async) in front of the engine.

``start_slack(app, stack)`` is what ``whisperengine run`` calls: when ``SLACK_BOT_TOKEN``
is set it checks the token, then connects over Socket Mode (``SLACK_APP_TOKEN`` set) or
serves the HTTP Events API, and registers the shutdown on ``stack``. See ``adapter.py``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.app import App

    from .adapter import SlackAdapter


async def start_slack(app: App, stack: contextlib.AsyncExitStack) -> SlackAdapter | None:
    """Start the Slack adapter when a bot token is configured; None otherwise."""
    if app.settings.slack_bot_token is None:
        return None
    from adapters.guard import platform_guard

    from .adapter import SlackAdapter
    from .config import SlackConfig

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


__all__ = ["start_slack"]
