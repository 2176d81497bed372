"""Starting Discord from ``whisperengine run``: token handling, command sync per server, settings."""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.discord.config import DiscordConfig
from bot.platforms import start_discord
from engine.errors import ConfigError
from tests.fakes.discord_server import FakeDiscord, running_whisperengine
from tests.fakes.llm_server import FakeLLMServer


async def test_guild_sync_token_checks_and_no_token(tmp_path: Path) -> None:
    async with FakeDiscord() as fake, FakeLLMServer(reply="Synced here.") as llm:
        guild = fake.add_guild()
        channel = fake.add_channel(guild, "dev")
        alice = fake.add_user("alice")
        fake.add_member(guild, alice)
        async with running_whisperengine(
            fake, llm.openai_base_url, tmp_path, discord_guild_ids=str(guild.id)
        ) as (app, _adapter):
            # DISCORD_GUILD_IDS: the commands go to that server only, and work there.
            assert fake.global_commands == []
            assert {c["name"] for c in fake.guild_commands[guild.id]} >= {"persona", "memory", "status"}
            interaction = await fake.send_command("persona", "show", user=alice, channel_id=channel)
            [shown] = await fake.wait_interaction(interaction)
            assert "**ember**" in shown["data"]["content"]

            async with contextlib.AsyncExitStack() as stack:
                no_token = dataclasses.replace(
                    app, settings=app.settings.model_copy(update={"discord_token": None})
                )
                assert await start_discord(no_token, stack) is None

                wrong = SecretStr("not-the-token")
                bad = dataclasses.replace(
                    app, settings=app.settings.model_copy(update={"discord_token": wrong})
                )
                with pytest.raises(ConfigError) as raised:
                    await start_discord(bad, stack)
                assert raised.value.variable == "DISCORD_TOKEN"
                assert "not-the-token" not in str(raised.value)


@pytest.mark.parametrize(
    ("options", "variable"),
    [
        ({"token": "  "}, "DISCORD_TOKEN"),
        ({"shard_ids": (1,)}, "DISCORD_SHARD_COUNT"),
        ({"shard_count": 2, "shard_ids": (2,)}, "DISCORD_SHARD_IDS"),
        ({"api_base_url": "discord.com/api"}, "DISCORD_API_BASE_URL"),
        ({"gateway_url": "http://gateway"}, "DISCORD_GATEWAY_URL"),
    ],
)
def test_invalid_discord_settings_name_the_variable(options: dict[str, object], variable: str) -> None:
    values: dict[str, object] = {"token": "t", **options}
    with pytest.raises(ConfigError) as raised:
        DiscordConfig(**values)  # type: ignore[arg-type]
    assert raised.value.variable == variable
