"""Fault injection: services fail in the middle of a conversation, and no message is lost.

The bot runs with ``whisperengine run``'s own wiring (``build_app`` + ``start_platforms``) on a
PRIVATE PostgreSQL cluster (``tests/fakes/private_postgres.py``; the machine's shared server is
never stopped), the real python-telegram-bot client against the fake Telegram server, the web
REST API through aiohttp, and the fake LLM server. PostgreSQL is stopped mid-conversation (an
immediate shutdown, i.e. a crash), the users keep talking, PostgreSQL comes back: every
message got a reply, and every message, reply and memory is in the database afterwards.

A second test kills the real ``whisperengine run`` process with SIGKILL right after a reply:
the acknowledged message is in the database (or, during an outage, in the spool, which the
next start writes to the database).
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from uuid import uuid4

import aiohttp
import pytest
import sqlalchemy as sa

from engine.pipeline import NOT_SAVED
from storage.sql import schema
from storage.sql.spool import SPOOL_FILE
from storage.sql.store import SQLConversationStore
from tests.fakes.bot_process import EXE, bot_environment
from tests.fakes.chroma_server import ChromaServer
from tests.fakes.health import until
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.platforms import running_platforms
from tests.fakes.private_postgres import PrivatePostgres, create_database, free_port, private_postgres
from tests.fakes.private_redis import PrivateRedis
from tests.fakes.telegram_server import FakeTelegram

__all__ = ["private_postgres"]  # the fixture, used by name

pytestmark = pytest.mark.slow

REPLY = "Thanks, I'll keep that in mind."


@pytest.fixture
async def pg_url(private_postgres: PrivatePostgres) -> str:
    """A fresh database on the private cluster (started if a test left it stopped)."""
    private_postgres.start()
    return await create_database(private_postgres, "faults")


async def healthy(app: Any, *components: str, within_s: float = 20.0) -> None:
    """Wait until health reports these components ok (a database that just failed is reported
    down for a few seconds by its circuit breaker, without being asked)."""
    deadline = time.monotonic() + within_s
    while True:
        health = await app.health()
        statuses = {name: health[name].status for name in components}
        if set(statuses.values()) == {"ok"}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not healthy: {statuses}")
        await asyncio.sleep(0.2)


async def database_rows(url: str, table: sa.Table) -> list[dict[str, Any]]:
    store = SQLConversationStore(url)
    await store.start()
    try:
        async with store.engine.connect() as conn:
            query = sa.select(table)
            result = await conn.execute(query.order_by(table.c.seq) if "seq" in table.c else query)
            return [dict(row._mapping) for row in result]
    finally:
        await store.aclose()


async def test_postgres_stopped_mid_conversation_loses_no_message(
    private_postgres: PrivatePostgres, pg_url: str, tmp_path: Path
) -> None:
    pg = private_postgres
    said = [
        "Hi! My name is Kate and I live in Lisbon.",
        "I work as a marine biologist at the aquarium.",
        # PostgreSQL goes down here
        "My favourite food is grilled sardines with lemon.",
        "Next month I am travelling to Iceland with my sister.",
        "I have a grey cat called Pixel who sleeps all day.",
        # PostgreSQL is back here
        "Thanks for keeping track of everything while things were shaky.",
    ]
    async with (
        FakeTelegram() as telegram,
        FakeLLMServer(reply=REPLY) as llm,
        running_platforms(
            llm.openai_base_url,
            tmp_path / "data",
            telegram=telegram,
            database_url=pg_url,
            store_spool_replay_interval_s=0.2,
            web_enabled=True,
            web_port=0,
        ) as (app, started),
    ):
        assert started == ["telegram"]
        kate = telegram.user("Kate")
        chat = telegram.private_chat(kate)
        web_said: list[str] = []
        async with aiohttp.ClientSession() as session:
            for n, text in enumerate(said):
                if n == 2:
                    pg.stop("immediate")
                if n == 5:
                    health = await app.health()
                    assert health["store"].status == "degraded"
                    assert "spooled" in health["store"].detail
                    pg.start()
                telegram.send_text(chat, kate, text)
                # the reply is streamed: sent, then edited until complete
                await telegram.wait_for(lambda n=n: telegram.bot_texts(chat)[n:] == [REPLY])
                if n == 3:  # a web chat user talks during the outage too
                    line = "Remember that my locker code is 4417 please."
                    async with session.post(
                        app.web.url + "api/chat", json={"message": line, "user_id": "wes"}
                    ) as response:
                        assert response.status == 200
                        assert (await response.json())["reply"] == REPLY
                    web_said.append(line)

        assert telegram.bot_texts(chat) == [REPLY] * len(said), "every message was answered"
        # the replies and memories are written in the background; then the spool drains
        await app.engine.writer.drain()
        await app.engine.relationships.drain()
        await until(lambda: app.store.pending == 0)
        await healthy(app, "store")

    messages = await database_rows(pg_url, schema.messages)
    kate_rows = [m for m in messages if m["user_key"] == f"telegram:{kate['id']}"]
    assert [m["content"] for m in kate_rows if m["role"] == "user"] == said
    assert [m["content"] for m in kate_rows if m["role"] == "assistant"] == [REPLY] * len(said)
    assert [m["content"] for m in messages if m["user_key"] == "web:wes"] == [*web_said, REPLY]
    memories = {m["text"] for m in await database_rows(pg_url, schema.memories)}
    for text in said:
        assert f"Kate: {text}" in memories
    users = {u["user_key"]: u for u in await database_rows(pg_url, schema.users)}
    assert users[f"telegram:{kate['id']}"]["message_count"] == len(said)
    assert (tmp_path / "data" / "spool" / SPOOL_FILE).stat().st_size == 0


async def test_a_full_spool_refuses_the_message_and_tells_the_user(
    private_postgres: PrivatePostgres, pg_url: str, tmp_path: Path
) -> None:
    pg = private_postgres
    async with (
        FakeTelegram() as telegram,
        FakeLLMServer(reply=REPLY) as llm,
        running_platforms(
            llm.openai_base_url,
            tmp_path / "data",
            telegram=telegram,
            database_url=pg_url,
            store_spool_max_entries=3,
            store_spool_replay_interval_s=0.2,
            memory_use_llm="off",
        ) as (app, _),
    ):
        kate = telegram.user("Kate")
        chat = telegram.private_chat(kate)
        pg.stop("immediate")
        # the message itself fits (the user's profile and the message: 2 of 3); what follows
        # from it (its reply and its memory, one group commit) has room beyond the bound
        telegram.send_text(chat, kate, "I planted three lemon trees in the garden today.")
        await telegram.wait_for(lambda: telegram.bot_texts(chat) == [REPLY])
        await app.engine.writer.drain()
        await app.engine.relationships.drain()
        assert app.store.pending >= 3  # full now, for new messages

        telegram.send_text(chat, kate, "They came from a nursery near Seville.")
        await telegram.wait_for(lambda: telegram.bot_texts(chat)[1:] == [NOT_SAVED])

        pg.start()
        await until(lambda: app.store.pending == 0)
        telegram.send_text(chat, kate, "They came from a nursery near Seville.")  # trying again
        await telegram.wait_for(lambda: telegram.bot_texts(chat)[2:] == [REPLY])
        await app.engine.writer.drain()
        await until(lambda: app.store.pending == 0)

    rows = [m for m in await database_rows(pg_url, schema.messages) if m["role"] == "user"]
    assert [m["content"] for m in rows] == [
        "I planted three lemon trees in the garden today.",
        "They came from a nursery near Seville.",  # once: the refused attempt was not stored
    ]
    memories = {m["text"] for m in await database_rows(pg_url, schema.memories)}
    assert "Kate: I planted three lemon trees in the garden today." in memories


async def test_redis_chroma_and_postgres_fail_in_turn_and_nothing_is_lost(
    private_postgres: PrivatePostgres, pg_url: str, tmp_path: Path
) -> None:
    """Overlapping outages through one Telegram conversation: Redis, Chroma, then PostgreSQL
    while Chroma is still down (vector writes then wait in the spool, not in the outbox table)."""
    pg = private_postgres
    said = [
        "Hello there, I am Kate and I collect old maps.",
        "I started collecting when my grandfather gave me his atlas.",  # Redis down
        "My oldest map shows the coast of Portugal in 1750.",  # Chroma down too
        "I keep them in a cabinet with wide flat drawers.",  # Redis back
        "Last week I found a map of Iceland at a flea market.",  # PostgreSQL down too
        "I paid twelve euros for it, which felt like a bargain.",  # Chroma back
        "I think I will get it framed for the hallway.",  # PostgreSQL back
    ]
    async with (
        PrivateRedis() as redis,
        ChromaServer() as chroma,
        FakeTelegram() as telegram,
        FakeLLMServer(reply=REPLY) as llm,
        running_platforms(
            llm.openai_base_url,
            tmp_path / "data",
            telegram=telegram,
            database_url=pg_url,
            redis_url=redis.url,
            redis_prefix=f"faults{uuid4().hex[:8]}:",
            chroma_url=chroma.url,
            store_spool_replay_interval_s=0.2,
            failover_probe_interval_s=0.2,
            memory_use_llm="off",
        ) as (app, _),
    ):
        kate = telegram.user("Kate")
        chat = telegram.private_chat(kate)
        user_key = f"telegram:{kate['id']}"
        faults = {
            1: redis.stop,
            2: chroma.stop_keeping_data,
            3: redis.restart,
            4: lambda: pg.stop("immediate"),
            5: chroma.restart,
            6: pg.start,
        }
        for n, text in enumerate(said):
            if n in faults:
                await app.engine.writer.drain()  # each fault lands between two exchanges
                await asyncio.to_thread(faults[n])
            telegram.send_text(chat, kate, text)
            await telegram.wait_for(lambda n=n: telegram.bot_texts(chat)[n:] == [REPLY], within_s=30)

        assert telegram.bot_texts(chat) == [REPLY] * len(said), "every message was answered"
        await app.engine.writer.drain()
        await app.engine.relationships.drain()
        await until(lambda: app.store.pending == 0 and app.vectors.pending == 0, limit_s=30)
        # every memory's vector is in Chroma: those written while it was down came from the outbox,
        # those written while the database was down as well from the spool, then the outbox
        memories = [m for m in await database_rows(pg_url, schema.memories) if m["user_key"] == user_key]
        assert {m["text"] for m in memories} >= {f"Kate: {text}" for text in said}
        assert await app.vectors.count(user_key) == len(memories)
        assert app.store.spooled["enqueue_vector_op"] > 0  # the overlap happened as planned
        await healthy(app, "store", "cache", "vectors")

    rows = [m for m in await database_rows(pg_url, schema.messages) if m["user_key"] == user_key]
    assert [m["content"] for m in rows if m["role"] == "user"] == said
    assert [m["content"] for m in rows if m["role"] == "assistant"] == [REPLY] * len(said)


# --- a real process, killed -------------------------------------------------------------------


def start_bot(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [EXE, "run"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(env["DATA_DIR"]).parent,
        )


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:]


def http_json(url: str, body: dict[str, Any] | None = None, timeout_s: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


async def wait_for_web(port: int, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the bot exited ({process.returncode}):\n{log_tail(log_path)}")
        try:
            await asyncio.to_thread(http_json, f"http://127.0.0.1:{port}/api/health", None, 2.0)
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError(f"the bot's web API never came up:\n{log_tail(log_path)}")


def spool_entries(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "data" / "spool" / SPOOL_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def spooled_messages(tmp_path: Path) -> list[tuple[str, str]]:
    """(role, content) of every message waiting in the spool, in order: the user's turns are
    spooled one by one, the bot's replies in the memory writer's group commits."""
    messages: list[dict[str, Any]] = []
    for entry in spool_entries(tmp_path):
        if entry["op"] == "add_message":
            messages.append(entry["args"]["message"])
        elif entry["op"] == "write_batch":
            messages.extend(entry["args"]["messages"])
    return [(m["role"], m["content"]) for m in messages]


def spooled_memories(tmp_path: Path) -> list[str]:
    """The text of every memory waiting in the spool, in order."""
    return [
        m["text"]
        for e in spool_entries(tmp_path)
        if e["op"] in ("add_memories", "write_batch")
        for m in e["args"]["memories"]
    ]


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


async def test_sigkill_right_after_a_reply_loses_no_acknowledged_message(
    private_postgres: PrivatePostgres, pg_url: str, tmp_path: Path
) -> None:
    pg = private_postgres
    port = free_port()
    log_path = tmp_path / "bot.log"
    async with FakeLLMServer(reply=REPLY) as llm:
        env = bot_environment(
            tmp_path / "data",
            llm_url=llm.openai_base_url,
            DATABASE_URL=pg_url,
            WEB_ENABLED="true",
            WEB_PORT=str(port),
            STORE_SPOOL_REPLAY_INTERVAL_S="0.2",
        )
        bot = start_bot(env, log_path)
        try:
            await wait_for_web(port, bot, log_path)
            chat = f"http://127.0.0.1:{port}/api/chat"
            first = {"message": "first, all is well", "user_id": "ann"}
            status, body = await asyncio.to_thread(http_json, chat, first)
            assert (status, body["reply"]) == (200, REPLY)

            pg.stop("immediate")
            second = {"message": "second, while the database is down", "user_id": "ann"}
            status, body = await asyncio.to_thread(http_json, chat, second)
            assert (status, body["reply"]) == (200, REPLY)
            kill(bot)  # no shutdown, no draining, in the middle of an outage
            spooled = spooled_messages(tmp_path)
            assert ("user", second["message"]) in spooled
            assert ("user", first["message"]) not in spooled  # that one went straight to the database

            pg.start()
            rows = await database_rows(pg_url, schema.messages)
            assert [m["content"] for m in rows if m["role"] == "user"] == [first["message"]]

            bot = start_bot(env, log_path)  # replays the spool at start-up, before serving
            await wait_for_web(port, bot, log_path)
            assert (tmp_path / "data" / "spool" / SPOOL_FILE).stat().st_size == 0
            rows = await database_rows(pg_url, schema.messages)
            said = [m["content"] for m in rows if m["user_key"] == "web:ann" and m["role"] == "user"]
            assert said == [first["message"], second["message"]]

            # a clean shutdown during an outage drains the background writes into the spool
            pg.stop("immediate")
            third = {"message": "third, and then the bot is stopped", "user_id": "ann"}
            status, body = await asyncio.to_thread(http_json, chat, third)
            assert (status, body["reply"]) == (200, REPLY)
            bot.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(bot.wait, 60) == 0, log_tail(log_path)
        finally:
            if bot.poll() is None:
                kill(bot)
            pg.start()

    assert spooled_messages(tmp_path) == [("user", third["message"]), ("assistant", REPLY)]
    assert f"User: {third['message']}" in spooled_memories(tmp_path)
