"""Admin commands are permission-checked on every platform that has them.

Discord: every command that changes a channel's or server's behaviour carries the
admin check, and a member without Manage Server (or the admin role) changes nothing.
Telegram: in groups, only chat admins may set or reset the persona. Slack has no
commands at all (see tests/fuzz/test_fuzz_slack_events.py for a slash command refused).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
import pytest_asyncio
from discord import app_commands

from adapters.telegram.adapter import ADMINS_ONLY
from bot.discord.commands import WhisperCommandTree
from bot.discord.settings import MODE_KEY, RATE_LIMIT_KEY, THREAD_MODE_KEY
from engine.persona import PERSONA_SETTING, channel_scope
from tests.fakes.discord_server import FakeDiscord, running_whisperengine
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegram, running_telegram

pytestmark = pytest.mark.asyncio(loop_scope="module")

# The commands that change how the bot behaves for others: admins only.
ADMIN_COMMANDS = {
    "persona set",
    "persona import",
    "channel mode",
    "config show",
    "config thread-mode",
    "config rate-limit",
}


def has_admin_check(command: app_commands.Command[..., ..., ...]) -> bool:
    return any(check.__qualname__.startswith("admin_only.") for check in command.checks)


async def test_exactly_the_admin_commands_carry_the_admin_check() -> None:
    client = discord.Client(intents=discord.Intents.none())
    try:
        tree = WhisperCommandTree(client)
        commands = [c for c in tree.walk_commands() if isinstance(c, app_commands.Command)]
        checked = {c.qualified_name for c in commands if has_admin_check(c)}
    finally:
        await client.close()
    assert checked == ADMIN_COMMANDS


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def discord_world(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[FakeDiscord, object]]:
    async with FakeDiscord() as fake, FakeLLMServer(reply="ok") as llm:
        fake.add_guild()
        data_dir: Path = tmp_path_factory.mktemp("admin-discord")
        async with running_whisperengine(fake, llm.openai_base_url, data_dir) as (app, _):
            yield fake, app


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (("persona", "set"), {"name": "sage"}),
        (("channel", "mode"), {"mode": "off"}),
        (("config", "thread-mode"), {"mode": "always"}),
        (("config", "rate-limit"), {"messages": 1, "window_seconds": 60}),
        (("config", "show"), {}),
    ],
)
async def test_a_member_without_rights_changes_nothing_on_discord(
    discord_world: tuple[FakeDiscord, object], command: tuple[str, str], options: dict[str, object]
) -> None:
    fake, app = discord_world
    guild = next(iter(fake.guilds.values()))
    channel = await fake.create_channel(guild, f"no-rights-{'-'.join(command)}")
    member = fake.add_user("member")
    fake.add_member(guild, member)
    interaction = await fake.send_command(*command, user=member, channel_id=channel, **options)
    [refused] = await fake.wait_interaction(interaction)
    assert "Manage Server" in refused["data"]["content"]
    assert refused["data"]["flags"] & 64  # only the member sees it
    store = app.store  # type: ignore[attr-defined]
    for scope in (f"channel:discord:{channel}", f"guild:discord:{guild.id}"):
        for key in (PERSONA_SETTING, MODE_KEY, THREAD_MODE_KEY, RATE_LIMIT_KEY):
            assert await store.get_setting(scope, key) is None


async def test_only_telegram_group_admins_set_or_reset_the_persona(tmp_path: Path) -> None:
    async with (
        FakeTelegram() as tg,
        FakeLLMServer(reply="ok") as llm,
        running_telegram(tg, llm.openai_base_url, tmp_path) as (app, _),
    ):
        admin, member = tg.user("Ada"), tg.user("Max")
        group = tg.group_chat("Club", admins=(admin,))
        scope = channel_scope("telegram", str(group["id"]))

        tg.send_text(group, member, "/persona set sage")
        await tg.wait_for(lambda: tg.bot_texts(group) == [ADMINS_ONLY])
        assert await app.store.get_setting(scope, PERSONA_SETTING) is None

        tg.send_text(group, admin, "/persona set sage")
        await tg.wait_for(lambda: len(tg.bot_texts(group)) == 2)
        chosen = await app.store.get_setting(scope, PERSONA_SETTING)
        assert chosen is not None

        tg.send_text(group, member, "/persona reset")
        await tg.wait_for(lambda: len(tg.bot_texts(group)) == 3)
        assert tg.bot_texts(group)[2] == ADMINS_ONLY
        assert await app.store.get_setting(scope, PERSONA_SETTING) == chosen

        private = tg.private_chat(member)  # in a private chat the user decides
        tg.send_text(private, member, "/persona set sage")
        await tg.wait_for(lambda: len(tg.bot_texts(private)) == 1)
        assert tg.bot_texts(private)[0] != ADMINS_ONLY
