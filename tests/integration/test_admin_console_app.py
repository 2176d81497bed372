"""The owner's console in the whole process (``build_app``: SQLite, embedded Chroma, MiniLM, the
real ``openai`` client against the fake LLM server): live figures, redacted problems, and a
default persona that the next reply uses and that outlives a restart."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp

from bot.app import App, build_app
from config.settings import PACKAGED_PERSONAS, Settings
from engine.persona import load_persona_file
from tests.fakes.llm_server import FakeLLMServer

TOKEN = "console-app-token-9876543210"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def _chat(session: aiohttp.ClientSession, app: App, text: str) -> dict[str, Any]:
    assert app.web is not None
    body = {"message": text, "user_id": "robin", "user_name": "Robin"}
    async with session.post(app.web.url + "api/chat", json=body, headers=BEARER) as resp:
        assert resp.status == 200, await resp.text()
        result: dict[str, Any] = await resp.json()
    return result


async def _get(session: aiohttp.ClientSession, app: App, path: str) -> Any:
    assert app.web is not None
    async with session.get(app.web.url.rstrip("/") + path, headers=BEARER) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_the_console_of_a_running_bot(tmp_path: Path) -> None:
    sage = load_persona_file(PACKAGED_PERSONAS / "sage.yaml")
    async with FakeLLMServer(reply="Of course, tell me more.") as llm:
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path,
            llm_backend="openai",
            openai_base_url=llm.openai_base_url,
            openai_api_key="test",
            llm_max_retries=0,
            web_enabled=True,
            web_port=0,
            api_token=TOKEN,
            console_sample_s=0.1,
            rate_limit_messages=0,
            memory_use_llm="off",  # every LLM request is a reply's
        )
        async with build_app(settings) as app, aiohttp.ClientSession() as session:
            assert (await _chat(session, app, "Hello!"))["persona"] == "ember"

            # the chat shows in the figures within a sample or two
            for _ in range(50):
                points = (await _get(session, app, "/admin/api/metrics"))["points"]
                if points and points[-1]["messages_per_min"] > 0:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"no message counted: {points[-3:]}")
            assert points[-1]["reply_p50_s"] is not None
            assert "memory_writer" in points[-1]["queues"]

            logging.getLogger("bot.somewhere").warning("the token %s was refused upstream", TOKEN)
            overview = await _get(session, app, "/admin/api/overview")
            assert {"store", "cache", "vectors", "llm"} <= set(overview["components"])
            platforms = {p["name"]: p for p in overview["platforms"]}
            assert platforms["discord"] == {
                "name": "discord",
                "status": "off",
                "detail": "DISCORD_TOKEN is not set",
            }
            messages = [p["message"] for p in overview["recent_problems"]]
            assert "the token *** was refused upstream" in messages
            assert not any(TOKEN in m for m in messages)

            assert app.web is not None
            switch = app.web.url + "admin/personas/default"
            async with session.post(switch, json={"persona": "sage"}, headers=BEARER) as resp:
                assert resp.status == 200 and await resp.json() == {"default": "sage"}
            assert (await _chat(session, app, "What should I read next?"))["persona"] == "sage"
            system = llm.requests[-1].messages[0]["content"]
            assert sage.system_prompt.strip()[:60] in system

        # stored: the next start answers as sage too
        async with build_app(settings) as app, aiohttp.ClientSession() as session:
            assert (await _chat(session, app, "Hello again")).get("persona") == "sage"
            assert app.engine.personas.library.default.name == "sage"
