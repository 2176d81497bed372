"""Sharding: DISCORD_SHARD_COUNT alone runs every shard here; with DISCORD_SHARD_IDS a process
owns only its shards, so several processes can share one bot."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.discord_server import FakeDiscord, Guild, Json, running_whisperengine
from tests.fakes.llm_server import FakeLLMServer


def guilds_on_both_shards(fake: FakeDiscord) -> tuple[Guild, Guild]:
    """One guild on shard 0 and one on shard 1 of 2 (shard = (guild_id >> 22) % 2)."""
    found: dict[int, Guild] = {}
    while len(found) < 2:
        guild = fake.add_guild(f"guild {len(fake.guilds)}")
        found.setdefault((int(guild.id) >> 22) % 2, guild)
    return found[0], found[1]


async def ask(fake: FakeDiscord, guild: Guild, user: Json, text: str) -> Json:
    channel = next(iter(guild.channels))
    return await fake.send_message(channel, user, text, mention_bot=True)


async def test_a_process_answers_only_for_its_own_shards(tmp_path: Path) -> None:
    async with FakeDiscord() as fake, FakeLLMServer(reply="From shard one.") as llm:
        shard0, shard1 = guilds_on_both_shards(fake)
        for guild in (shard0, shard1):
            fake.add_channel(guild, "general")
        alice = fake.add_user("alice")
        async with running_whisperengine(
            fake, llm.openai_base_url, tmp_path / "one", discord_shard_count=2, discord_shard_ids=[1]
        ):
            assert [p["shard"] for p in fake.identify_payloads] == [[1, 2]]
            assert fake.connected_shards == [(1, 2)]
            not_mine = await ask(fake, shard0, alice, "anyone on shard zero?")
            mine = await ask(fake, shard1, alice, "anyone on shard one?")
            reply = await fake.wait_for_reply(mine["id"])
            assert reply["content"] == "From shard one."
            assert fake.replies_to(not_mine["id"]) == []


@pytest.mark.slow  # discord.py waits 5 s between two shards' IDENTIFYs, as Discord requires
async def test_shard_count_alone_runs_every_shard(tmp_path: Path) -> None:
    async with FakeDiscord() as fake, FakeLLMServer(reply="Hi from all shards.") as llm:
        shard0, shard1 = guilds_on_both_shards(fake)
        for guild in (shard0, shard1):
            fake.add_channel(guild, "general")
        bob = fake.add_user("bob")
        async with running_whisperengine(fake, llm.openai_base_url, tmp_path / "all", discord_shard_count=2):
            assert sorted(p["shard"] for p in fake.identify_payloads) == [[0, 2], [1, 2]]
            for guild in (shard0, shard1):
                sent = await ask(fake, guild, bob, f"hello {guild.name}")
                assert (await fake.wait_for_reply(sent["id"]))["content"] == "Hi from all shards."
