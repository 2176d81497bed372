"""``whisperengine doctor``'s platform checks against the fake Discord, Telegram and Slack: ok
when the API answers and takes the token, down (without the token in the reason) otherwise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from adapters.probe import probe_platforms
from config.settings import Settings
from tests.fakes.discord_server import FakeDiscord, discord_settings
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.slack_server import FakeSlack, slack_settings
from tests.fakes.telegram_server import FakeTelegram, llm_settings, telegram_settings


def settings(tmp_path: Path, **values: Any) -> Settings:
    values = {"data_dir": tmp_path, "platform_timeout_s": 2.0, **values}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def test_every_configured_platform_is_checked(tmp_path: Path) -> None:
    async with FakeDiscord() as discord, FakeTelegram() as telegram, FakeSlack() as slack:
        values = {**discord_settings(discord), **telegram_settings(telegram), **slack_settings(slack)}
        health = await probe_platforms(settings(tmp_path, **values))
        assert {name: h.status for name, h in health.items()} == {
            "discord": "ok",
            "telegram": "ok",
            "slack": "ok",
        }

        telegram.fail_calls(503)
        slack.fail_calls(503)
        health = await probe_platforms(settings(tmp_path, **values))
        assert health["telegram"].status == health["slack"].status == "down"
        assert health["telegram"].detail == "HTTP 503"
        assert health["discord"].status == "ok"


async def test_a_refused_token_is_down_and_never_shown(tmp_path: Path) -> None:
    async with FakeDiscord() as discord, FakeTelegram() as telegram:
        values = {
            **discord_settings(discord),
            **telegram_settings(telegram),
            "discord_token": "wrong-discord-token-123",
            "telegram_token": "123:wrong-telegram-token",
        }
        health = await probe_platforms(settings(tmp_path, **values))
    assert health["discord"].status == health["telegram"].status == "down"
    assert "refused" in health["discord"].detail and "DISCORD_TOKEN" in health["discord"].detail
    assert "TELEGRAM_TOKEN" in health["telegram"].detail
    for item in health.values():
        assert "wrong" not in item.detail


async def test_an_unreachable_platform_is_down(tmp_path: Path) -> None:
    from tests.fakes.private_postgres import free_port

    url = f"http://127.0.0.1:{free_port()}/api/"
    health = await probe_platforms(
        settings(tmp_path, slack_bot_token="xoxb-secret-1", slack_api_base_url=url)
    )
    assert health["slack"].status == "down"
    assert health["slack"].detail.startswith("unreachable: ClientConnectorError")
    assert "xoxb-secret-1" not in health["slack"].detail


async def test_doctor_shows_each_platform(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import doctor

    async with FakeTelegram() as telegram, FakeSlack() as slack, FakeLLMServer() as llm:
        values = {
            **llm_settings(llm.openai_base_url, tmp_path),
            **telegram_settings(telegram),
            **slack_settings(slack),
            "stt_backend": "off",
            "tts_backends": "off",
        }
        telegram.fail_calls(503)
        code = await doctor(settings(tmp_path, **values))
    out = capsys.readouterr().out
    assert code == 1  # a configured platform is down
    assert "  telegram  down — HTTP 503" in out
    assert re.search(r"  slack     ok [0-9.]+ ms — API reachable, token accepted", out), out
