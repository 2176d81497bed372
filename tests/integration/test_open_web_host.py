"""The REST API and the console are never open to the network without a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.app import build_app
from config.settings import Settings
from engine.errors import ConfigError


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "bot.example.org"])
async def test_a_web_host_beyond_loopback_without_a_token_stops_the_start(tmp_path: Path, host: str) -> None:
    settings = Settings(_env_file=None, data_dir=tmp_path, web_enabled=True, web_host=host, api_token=None)
    with pytest.raises(ConfigError) as refused:
        async with build_app(settings):
            pytest.fail("the bot started with its API open to the network")
    assert refused.value.variable == "API_TOKEN"
    assert not any(tmp_path.iterdir())  # noqa: ASYNC240 (refused before anything was made)
