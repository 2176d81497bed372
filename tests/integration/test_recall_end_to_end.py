"""A fact told once is recalled first, however it is asked about and after a restart.

The whole process (``build_app``: SQLite, embedded Chroma, MiniLM, the real ``openai`` client
against the local fake LLM server, the LLM used for memory work) through its REST API. A user
states a fact in one conversation, asks about it four ways in four other conversations, the
bot is restarted on the same data directory, and asked once more: each time the memory the
engine puts first in the model's prompt is the fact. The questions never superseded it and
were not stored as memories; the memory LLM, which would say yes to anything, was never asked
to confirm a contradiction.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import App, build_app
from config.settings import Settings
from engine.fact_extraction import SYSTEM_PROMPT as EXTRACTION_PROMPT
from engine.memory_care import CONFIRM_SYSTEM
from tests.fakes.llm_server import FakeLLMServer, RecordedRequest

pytestmark = pytest.mark.slow

USER_KEY = "web:alice"
FACT = "My dog is called Biscuit."
MEMORY = f"Alice: {FACT}"
SAID_TOO = [
    "I work night shifts as a nurse at the children's hospital.",
    "My sister's dog is called Max and he is huge.",
    "If I ever get a second dog I would call him Rex.",
]
QUESTIONS = [
    "Do you remember what my dog is called?",
    "whats my dogs name again",
    "my dog is called what again? i forgot 🙈",
    "can u remind me what i named my dog",
]
AFTER_RESTART = "Tell me the name of my dog."
_MEMORY_LINE = re.compile(r"^- \[\d{4}-\d{2}-\d{2}\] (.*)$", re.MULTILINE)


def answer(messages: list[dict[str, Any]]) -> str:
    system = messages[0]["content"]
    if system == EXTRACTION_PROMPT:
        return '{"facts": []}'
    if system == CONFIRM_SYSTEM:
        return "yes"  # a memory LLM that would let anything supersede the fact
    return "Of course, I remember!"


def chats(llm: FakeLLMServer) -> list[RecordedRequest]:
    """The requests for replies (not for memory work)."""
    memory_work = (EXTRACTION_PROMPT, CONFIRM_SYSTEM)
    return [
        r
        for r in llm.requests
        if r.path.endswith("/chat/completions") and r.messages[0]["content"] not in memory_work
    ]


def memories_in_prompt(request: RecordedRequest) -> list[str]:
    """The memories the engine put in a reply's prompt (its context message), in order."""
    system = "\n\n".join(m["content"] for m in request.messages if m["role"] == "system")
    _, _, block = system.partition("Things you remember about them")
    return _MEMORY_LINE.findall(block)


async def chat(session: aiohttp.ClientSession, app: App, text: str, conversation: str) -> dict[str, Any]:
    assert app.web is not None
    body = {"message": text, "user_id": "alice", "user_name": "Alice", "conversation_id": conversation}
    async with session.post(app.web.url + "api/chat", json=body) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
    await app.engine.writer.drain()
    return result


@asynccontextmanager
async def bot(settings: Settings) -> AsyncIterator[tuple[App, aiohttp.ClientSession]]:
    async with build_app(settings) as app, aiohttp.ClientSession() as session:
        yield app, session


async def test_a_fact_asked_about_four_ways_is_still_recalled_first_after_a_restart(tmp_path: Path) -> None:
    async with FakeLLMServer(reply=answer) as llm:
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path,
            llm_backend="openai",
            openai_base_url=llm.openai_base_url,
            openai_api_key="test",
            llm_max_retries=0,
            web_enabled=True,
            web_port=0,
            memory_use_llm="on",
            rate_limit_messages=0,
        )
        async with bot(settings) as (app, session):
            assert app.engine.writer.contradictions.llm is not None
            for text in [FACT, *SAID_TOO]:
                await chat(session, app, text, "first")
            for number, question in enumerate(QUESTIONS):
                reply = await chat(session, app, question, f"later-{number}")
                assert [m["text"] for m in reply["memories_used"]][:1] == [MEMORY], question
                assert memories_in_prompt(chats(llm)[-1])[:1] == [MEMORY], question

        async with bot(settings) as (app, session):
            reply = await chat(session, app, AFTER_RESTART, "after-restart")
            assert [m["text"] for m in reply["memories_used"]][:1] == [MEMORY]
            assert memories_in_prompt(chats(llm)[-1])[:1] == [MEMORY]

            exported = await app.engine.export_user(USER_KEY)
            stored = {m["text"]: m for m in exported["memories"]}  # type: ignore[index]
            assert stored[MEMORY]["superseded_by"] is None
            for question in [*QUESTIONS, AFTER_RESTART]:
                assert f"Alice: {question}" not in stored, "a question is not a memory"
            assert all(m["superseded_by"] is None for m in stored.values())
            said = [m.content for m in await app.store.user_messages(USER_KEY) if m.role == "user"]
            assert said == [FACT, *SAID_TOO, *QUESTIONS, AFTER_RESTART]  # every turn is kept

        assert not [r for r in llm.requests if r.messages and r.messages[0]["content"] == CONFIRM_SYSTEM]
