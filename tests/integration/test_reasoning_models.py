"""A reasoning model's thinking never reaches the user, the stored turns or the memories.

The whole process (``build_app``) through its REST API, with the real ``openai`` and ``ollama``
clients against the local fake LLM server playing a reasoning model: it sends its thinking in
the field its API keeps for it (``reasoning_content``; Ollama's ``thinking``) and also inline,
between ``<think>`` tags, before the answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import build_app
from config.settings import Settings
from engine.fact_extraction import SYSTEM_PROMPT as EXTRACTION_PROMPT
from tests.fakes.llm_server import FakeLLMServer

pytestmark = pytest.mark.slow

THOUGHT = "The user likes rivers; THOUGHT-42 says to sound warm and not too long."
INLINE = "<think>Mention the walk, PLAN-7, then ask a question.</think>"
ANSWER = "Walks by the river sound lovely. Where do you usually go?"


def model(messages: list[dict[str, Any]]) -> str:
    if messages and messages[0]["content"] == EXTRACTION_PROMPT:
        return '{"facts": []}'
    return INLINE + ANSWER


@pytest.mark.parametrize("backend", ["openai", "ollama"])
async def test_thinking_is_never_posted_stored_or_remembered(tmp_path: Path, backend: str) -> None:
    async with FakeLLMServer(reply=model) as llm:
        llm.reasoning = THOUGHT
        chosen: dict[str, Any] = (
            {"llm_backend": "openai", "openai_base_url": llm.openai_base_url, "openai_api_key": "test"}
            if backend == "openai"
            else {"llm_backend": "ollama", "ollama_host": llm.ollama_host, "ollama_model": "llama3.2"}
        )
        settings = Settings(
            _env_file=None,
            data_dir=tmp_path,
            llm_max_retries=0,
            web_enabled=True,
            web_port=0,
            rate_limit_messages=0,
            **chosen,
        )
        async with build_app(settings) as app, aiohttp.ClientSession() as session:
            assert app.web is not None
            replies = []
            for text in ["I like long walks by the river", "I went again this morning"]:
                body = {"message": text, "user_id": "mia", "user_name": "Mia", "conversation_id": "walks"}
                async with session.post(app.web.url + "api/chat", json=body) as response:
                    assert response.status == 200, await response.text()
                    replies.append((await response.json())["reply"])
            await app.engine.writer.drain()
            exported = str(await app.engine.export_user("web:mia"))

        assert replies == [ANSWER, ANSWER]
        chats = [r for r in llm.requests if r.path.endswith(("/chat/completions", "/api/chat"))]
        last_prompt = str(chats[-1].messages)
        assert ANSWER in last_prompt  # the first reply is in the second prompt's turns...
        for secret in ("THOUGHT-42", "PLAN-7", "<think>"):
            assert secret not in last_prompt  # ...without the thinking
            assert secret not in exported  # not in the stored turns or the memories
