"""The Telegram adapter's settings, taken once from :class:`config.settings.Settings`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from config.settings import Settings
from engine.errors import ConfigError

WEBHOOK_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class TelegramConfig:
    token: str = field(repr=False)
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    webhook_url: str | None = None
    """Public URL given to Telegram; None = long polling."""
    webhook_secret: str = field(default="", repr=False)
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 8443
    edit_interval_s: float = 1.0
    bot_name: str = "WhisperEngine"
    poll_timeout_s: float = 10.0
    voice_max_bytes: int = 20_000_000
    voice_max_seconds: float = 300.0

    @property
    def webhook_path(self) -> str:
        """The route served locally: the path of the public webhook URL."""
        path = urlsplit(self.webhook_url or "").path
        return path if path and path != "/" else "/telegram/webhook"

    @classmethod
    def from_settings(cls, settings: Settings) -> TelegramConfig:
        if settings.telegram_token is None or not settings.telegram_token.get_secret_value():
            raise ConfigError("Telegram needs a bot token", variable="TELEGRAM_TOKEN")
        webhook_url = settings.telegram_webhook_url or None
        if webhook_url is not None and urlsplit(webhook_url).scheme not in ("http", "https"):
            raise ConfigError(
                "the Telegram webhook URL must be an https:// URL", variable="TELEGRAM_WEBHOOK_URL"
            )
        given = settings.telegram_webhook_secret
        secret = given.get_secret_value() if given else secrets.token_urlsafe(WEBHOOK_SECRET_BYTES)
        return cls(
            token=settings.telegram_token.get_secret_value(),
            api_base_url=settings.telegram_api_base_url,
            file_base_url=settings.telegram_file_base_url,
            webhook_url=webhook_url,
            webhook_secret=secret,
            webhook_host=settings.telegram_webhook_host,
            webhook_port=settings.telegram_webhook_port,
            edit_interval_s=settings.telegram_edit_interval_s,
            bot_name=settings.bot_name,
            voice_max_bytes=settings.voice_max_bytes,
            voice_max_seconds=settings.voice_max_seconds,
        )
