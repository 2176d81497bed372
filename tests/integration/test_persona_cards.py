"""Importing character cards as personas, as an admin does it with ``/persona import`` on Discord:
the real discord.py against the fake Discord, the fake LLM recording the prompts. (The CLI's
``whisperengine persona import FILE`` is tested in test_cli.py.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from engine.cards import MAX_CARD_FILE_BYTES
from tests.fakes.character_cards import ELDORIA, MOONSTONE, json_bytes, png_v2, png_v3, v2_card, v3_card
from tests.fakes.discord_server import MANAGE_GUILD, FakeDiscord, Guild, Json, running_whisperengine
from tests.fakes.llm_server import FakeLLMServer

EPHEMERAL = 64


@dataclass
class World:
    fake: FakeDiscord
    llm: FakeLLMServer
    app: Any
    guild: Guild
    persona_dir: Path
    users: list[Json] = field(default_factory=list)

    def user(self, name: str) -> Json:
        user = self.fake.add_user(f"{name}{len(self.users)}")
        self.fake.add_member(self.guild, user)
        self.users.append(user)
        return user

    async def command(
        self, *command: str, user: Json, channel: str, n: int = 1, admin: bool = True, **options: Any
    ) -> list[Json]:
        interaction = await self.fake.send_command(
            *command, user=user, channel_id=channel, permissions=MANAGE_GUILD if admin else None, **options
        )
        return await self.fake.wait_interaction(interaction, n)

    def files(self) -> dict[str, bytes]:
        if not self.persona_dir.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in sorted(self.persona_dir.iterdir())}


def content(response: Json) -> str:
    return str(response["data"].get("content") or "")


def is_ephemeral(response: Json) -> bool:
    return bool(int(response["data"].get("flags") or 0) & EPHEMERAL)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with FakeDiscord() as fake, FakeLLMServer(reply="*smiles*") as llm:
        guild = fake.add_guild()
        data_dir: Path = tmp_path_factory.mktemp("persona-cards")
        async with running_whisperengine(fake, llm.openai_base_url, data_dir) as (app, _):
            yield World(fake, llm, app, guild, data_dir / "personas")


pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_the_import_command_takes_an_attachment(world: World) -> None:
    persona = next(c for c in world.fake.global_commands if c["name"] == "persona")
    command = next(o for o in persona["options"] if o["name"] == "import")
    options = {o["name"]: o for o in command["options"]}
    assert options["card"]["type"] == 11 and options["card"]["required"]  # ATTACHMENT
    assert options["replace"]["type"] == 5 and not options["replace"].get("required")


async def test_an_admin_imports_a_png_card_and_it_answers_as_the_character(world: World) -> None:
    channel = await world.fake.create_channel(world.guild, "glade")
    admin, robin = world.user("admin"), world.user("Robin")
    card = world.fake.attachment("seraphina.png", png_v2(), "image/png")

    callback, done = await world.command("persona", "import", user=admin, channel=channel, n=2, card=card)
    assert callback["type"] == 5 and is_ephemeral(callback) and is_ephemeral(done)
    assert content(done).startswith("Imported Seraphina as persona seraphina (character card V2)")
    assert "3 lorebook entries" in content(done) and "/persona set name:seraphina" in content(done)
    assert "seraphina.yaml" in world.files()

    [listed] = await world.command("persona", "list", user=robin, channel=channel, admin=False)
    assert "**seraphina** — Seraphina is a gentle forest guardian" in content(listed)
    [chosen] = await world.command("persona", "set", user=admin, channel=channel, name="seraphina")
    assert "**seraphina**" in content(chosen)

    sent = await world.fake.send_message(channel, robin, "Is this glade part of Eldoria?", mention_bot=True)
    reply = await world.fake.wait_for_reply(sent["id"])
    assert reply["content"] == "*smiles*"
    messages = world.llm.requests[-1].messages
    name = robin["global_name"] or robin["username"]
    system = messages[0]["content"]
    assert system.startswith("You are Seraphina.")
    assert "Seraphina's personality: caring, protective" in system
    assert f"Scenario: {name} wakes up wounded in Seraphina's glade" in system
    assert messages[1] == {
        "role": "assistant",
        "content": f"*Seraphina kneels beside you.* Easy now, {name}. You're safe in my glade.",
    }
    context = messages[-2]["content"]
    assert ELDORIA in context and MOONSTONE not in context
    assert context.endswith("Stay in character as Seraphina; describe actions in asterisks.")
    assert messages[-1]["content"].endswith("Is this glade part of Eldoria?")
    assert all("{{" not in m["content"] for m in messages)


async def test_a_member_without_rights_imports_nothing(world: World) -> None:
    channel = await world.fake.create_channel(world.guild, "no-rights")
    member = world.user("member")
    before = world.files()
    card = world.fake.attachment("rook.json", json_bytes(v2_card("Captain Rook")), "application/json")
    [refused] = await world.command("persona", "import", user=member, channel=channel, admin=False, card=card)
    assert is_ephemeral(refused) and "Manage Server" in content(refused)
    assert world.files() == before
    assert world.app.engine.personas.library.get("captain-rook") is None


async def test_a_malformed_card_is_one_clear_error_and_changes_nothing(world: World) -> None:
    channel = await world.fake.create_channel(world.guild, "malformed")
    admin = world.user("admin")
    before, names = world.files(), world.app.engine.personas.library.names()
    nameless = world.fake.attachment("nameless.json", json_bytes(v2_card(name="")), "application/json")
    _, error = await world.command("persona", "import", user=admin, channel=channel, n=2, card=nameless)
    assert is_ephemeral(error) and content(error) == "the card in nameless.json has no 'name'"
    picture = world.fake.attachment("cat.png", png_v2()[:40] + b"garbage", "image/png")
    _, error = await world.command("persona", "import", user=admin, channel=channel, n=2, card=picture)
    assert "cat.png is a damaged PNG" in content(error)
    assert world.files() == before and world.app.engine.personas.library.names() == names


async def test_an_oversized_card_is_refused_before_it_is_downloaded(world: World) -> None:
    channel = await world.fake.create_channel(world.guild, "oversized")
    admin = world.user("admin")
    before = world.files()
    huge = world.fake.attachment("huge.png", b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_CARD_FILE_BYTES, "image/png")
    [refused] = await world.command("persona", "import", user=admin, channel=channel, card=huge)
    assert is_ephemeral(refused)
    assert content(refused) == "huge.png is too large for a character card (8.0 MiB; the limit is 8.0 MiB)"
    assert not any(key.endswith("/huge.png") for key in world.fake.downloads)
    assert world.files() == before


async def test_a_card_of_an_existing_name_needs_replace(world: World) -> None:
    channel = await world.fake.create_channel(world.guild, "replace")
    admin = world.user("admin")
    first = world.fake.attachment("nova.json", json_bytes(v3_card("Nova", nickname="")), "application/json")
    _, done = await world.command("persona", "import", user=admin, channel=channel, n=2, card=first)
    assert "as persona nova (character card V3)" in content(done)
    assert "1 lorebook entry with regular-expression keys left out" in content(done)
    before = world.files()

    again = world.fake.attachment(
        "nova.png", png_v3(v3_card("Nova", nickname="", personality="stern")), "image/png"
    )
    _, refused = await world.command("persona", "import", user=admin, channel=channel, n=2, card=again)
    assert "a persona named 'nova' already exists" in content(refused)
    assert world.files() == before

    again = world.fake.attachment(
        "nova.png", png_v3(v3_card("Nova", nickname="", personality="stern")), "image/png"
    )
    _, done = await world.command(
        "persona", "import", user=admin, channel=channel, n=2, card=again, replace=True
    )
    assert content(done).startswith("Imported Nova as persona nova")
    nova = world.app.engine.personas.library.get("nova")
    assert nova is not None and nova.personality == "stern"
    assert world.files()["nova.yaml"] != before["nova.yaml"]
