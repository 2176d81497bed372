"""Per-channel and per-server choices made with slash commands, kept in the conversation store.

    channel:discord:<id>  mode         "mention-only" | "always" | "off"
    guild:discord:<id>    thread_mode  "off" | "auto" | "always"
    guild:discord:<id>    rate_limit   {"messages": int, "window_s": float}

They are read on every message, so reads go through a small in-process memo (like the
persona choice); a change made through this object is visible at once, a change made by
another process within ``memo_ttl_s``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from engine.memo import SettingsMemo
from engine.persona import channel_scope, guild_scope
from engine.ports import ConversationStore

PLATFORM = "discord"
MODE_KEY = "mode"
THREAD_MODE_KEY = "thread_mode"
RATE_LIMIT_KEY = "rate_limit"


class ChannelMode(enum.StrEnum):
    MENTION_ONLY = "mention-only"
    """Answer mentions, replies to the bot and DMs (the default)."""
    ALWAYS = "always"
    """Answer every message."""
    OFF = "off"
    """Ignore the channel entirely (slash commands still work)."""


class ThreadMode(enum.StrEnum):
    OFF = "off"
    """Answer in the channel."""
    AUTO = "auto"
    """Answer in the channel; a reply that needs several messages continues in a thread."""
    ALWAYS = "always"
    """Open a thread from the user's message and answer there."""


@dataclass(frozen=True, slots=True)
class GuildRateLimit:
    messages: int
    window_s: float


@dataclass(frozen=True, slots=True)
class GuildConfig:
    thread_mode: ThreadMode | None = None
    rate_limit: GuildRateLimit | None = None


class DiscordSettings:
    def __init__(self, store: ConversationStore, *, memo_ttl_s: float = 30.0) -> None:
        self._store = store
        self._memo: SettingsMemo[tuple[str, str], Any] = SettingsMemo(ttl_s=memo_ttl_s)

    async def _get(self, scope: str, key: str) -> Any:
        return await self._memo.get((scope, key), lambda: self._store.get_setting(scope, key))

    async def _set(self, scope: str, key: str, value: Any) -> None:
        if value is None:
            await self._store.delete_setting(scope, key)
        else:
            await self._store.set_setting(scope, key, value)
        self._memo.put((scope, key), value)

    # --- channels ---------------------------------------------------------------------------

    async def own_channel_mode(self, channel_id: int) -> ChannelMode | None:
        value = await self._get(channel_scope(PLATFORM, str(channel_id)), MODE_KEY)
        try:
            return ChannelMode(value) if isinstance(value, str) else None
        except ValueError:
            return None

    async def channel_mode(self, channel_id: int, parent_id: int | None = None) -> ChannelMode:
        """The channel's mode; a thread without its own mode follows its parent channel."""
        mode = await self.own_channel_mode(channel_id)
        if mode is None and parent_id is not None:
            mode = await self.own_channel_mode(parent_id)
        return mode or ChannelMode.MENTION_ONLY

    async def set_channel_mode(self, channel_id: int, mode: ChannelMode) -> None:
        scope = channel_scope(PLATFORM, str(channel_id))
        await self._set(scope, MODE_KEY, None if mode is ChannelMode.MENTION_ONLY else mode.value)

    # --- servers ----------------------------------------------------------------------------

    async def guild_config(self, guild_id: int) -> GuildConfig:
        scope = guild_scope(PLATFORM, str(guild_id))
        thread_value = await self._get(scope, THREAD_MODE_KEY)
        limit_value = await self._get(scope, RATE_LIMIT_KEY)
        thread_mode = None
        if isinstance(thread_value, str) and thread_value in ThreadMode.__members__.values():
            thread_mode = ThreadMode(thread_value)
        rate_limit = None
        if isinstance(limit_value, dict):
            try:
                rate_limit = GuildRateLimit(int(limit_value["messages"]), float(limit_value["window_s"]))
            except (KeyError, TypeError, ValueError):
                rate_limit = None
        return GuildConfig(thread_mode=thread_mode, rate_limit=rate_limit)

    async def set_thread_mode(self, guild_id: int, mode: ThreadMode | None) -> None:
        await self._set(guild_scope(PLATFORM, str(guild_id)), THREAD_MODE_KEY, mode.value if mode else None)

    async def set_rate_limit(self, guild_id: int, limit: GuildRateLimit | None) -> None:
        value = {"messages": limit.messages, "window_s": limit.window_s} if limit else None
        await self._set(guild_scope(PLATFORM, str(guild_id)), RATE_LIMIT_KEY, value)
