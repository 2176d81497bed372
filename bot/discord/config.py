"""The Discord adapter's options, read from :class:`config.settings.Settings`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import ConfigError

from .settings import ThreadMode

if TYPE_CHECKING:
    from config.settings import Settings

DEFAULT_API_BASE = "https://discord.com/api/v10"
DISCORD_LIMIT = 2000
"""Longest message Discord accepts, in characters."""


@dataclass(frozen=True, slots=True)
class DiscordConfig:
    token: str
    api_base_url: str = DEFAULT_API_BASE
    gateway_url: str | None = None
    guild_ids: tuple[int, ...] = ()
    shard_count: int | None = None
    shard_ids: tuple[int, ...] = ()
    ignore_bots: bool = True
    admin_role: str | None = None
    thread_mode: ThreadMode = ThreadMode.OFF
    edit_interval_s: float = 1.0
    sync_commands: bool = True
    max_message_chars: int = 8000
    max_audio_bytes: int = 25 * 1024 * 1024
    guild_ready_timeout_s: float = 2.0
    shutdown_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.token.strip():
            raise ConfigError("the Discord token is empty", variable="DISCORD_TOKEN")
        if self.shard_ids and self.shard_count is None:
            raise ConfigError(
                "DISCORD_SHARD_IDS needs the total number of shards", variable="DISCORD_SHARD_COUNT"
            )
        if self.shard_count is not None:
            bad = [i for i in self.shard_ids if not 0 <= i < self.shard_count]
            if bad:
                raise ConfigError(
                    f"shard ids {bad} are outside 0..{self.shard_count - 1}", variable="DISCORD_SHARD_IDS"
                )
        if not self.api_base_url.startswith(("http://", "https://")):
            raise ConfigError("the Discord API base URL must be http(s)://…", variable="DISCORD_API_BASE_URL")
        if self.gateway_url is not None and not self.gateway_url.startswith(("ws://", "wss://")):
            raise ConfigError("the Discord gateway URL must be ws(s)://…", variable="DISCORD_GATEWAY_URL")

    @property
    def sharded(self) -> bool:
        return self.shard_count is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> DiscordConfig:
        if settings.discord_token is None:
            raise ConfigError("Discord needs a bot token", variable="DISCORD_TOKEN")
        return cls(
            token=settings.discord_token.get_secret_value(),
            api_base_url=settings.discord_api_base_url.rstrip("/"),
            gateway_url=settings.discord_gateway_url,
            guild_ids=tuple(settings.discord_guild_ids),
            shard_count=settings.discord_shard_count,
            shard_ids=tuple(settings.discord_shard_ids),
            ignore_bots=settings.discord_ignore_bots,
            admin_role=settings.discord_admin_role,
            thread_mode=ThreadMode(settings.discord_thread_mode),
            edit_interval_s=settings.discord_edit_interval_s,
            sync_commands=settings.discord_sync_commands,
            max_message_chars=settings.max_message_chars,
        )
