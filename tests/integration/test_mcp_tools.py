"""Tools over MCP, end to end: the whole process (``build_app``, its REST API) with the real
``openai`` and ``ollama`` clients against the local fake LLM server, scripted to ask for tools,
and the tests' own MCP server (``tests/fakes/mcp_server.py``: a clock and notes, built with the
official SDK) started by the app over stdio, or reached over streamable HTTP.

What is checked: the tool is really called (the notes server's file, the clock's time reach
the model's next request as the tool's result), the final reply is posted, tool messages are
never stored as turns nor shown again; a failing tool's error and a hanging tool's timeout
reach the model and a reply still comes, promptly; a tool off the persona's allow-list is never
offered and a call to it is refused; a server that cannot start leaves the bot answering
without its tools; one user's tool output never reaches another conversation's prompt; every
call is counted in the metrics.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.app import App, build_app
from config.settings import Settings
from engine.errors import ConfigError
from tests.fakes.llm_server import AskTools, FakeLLMServer, RecordedRequest
from tests.fakes.mcp_server import BROKEN_MESSAGE, read_notes, started_mcp_server, stdio_command

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PERSONA = """\
name: quill
description: A tidy assistant who keeps notes and knows the time.
system_prompt: |
  You are Quill, a tidy and friendly assistant. You keep notes for people and can tell the time.
tools: [desk.clock, desk.add_note, desk.list_notes, desk.broken, desk.stall, weather.*]
"""
OFFERED = {"desk__clock", "desk__add_note", "desk__list_notes", "desk__broken", "desk__stall"}
PLUMBER = "The plumber comes on Tuesday at 9am"
LOCKER = "Alice's gym locker code is 4471"
NOTED = "Alright, I've written that down for you."
KEEP_CHECKING = "Still the same minute. "


def said_last(messages: list[dict[str, Any]]) -> str:
    return next(str(m.get("content")) for m in reversed(messages) if m["role"] == "user")


def results_so_far(messages: list[dict[str, Any]]) -> list[str]:
    """The tool results of this request (they come after its last user message)."""
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return [str(m.get("content")) for m in messages[last_user:] if m["role"] == "tool"]


def model(messages: list[dict[str, Any]]) -> str | AskTools:
    """A model that asks for the tool a message calls for, then answers from its result."""
    said, results = said_last(messages).lower(), results_so_far(messages)
    if results and "keep checking" not in said:
        if "plumber" in said:
            return NOTED
        return f"Here is what I found: {' / '.join(results)}"
    if "plumber" in said:
        return AskTools([("desk__add_note", {"text": PLUMBER})], text="Let me note that. ")
    if "what time" in said:
        return AskTools([("desk__clock", {"timezone": "UTC"})])
    if "my notes" in said:
        return AskTools([("desk__list_notes", {})])
    if "label" in said:
        return AskTools([("desk__broken", {})])
    if "take your time" in said:
        return AskTools([("desk__stall", {"seconds": 3600})])
    if "wipe" in said:
        return AskTools([("desk__forget_notes", {})])
    if "keep checking" in said:
        return AskTools([("desk__clock", {})], text=KEEP_CHECKING)
    return "Happy to chat! What's on your mind?"


def chats(llm: FakeLLMServer) -> list[RecordedRequest]:
    return [r for r in llm.requests if r.path in ("/v1/chat/completions", "/api/chat")]


def settings_for(
    tmp_path: Path, llm: FakeLLMServer, backend: str, servers: dict[str, Any], **extra: Any
) -> Settings:
    personas = tmp_path / "personas"
    personas.mkdir(exist_ok=True)
    (personas / "quill.yaml").write_text(PERSONA, encoding="utf-8")
    endpoint: dict[str, Any] = (
        {"llm_backend": "openai", "openai_base_url": llm.openai_base_url, "openai_api_key": "test"}
        if backend == "openai"
        else {"llm_backend": "ollama", "ollama_host": llm.ollama_host, "ollama_model": "llama3.2"}
    )
    return Settings(
        _env_file=None,
        data_dir=tmp_path / "data",
        persona_dir=personas,
        default_persona="quill",
        llm_max_retries=0,
        web_enabled=True,
        web_port=0,
        memory_use_llm="off",
        rate_limit_messages=0,
        mcp_servers=json.dumps(servers),
        mcp_connect_timeout_s=30,
        **endpoint,
        **extra,
    )


def stdio_server(notes: Path) -> dict[str, Any]:
    command, args = stdio_command(notes)
    return {"command": command, "args": args, "cwd": str(ROOT)}


@contextmanager
def desk_server(transport: str, notes: Path) -> Iterator[dict[str, Any]]:
    """The desk server's entry in MCP_SERVERS: run by the app (stdio), or by the test (HTTP)."""
    if transport == "stdio":
        yield stdio_server(notes)
    else:
        with started_mcp_server(notes) as url:
            yield {"url": url}


@asynccontextmanager
async def bot(settings: Settings) -> AsyncIterator[tuple[App, aiohttp.ClientSession]]:
    async with build_app(settings) as app, aiohttp.ClientSession() as session:
        yield app, session


async def chat(
    session: aiohttp.ClientSession, app: App, text: str, *, user: str = "alice", conversation: str = "desk"
) -> dict[str, Any]:
    assert app.web is not None
    body = {"message": text, "user_id": user, "user_name": user.title(), "conversation_id": conversation}
    async with session.post(app.web.url + "api/chat", json=body) as response:
        assert response.status == 200, await response.text()
        result: dict[str, Any] = await response.json()
    return result


async def metrics(session: aiohttp.ClientSession, app: App) -> str:
    assert app.web is not None
    async with session.get(app.web.url + "metrics") as response:
        return await response.text()


def tool_calls_counted(text: str, tool: str, outcome: str) -> float:
    """``whisperengine_tool_calls_total{outcome, tool}`` in a scrape (labels come sorted)."""
    line = f'whisperengine_tool_calls_total{{outcome="{outcome}",tool="{tool}"}} '
    found = [float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line)]
    return found[0] if found else 0.0


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("backend", ["openai", "ollama"])
async def test_the_model_notes_a_fact_and_reads_the_clock_through_mcp_tools(
    tmp_path: Path, backend: str, transport: str
) -> None:
    notes = tmp_path / "notes.jsonl"
    async with FakeLLMServer(reply=model, chunk_size=5) as llm:
        with desk_server(transport, notes) as desk:
            async with bot(settings_for(tmp_path, llm, backend, {"desk": desk})) as (app, session):
                assert app.choices["tools"].startswith("mcp: desk")
                reply = await chat(
                    session, app, "Can you make a note that the plumber comes on Tuesday at 9am?"
                )

                # the tool really ran: the note is in the notes server's file
                assert read_notes(notes) == [PLUMBER]
                asking, answering = chats(llm)[-2:]
                assert set(asking.tools) == OFFERED  # the allow-list, and nothing else (no forget_notes)
                assert answering.tool_results() == [f"Noted: {PLUMBER}"]
                assert reply["kind"] == "answer"
                assert reply["reply"] == f"Let me note that. {NOTED}"

                before = time.time()
                reply = await chat(session, app, "What time is it right now?")
                (result,) = chats(llm)[-1].tool_results()
                told = datetime.fromisoformat(result)
                assert told.utcoffset() is not None and told.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
                assert abs(told.timestamp() - before) < 60
                assert reply["reply"] == f"Here is what I found: {result}"

                # calls and results lived in those requests only: not stored, not shown again
                await app.engine.writer.drain()
                stored = await app.store.recent_messages("web:alice.desk", 50)
                assert [(m.role, m.content) for m in stored] == [
                    ("user", "Can you make a note that the plumber comes on Tuesday at 9am?"),
                    ("assistant", f"Let me note that. {NOTED}"),
                    ("user", "What time is it right now?"),
                    ("assistant", f"Here is what I found: {result}"),
                ]
                await chat(session, app, "Thanks, that's all for today.")
                last = chats(llm)[-1]
                assert last.tool_results() == []
                assert not any(m.get("tool_calls") for m in last.messages)
                assert not any(f"Noted: {PLUMBER}" in str(m.get("content")) for m in last.messages)

                counted = await metrics(session, app)
                assert tool_calls_counted(counted, "desk__add_note", "ok") == 1
                assert tool_calls_counted(counted, "desk__clock", "ok") == 1


@pytest.mark.parametrize("backend", ["openai", "ollama"])
async def test_failing_hanging_and_forbidden_tools_are_told_to_the_model_and_a_reply_still_comes(
    tmp_path: Path, backend: str
) -> None:
    notes = tmp_path / "notes.jsonl"
    notes.write_text(json.dumps({"text": PLUMBER}) + "\n", encoding="utf-8")
    servers = {"desk": stdio_server(notes), "weather": {"command": str(tmp_path / "no-such-weather-server")}}
    async with FakeLLMServer(reply=model) as llm:
        settings = settings_for(
            tmp_path, llm, backend, servers, mcp_tool_timeout_s=1.5, mcp_max_tool_rounds=2
        )
        async with bot(settings) as (app, session):
            # a server that cannot start: noted, degraded, its tools absent, the others offered
            assert any("weather" in note for note in app.notes)
            health = (await app.health())["tools"]
            assert health.status == "degraded" and "weather" in health.detail

            reply = await chat(session, app, "Please print a label for the spice jar.")
            (result,) = chats(llm)[-1].tool_results()
            assert result.startswith("Error: the tool desk__broken failed: ") and BROKEN_MESSAGE in result
            assert reply["kind"] == "answer" and BROKEN_MESSAGE in reply["reply"]

            started = time.monotonic()
            reply = await chat(session, app, "Do the slow thing, take your time.")
            took = time.monotonic() - started
            (result,) = chats(llm)[-1].tool_results()
            assert "did not answer within 1.5 seconds" in result
            assert reply["kind"] == "answer" and "did not answer" in reply["reply"]
            assert took < 1.5 + 5  # the timeout, and a moment: not the hour the tool sleeps

            reply = await chat(session, app, "Wipe every note you have.")
            asking, answering = chats(llm)[-2:]
            assert "desk__forget_notes" not in asking.tools and set(asking.tools) == OFFERED
            assert answering.tool_results() == ["Error: there is no tool named 'desk__forget_notes' here."]
            assert read_notes(notes) == [PLUMBER]  # never called
            assert reply["kind"] == "answer"

            # the server still answers after the timed-out call
            await chat(session, app, "What's in my notes?")
            assert chats(llm)[-1].tool_results() == [f"- {PLUMBER}"]

            # a model that would call tools for ever: two rounds, then it must answer
            reply = await chat(session, app, "Keep checking the clock until the minute changes.")
            rounds = chats(llm)[-3:]
            assert [len(r.tool_results()) for r in rounds] == [0, 1, 2]
            final = rounds[-1].json
            assert final.get("tool_choice") == "none" if backend == "openai" else not final.get("tools")
            assert reply["kind"] == "answer" and reply["reply"] == (KEEP_CHECKING * 3).strip()

            counted = await metrics(session, app)
            assert tool_calls_counted(counted, "desk__clock", "ok") == 2
            assert tool_calls_counted(counted, "desk__broken", "error") == 1
            assert tool_calls_counted(counted, "desk__stall", "timeout") == 1
            assert tool_calls_counted(counted, "(not offered)", "refused") == 1
            assert tool_calls_counted(counted, "desk__list_notes", "ok") == 1


@pytest.mark.parametrize("backend", ["openai", "ollama"])
async def test_one_users_tool_output_never_reaches_another_conversation(tmp_path: Path, backend: str) -> None:
    notes = tmp_path / "notes.jsonl"
    notes.write_text(json.dumps({"text": LOCKER}) + "\n", encoding="utf-8")
    async with (
        FakeLLMServer(reply=model, delay_s=0.01, first_chunk_delay_s=0.2) as llm,
        bot(settings_for(tmp_path, llm, backend, {"desk": stdio_server(notes)})) as (app, session),
    ):
        alice, bob = await asyncio.gather(
            chat(session, app, "What's in my notes?", user="alice", conversation="lockers"),
            chat(session, app, "Tell me something nice about autumn.", user="bob", conversation="autumn"),
        )
        bob_again = await chat(session, app, "And what about winter?", user="bob", conversation="autumn")

        assert LOCKER in alice["reply"]
        assert LOCKER not in bob["reply"] and LOCKER not in bob_again["reply"]
        bobs = [r for r in chats(llm) if any("autumn" in str(m.get("content")) for m in r.messages)]
        assert len(bobs) == 2
        for request in bobs:
            assert request.tool_results() == []
            assert not any("4471" in str(m.get("content")) for m in request.messages)
        alices = [r for r in chats(llm) if any("my notes" in str(m.get("content")) for m in r.messages)]
        assert [r.tool_results() for r in alices] == [[], [f"- {LOCKER}"]]


async def test_a_mistake_in_mcp_servers_stops_the_start_and_says_where(tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None, data_dir=tmp_path, web_port=0, mcp_servers='{"clock": {"cmd": "uvx"}}'
    )
    with pytest.raises(ConfigError, match="MCP_SERVERS") as raised:
        async with build_app(settings):
            pass
    assert "'clock'" in str(raised.value) and "cmd" in str(raised.value)
    assert not (tmp_path / "whisperengine.db").exists()  # nothing was started
