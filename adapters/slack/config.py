"""The Slack adapter's settings, taken once from :class:`config.settings.Settings`."""

from __future__ import annotations

from dataclasses import dataclass, field

from config.settings import Settings
from engine.errors import ConfigError


@dataclass(frozen=True, slots=True)
class SlackConfig:
    bot_token: str = field(repr=False)
    signing_secret: str = field(default="", repr=False)
    app_token: str | None = field(default=None, repr=False)
    """Set: Socket Mode. None: the HTTP Events API on ``events_host:events_port/events_path``."""
    api_base_url: str = "https://slack.com/api/"
    events_host: str = "127.0.0.1"
    events_port: int = 3000
    events_path: str = "/slack/events"
    edit_interval_s: float = 1.0

    @property
    def socket_mode(self) -> bool:
        return self.app_token is not None

    @classmethod
    def from_settings(cls, settings: Settings) -> SlackConfig:
        token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else ""
        if not token:
            raise ConfigError("Slack needs a bot token (xoxb-...)", variable="SLACK_BOT_TOKEN")
        app_token = settings.slack_app_token.get_secret_value() if settings.slack_app_token else None
        secret = settings.slack_signing_secret.get_secret_value() if settings.slack_signing_secret else ""
        if not app_token and not secret:
            raise ConfigError(
                "the Slack Events API needs the app's signing secret to verify requests "
                "(or set SLACK_APP_TOKEN for Socket Mode)",
                variable="SLACK_SIGNING_SECRET",
            )
        base = settings.slack_api_base_url
        path = settings.slack_events_path
        return cls(
            bot_token=token,
            signing_secret=secret,
            app_token=app_token or None,
            api_base_url=base if base.endswith("/") else base + "/",
            events_host=settings.slack_events_host,
            events_port=settings.slack_events_port,
            events_path=path if path.startswith("/") else "/" + path,
            edit_interval_s=settings.slack_edit_interval_s,
        )
