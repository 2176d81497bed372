"""Fuzzing the Telegram webhook of the real python-telegram-bot application.

Malformed updates (with the right secret) get an answer and break nothing; every text
message, whatever its text, is answered and stored, or refused as too long.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.telegram.adapter import SECRET_HEADER
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.telegram_server import FakeTelegram, running_telegram

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPLY = "Fuzzy hello from Telegram."
LIMIT = 1000
SECRET = "fuzz-Secret_token-123"
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    tg: FakeTelegram
    app: Any
    url: str
    session: aiohttp.ClientSession

    async def post(self, data: bytes) -> int:
        headers = {SECRET_HEADER: SECRET, "Content-Type": "application/json"}
        async with self.session.post(self.url, data=data, headers=headers) as response:
            await response.read()
            return response.status


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/telegram/hook"
    async with FakeTelegram() as tg, FakeLLMServer(reply=REPLY) as llm:
        data_dir: Path = tmp_path_factory.mktemp("fuzz-telegram")
        async with (
            running_telegram(
                tg,
                llm.openai_base_url,
                data_dir,
                telegram_webhook_url=url,
                telegram_webhook_secret=SECRET,
                telegram_webhook_port=port,
                max_message_chars=LIMIT,
                rate_limit_messages=0,
            ) as (app, _),
            aiohttp.ClientSession() as session,
        ):
            yield World(tg, app, url, session)


@settings(FUZZ, max_examples=15)  # each example is a whole reply
@given(text=st.text(min_size=1, max_size=LIMIT + 200) | st.sampled_from(["/", "@", "x" * (LIMIT + 1)]))
async def test_every_text_message_is_answered_and_stored_or_refused_as_too_long(
    world: World, text: str
) -> None:
    tg = world.tg
    user = tg.user("Fuzz")
    chat = tg.private_chat(user)
    tg.send_text(chat, user, text)
    if text.startswith("/"):  # a command, not a message for the model
        await tg.settle()
        return
    await tg.wait_for(lambda: any(t == REPLY or "too long" in t for t in tg.bot_texts(chat)))
    await world.app.engine.writer.drain()  # the reply is stored in the background
    stored = await world.app.store.user_messages(f"telegram:{user['id']}")
    if tg.bot_texts(chat)[-1] == REPLY:
        assert [m.role for m in stored] == ["user", "assistant"]
    else:
        assert f"the limit is {LIMIT}" in tg.bot_texts(chat)[-1] and stored == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def message_like(world_user: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    chat = {"id": world_user["id"], "type": "private", "first_name": "Fuzz"}
    return st.fixed_dictionaries(
        {
            "message_id": st.integers(1, 10**6) | json_values,
            "date": st.integers(0, 2**31) | json_values,
            "chat": st.just(chat) | json_values,
        },
        optional={
            "from": st.just(world_user) | json_values,
            "text": st.text(max_size=40) | json_values,
            "entities": st.lists(
                st.fixed_dictionaries(
                    {
                        "type": st.sampled_from(["mention", "bot_command", "bold"]) | json_values,
                        "offset": st.integers(-5, 100),
                        "length": st.integers(-5, 100),
                    }
                ),
                max_size=3,
            )
            | json_values,
            "voice": json_values,
            "reply_to_message": json_values,
        },
    )


FUZZ_USER = {"id": 777000111, "is_bot": False, "first_name": "Fuzz"}


@FUZZ
@given(
    update=st.fixed_dictionaries(
        {"update_id": st.integers(1, 2**31) | json_values},
        optional={"message": message_like(FUZZ_USER) | json_values, "callback_query": json_values},
    )
    | json_values
)
async def test_malformed_updates_break_nothing(
    world: World, update: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        status = await world.post(json.dumps(update).encode())
        await world.tg.settle()
    assert status in (200, 400), status
    crashes = [r for r in caplog.records if r.exc_info and r.name.startswith(("adapters", "telegram"))]
    assert not crashes, crashes[0].getMessage()


@FUZZ
@given(raw=st.binary(max_size=200))
async def test_arbitrary_bytes_are_refused(world: World, raw: bytes) -> None:
    assert await world.post(raw) in (200, 400)


async def test_the_webhook_still_answers_after_the_fuzzing(world: World) -> None:
    tg = world.tg
    user = tg.user("Canary")
    chat = tg.private_chat(user)
    tg.send_text(chat, user, "still there?")
    await tg.wait_for(lambda: tg.bot_texts(chat) == [REPLY])
