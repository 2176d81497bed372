"""Fuzzing Discord MESSAGE_CREATE events through the real discord.py client and the translate layer.

Arbitrary text (empty, huge, any Unicode) and odd attachments, mentions and references,
dispatched by the fake gateway: every message addressed to the bot gets an answer or a
clear notice, nothing crashes, and every answered message is stored.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fakes.discord_server import FakeDiscord, Guild, Json, running_whisperengine
from tests.fakes.llm_server import FakeLLMServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPLY = "Fuzzy hello from Discord."
LIMIT = 2500
FUZZ = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class World:
    fake: FakeDiscord
    app: Any
    guild: Guild
    channel: str
    numbers: itertools.count[int] = field(default_factory=itertools.count)

    def new_user(self) -> Json:
        user = self.fake.add_user(f"fuzzer{next(self.numbers)}")
        self.fake.add_member(self.guild, user)
        return user

    async def answer_to(self, message: Json) -> str:
        """The final text of the bot's reply to ``message`` (edits of a streamed reply applied)."""

        def final() -> list[Json]:
            replies = self.fake.replies_to(message["id"])
            return [m for m in replies if m["content"] == REPLY or "too long" in m["content"]]

        return str((await self.fake.wait_for(final, 20.0))[0]["content"])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with FakeDiscord() as fake, FakeLLMServer(reply=REPLY) as llm:
        guild = fake.add_guild()
        data_dir: Path = tmp_path_factory.mktemp("fuzz-discord")
        async with running_whisperengine(
            fake, llm.openai_base_url, data_dir, max_message_chars=LIMIT, rate_limit_messages=0
        ) as (app, _):
            channel = await fake.create_channel(guild, "fuzz")
            yield World(fake, app, guild, channel)


def no_crashes(caplog: pytest.LogCaptureFixture) -> None:
    crashes = [r for r in caplog.records if r.exc_info and r.name.startswith(("bot", "adapters", "discord"))]
    assert not crashes, crashes[0].getMessage()


@FUZZ
@given(text=st.text(max_size=LIMIT + 200) | st.sampled_from(["", " ", "@everyone", "x" * (LIMIT + 1)]))
async def test_every_mention_is_answered_and_stored_or_refused_as_too_long(
    world: World, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    user = world.new_user()
    with caplog.at_level(logging.ERROR):
        sent = await world.fake.send_message(world.channel, user, text, mention_bot=True)
        answer = await world.answer_to(sent)
    no_crashes(caplog)
    await world.app.engine.writer.drain()  # the reply is stored in the background
    stored = await world.app.store.user_messages(f"discord:{user['id']}")
    if answer == REPLY:
        assert [m.role for m in stored] == ["user", "assistant"]
        assert stored[0].platform_message_id == sent["id"]
    else:
        assert f"the limit is {LIMIT}" in answer and stored == []


attachment_edits = st.fixed_dictionaries(
    {},
    optional={
        "filename": st.text(min_size=1, max_size=40),
        "content_type": st.sampled_from(
            ["audio/ogg", "image/png", "application/octet-stream", "", "x/y; a=b"]
        ),
        "size": st.integers(0, 2**40),
        "duration_secs": st.floats(min_value=0, max_value=10**6, allow_nan=False),
        "width": st.integers(0, 10**5),
    },
)


@FUZZ
@given(
    text=st.text(max_size=80),
    edits=st.lists(attachment_edits, max_size=3),
    data=st.binary(max_size=512),
    voice=st.booleans(),
)
async def test_odd_attachments_get_an_answer_or_a_notice_and_break_nothing(
    world: World,
    text: str,
    edits: list[dict[str, Any]],
    data: bytes,
    voice: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = world.new_user()
    attachments = [
        {**world.fake.attachment("file.bin", data, "application/octet-stream"), **edit} for edit in edits
    ]
    with caplog.at_level(logging.ERROR):
        sent = await world.fake.send_message(
            world.channel, user, text, mention_bot=True, attachments=attachments, voice=voice
        )
        replies = await world.fake.wait_for(lambda: world.fake.replies_to(sent["id"]), 20.0)
    no_crashes(caplog)
    assert replies[0]["content"] or replies[0].get("attachments")


async def test_the_bot_still_answers_after_the_fuzzing(world: World) -> None:
    sent = await world.fake.send_message(world.channel, world.new_user(), "still there?", mention_bot=True)
    assert await world.answer_to(sent) == REPLY
