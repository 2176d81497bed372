"""What the slash commands need of the Discord adapter: :class:`CommandHost`.

The commands (``commands.py``, ``checkin_commands.py``) reach the adapter through the client
of the interaction; they see it through this Protocol, so they never import ``client.py``
(which imports them to build its command tree).
"""

from __future__ import annotations

from typing import Protocol

import discord

from engine.checkins import CheckinScheduler
from engine.pipeline import Engine
from engine.ports import ConversationStore, VectorMemory

from .config import DiscordConfig
from .settings import DiscordSettings
from .translate import PLATFORM


class CommandHost(Protocol):
    engine: Engine
    store: ConversationStore
    vectors: VectorMemory
    settings: DiscordSettings
    config: DiscordConfig
    checkins: CheckinScheduler | None

    async def status_text(self) -> str: ...


def command_host(interaction: discord.Interaction) -> CommandHost:
    """The adapter whose client received ``interaction``."""
    return interaction.client.adapter  # type: ignore[attr-defined, no-any-return]


def account_key(interaction: discord.Interaction) -> str:
    """The user_key of the Discord account that used the command (before /link resolves it)."""
    return f"{PLATFORM}:{interaction.user.id}"


async def identity(interaction: discord.Interaction) -> str:
    """The user's identity: the same for every account they linked with ``/link``."""
    return await command_host(interaction).engine.resolve_user_key(account_key(interaction))
