"""Slash commands through the real discord.py CommandTree: the fake gateway dispatches
INTERACTION_CREATE, the fake REST API records the callbacks and follow-ups.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from bot.discord.client import DiscordAdapter
from bot.discord.settings import ChannelMode, GuildRateLimit, ThreadMode
from tests.fakes.discord_server import MANAGE_GUILD, FakeDiscord, Guild, Json, running_whisperengine
from tests.fakes.llm_server import FakeLLMServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

EPHEMERAL = 64
ADMIN_ROLE = "Bot Admins"


@dataclass
class World:
    fake: FakeDiscord
    llm: FakeLLMServer
    app: Any
    adapter: DiscordAdapter
    guild: Guild
    admin_role: Json
    users: list[Json] = field(default_factory=list)

    def user(self, name: str, *, role_admin: bool = False) -> Json:
        user = self.fake.add_user(f"{name}{len(self.users)}")
        self.fake.add_member(self.guild, user, [self.admin_role] if role_admin else [])
        self.users.append(user)
        return user

    async def channel(self, name: str) -> str:
        return await self.fake.create_channel(self.guild, name)

    async def command(
        self, command: str, /, *sub: str, user: Json, channel: str, n: int = 1, **options: Any
    ) -> list[Json]:
        interaction = await self.fake.send_command(command, *sub, user=user, channel_id=channel, **options)
        return await self.fake.wait_interaction(interaction, n)

    async def admin_command(
        self, command: str, /, *sub: str, user: Json, channel: str, **options: Any
    ) -> list[Json]:
        interaction = await self.fake.send_command(
            command, *sub, user=user, channel_id=channel, permissions=MANAGE_GUILD, **options
        )
        return await self.fake.wait_interaction(interaction)

    async def chat(self, channel: str, user: Json, text: str) -> Json:
        sent = await self.fake.send_message(channel, user, text, mention_bot=True)
        return await self.fake.wait_for_reply(sent["id"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with FakeDiscord() as fake, FakeLLMServer(reply="Noted!") as llm:
        guild = fake.add_guild()
        admin_role = fake.add_role(guild, ADMIN_ROLE)
        data_dir: Path = tmp_path_factory.mktemp("discord-commands")
        async with running_whisperengine(
            fake, llm.openai_base_url, data_dir, discord_admin_role=ADMIN_ROLE, memory_min_similarity=-1.0
        ) as (app, adapter):
            yield World(fake, llm, app, adapter, guild, admin_role)


def content(response: Json) -> str:
    return str(response["data"].get("content") or "")


def is_ephemeral(response: Json) -> bool:
    return bool(int(response["data"].get("flags") or 0) & EPHEMERAL)


def buttons(response: Json) -> dict[str, str]:
    found = {}
    for row in response["data"].get("components") or []:
        for item in row.get("components") or []:
            found[item["label"]] = item["custom_id"]
    return found


async def test_commands_are_synced_on_start(world: World) -> None:
    names = {c["name"] for c in world.fake.global_commands}
    assert names == {"persona", "memory", "privacy", "channel", "status", "config", "link", "checkin"}
    memory = next(c for c in world.fake.global_commands if c["name"] == "memory")
    assert {o["name"] for o in memory["options"]} == {"show", "forget", "export"}


# --- /persona ---------------------------------------------------------------------------------


async def test_persona_list_and_show_are_ephemeral(world: World) -> None:
    channel = await world.channel("persona-show")
    user = world.user("pat")
    [listed] = await world.command("persona", "list", user=user, channel=channel)
    assert is_ephemeral(listed)
    assert "**ember** (default)" in content(listed) and "**sage**" in content(listed)
    [shown] = await world.command("persona", "show", user=user, channel=channel)
    assert is_ephemeral(shown) and "**ember**" in content(shown)


async def test_persona_set_needs_an_admin_and_changes_the_prompt(world: World) -> None:
    channel = await world.channel("persona-set")
    user, admin, role_admin = (
        world.user("user"),
        world.user("admin"),
        world.user("roleadmin", role_admin=True),
    )

    [refused] = await world.command("persona", "set", user=user, channel=channel, name="sage")
    assert is_ephemeral(refused) and "Manage Server" in content(refused) and ADMIN_ROLE in content(refused)

    [done] = await world.admin_command("persona", "set", user=admin, channel=channel, name="sage")
    assert not is_ephemeral(done) and "**sage**" in content(done)
    await world.chat(channel, user, "who are you now?")
    prompt = world.llm.requests[-1].messages
    assert prompt[0]["content"].startswith("You are Sage")

    [by_role] = await world.command("persona", "set", user=role_admin, channel=channel, name="ember")
    assert "**ember**" in content(by_role)


async def test_persona_set_unknown_name_is_an_ephemeral_error(world: World) -> None:
    channel = await world.channel("persona-bad")
    admin = world.user("admin")
    [error] = await world.admin_command("persona", "set", user=admin, channel=channel, name="nobody")
    assert is_ephemeral(error)
    assert "unknown persona 'nobody'" in content(error) and "sage" in content(error)


# --- /memory and /privacy ---------------------------------------------------------------------


async def remember(world: World, channel: str, user: Json, *facts: str) -> None:
    for fact in facts:
        await world.chat(channel, user, fact)
    await world.app.engine.writer.drain()


async def test_memory_show_lists_only_your_own_memories(world: World) -> None:
    channel = await world.channel("memory-show")
    quinn, rita = world.user("quinn"), world.user("rita")
    await remember(world, channel, quinn, "my favourite colour is teal green")
    await remember(world, channel, rita, "my cat is called Pebbles the Great")

    [shown] = await world.command("memory", "show", user=quinn, channel=channel)
    assert is_ephemeral(shown)
    assert "teal green" in content(shown) and "Pebbles" not in content(shown)
    assert content(shown).startswith("I remember 1 thing about you")

    stranger = world.user("stranger")
    [empty] = await world.command("memory", "show", user=stranger, channel=channel)
    assert "don't remember anything" in content(empty)


async def test_memory_show_includes_the_relationship_profile(world: World) -> None:
    channel = await world.channel("memory-profile")
    vera, walt = world.user("vera"), world.user("walt")
    await remember(world, channel, vera, "I am so happy today, please call me Vee", "what a wonderful day")
    await remember(world, channel, walt, "hello there, call me Dubya")
    await world.app.engine.relationships.drain()

    [shown] = await world.command("memory", "show", user=vera, channel=channel)
    assert is_ephemeral(shown)
    text = content(shown)
    assert text.startswith("I remember 2 things about you")
    about = text.split("\n\n")[-1]
    assert about.startswith("About us: we are **new** · 2 messages since ")
    assert "I call you **Vee**" in about and "Dubya" not in text
    # two cheerful messages are not a trend yet; a third is
    await remember(world, channel, vera, "yay, I am thrilled and excited")
    await world.app.engine.relationships.drain()
    [shown] = await world.command("memory", "show", user=vera, channel=channel)
    assert "3 messages" in content(shown) and "· mostly cheerful lately" in content(shown)

    stranger = world.user("newcomer")
    [empty] = await world.command("memory", "show", user=stranger, channel=channel)
    assert content(empty) == "I don't remember anything about you yet."


async def test_memory_export_sends_your_data_as_a_json_file(world: World) -> None:
    channel = await world.channel("memory-export")
    sam, tom = world.user("sam"), world.user("tom")
    await remember(world, channel, sam, "I work as a lighthouse keeper now")
    await remember(world, channel, tom, "I collect antique typewriters")

    callback, followup = await world.command("memory", "export", user=sam, channel=channel, n=2)
    assert callback["type"] == 5 and is_ephemeral(callback)
    assert is_ephemeral(followup)
    [(filename, raw)] = followup["files"]
    assert filename == f"whisperengine-{sam['id']}.json"
    data = json.loads(raw)
    assert data["user_key"] == f"discord:{sam['id']}"
    assert any("lighthouse keeper" in m["text"] for m in data["memories"])
    texts = [m["content"] for m in data["messages"]]
    assert "I work as a lighthouse keeper now" in texts and "Noted!" in texts
    assert not any("typewriters" in json.dumps(x) for x in (data["memories"], data["messages"]))
    assert data["relationship"]["interactions"] == 1 and data["relationship"]["stage"] == "new"


async def test_memory_forget_asks_with_buttons_and_only_you_can_confirm(world: World) -> None:
    store, recall = world.app.store, world.app.engine.recall
    channel = await world.channel("memory-forget")
    uma, vic = world.user("uma"), world.user("vic")
    await remember(world, channel, uma, "I am allergic to peanuts and shellfish")
    key = f"discord:{uma['id']}"
    assert await store.count_memories(key) == 1

    [question] = await world.command("memory", "forget", user=uma, channel=channel)
    assert is_ephemeral(question) and "Erase everything I remember" in content(question)
    ids = buttons(question)
    assert set(ids) == {"Erase memories", "Cancel"}

    # Cancel erases nothing.
    cancel = await world.fake.click(question["message_id"], ids["Cancel"], user=uma)
    [cancelled] = await world.fake.wait_interaction(cancel)
    assert cancelled["type"] == 7 and "nothing was erased" in content(cancelled)
    assert await store.count_memories(key) == 1

    [question] = await world.command("memory", "forget", user=uma, channel=channel)
    intruder = await world.fake.click(question["message_id"], ids["Erase memories"], user=vic)
    [refused] = await world.fake.wait_interaction(intruder)
    assert "aren't for you" in content(refused) and is_ephemeral(refused)
    assert await store.count_memories(key) == 1

    confirm = await world.fake.click(question["message_id"], ids["Erase memories"], user=uma)
    [done] = await world.fake.wait_interaction(confirm)
    assert "forgot 1 memory" in content(done)
    assert await store.count_memories(key) == 0
    assert await recall.recall(key, "allergic to peanuts") == []
    # The conversation history stays.
    assert await store.user_messages(key)


async def test_memory_forget_with_confirm_option_and_a_single_memory(world: World) -> None:
    store = world.app.store
    channel = await world.channel("memory-forget-one")
    wes = world.user("wes")
    await remember(world, channel, wes, "my brother lives in Lisbon now", "my sister plays the cello well")
    key = f"discord:{wes['id']}"
    memories = await store.list_memories(key)
    brother = next(m for m in memories if "Lisbon" in m.text)

    [bad] = await world.command(
        "memory", "forget", user=wes, channel=channel, memory_id="zzzzzzzz", confirm=True
    )
    assert is_ephemeral(bad) and "no memory with the code" in content(bad)

    callback, followup = await world.command(
        "memory", "forget", user=wes, channel=channel, n=2, memory_id=brother.id[:8], confirm=True
    )
    assert is_ephemeral(callback) and "forgot 1 memory" in content(followup)
    assert [m.text for m in await store.list_memories(key)] == [
        m.text for m in memories if m.id != brother.id
    ]
    assert all("Lisbon" not in h.text for h in await world.app.engine.recall.recall(key, "brother Lisbon"))


async def test_privacy_forget_me_erases_everything_about_you(world: World) -> None:
    store = world.app.store
    channel = await world.channel("forget-me")
    xena, yuri = world.user("xena"), world.user("yuri")
    await remember(world, channel, xena, "my passport number is secret stuff")
    await remember(world, channel, yuri, "I like long walks on the beach")
    key = f"discord:{xena['id']}"

    callback, followup = await world.command(
        "privacy", "forget-me", user=xena, channel=channel, n=2, confirm=True
    )
    assert is_ephemeral(callback) and "erased your messages" in content(followup)
    assert await store.get_user(key) is None
    assert await store.user_messages(key) == []
    assert await store.count_memories(key) == 0
    assert await store.count_memories(f"discord:{yuri['id']}") == 1


# --- /channel, /config, /status -----------------------------------------------------------------


async def test_channel_mode_is_admin_only_and_off_silences_the_channel(world: World) -> None:
    fake, settings = world.fake, world.adapter.settings
    channel = await world.channel("mode")
    zoe, admin = world.user("zoe"), world.user("admin")

    [refused] = await world.command("channel", "mode", user=zoe, channel=channel, mode="off")
    assert is_ephemeral(refused) and "Manage Server" in content(refused)
    assert await settings.channel_mode(int(channel)) is ChannelMode.MENTION_ONLY

    [done] = await world.admin_command("channel", "mode", user=admin, channel=channel, mode="off")
    assert "**off**" in content(done)
    assert await world.app.store.get_setting(f"channel:discord:{channel}", "mode") == "off"
    [shown] = await world.admin_command("channel", "mode", user=admin, channel=channel)
    assert is_ephemeral(shown) and "**off**" in content(shown)

    ignored = await fake.send_message(channel, zoe, "anyone home?", mention_bot=True)
    other = await world.channel("mode-other")
    await world.chat(other, zoe, "hello elsewhere")
    assert fake.replies_to(ignored["id"]) == []

    await world.admin_command("channel", "mode", user=admin, channel=channel, mode="always")
    sent = await fake.send_message(channel, zoe, "no mention needed now")
    await fake.wait_for_reply(sent["id"])


async def test_config_commands_are_per_server_and_validated(world: World) -> None:
    settings = world.adapter.settings
    guild_id = int(world.guild.id)
    channel = await world.channel("config")
    amy, admin = world.user("amy"), world.user("admin")

    [refused] = await world.command("config", "show", user=amy, channel=channel)
    assert is_ephemeral(refused) and "Manage Server" in content(refused)

    [done] = await world.admin_command("config", "thread-mode", user=admin, channel=channel, mode="auto")
    assert is_ephemeral(done) and "**auto**" in content(done)
    [done] = await world.admin_command(
        "config", "rate-limit", user=admin, channel=channel, messages=5, window_seconds=120
    )
    assert "5 messages per 120s" in content(done)
    config = await settings.guild_config(guild_id)
    assert config.thread_mode is ThreadMode.AUTO and config.rate_limit == GuildRateLimit(5, 120.0)

    [shown] = await world.admin_command("config", "show", user=admin, channel=channel)
    assert "Thread mode: **auto**" in content(shown) and "**5** messages per 120s" in content(shown)

    [invalid] = await world.admin_command("config", "rate-limit", user=admin, channel=channel, messages=-5)
    assert is_ephemeral(invalid) and ("-5" in content(invalid) or "between 0 and 1000" in content(invalid))

    await world.admin_command("config", "thread-mode", user=admin, channel=channel, mode="default")
    await world.admin_command("config", "rate-limit", user=admin, channel=channel, messages=0)
    assert await settings.guild_config(guild_id) == type(config)()


async def test_status_shows_backends_and_queues(world: World) -> None:
    channel = await world.channel("status")
    user = world.user("bea")
    callback, followup = await world.command("status", user=user, channel=channel, n=2)
    assert callback["type"] == 5 and is_ephemeral(callback) and is_ephemeral(followup)
    text = content(followup)
    assert text.startswith("**WhisperEngine status:")
    for component in ("store", "cache", "vectors", "llm"):
        assert f"`{component:<8}` **ok**" in text
    assert "Memory writes queued: " in text and "gateway latency" in text and "Degraded: none" in text


async def test_status_reports_a_degraded_llm(world: World) -> None:
    channel = await world.channel("status-down")
    user = world.user("cid")
    await world.llm.down()
    try:
        _, followup = await world.command("status", user=user, channel=channel, n=2)
    finally:
        await world.llm.up()
    text = content(followup)
    assert "`llm     ` **down**" in text and "Degraded: llm" in text


# --- /link ------------------------------------------------------------------------------------


async def test_link_gives_an_ephemeral_code_and_links_two_accounts(world: World) -> None:
    channel = await world.channel("link")
    first, second = world.user("lin"), world.user("lou")
    await world.chat(channel, second, "my kayak is bright orange and called Zest")
    await world.app.engine.writer.drain()

    [shown] = await world.command("link", user=first, channel=channel)
    assert is_ephemeral(shown) and "expires in 10 minutes" in content(shown)
    code = content(shown).split("**")[1]
    callback, done = await world.command("link", user=second, channel=channel, n=2, code=code)
    assert callback["type"] == 5 and is_ephemeral(callback) and is_ephemeral(done)
    assert content(done).startswith("Linked:")

    [memories] = await world.command("memory", "show", user=first, channel=channel)
    assert is_ephemeral(memories) and "kayak is bright orange" in content(memories)

    _, exported = await world.command("memory", "export", user=second, channel=channel, n=2)
    [(_, raw)] = exported["files"]
    data = json.loads(raw)
    assert data["user_key"] == f"discord:{first['id']}"
    assert data["linked_accounts"] == [f"discord:{second['id']}"]
    assert any("kayak is bright orange" in m["text"] for m in data["memories"])

    _, erased = await world.command("privacy", "forget-me", user=first, channel=channel, n=2, confirm=True)
    assert "erased" in content(erased)
    for account in (f"discord:{first['id']}", f"discord:{second['id']}"):
        assert await world.app.store.get_user(account) is None
        assert await world.app.engine.resolve_user_key(account) == account
    assert await world.app.store.count_memories(f"discord:{first['id']}") == 0


async def test_link_refusals_are_ephemeral_errors(world: World) -> None:
    channel = await world.channel("link-refused")
    user = world.user("rue")
    _, unknown = await world.command("link", user=user, channel=channel, n=2, code="ABCD2345")
    assert is_ephemeral(unknown) and "unknown or has expired" in content(unknown)
    _, malformed = await world.command("link", user=user, channel=channel, n=2, code="nope")
    assert is_ephemeral(malformed) and "doesn't look like a link code" in content(malformed)
