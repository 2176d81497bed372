"""DurableVectorMemory against a real Chroma server that the tests stop and restart, with the
outbox in a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from engine.ports import VectorItem
from storage.sql import SQLConversationStore
from storage.sql.schema import vector_outbox
from storage.vector.chroma import ChromaVectorMemory
from storage.vector.outbox import DurableVectorMemory
from tests.conftest import fresh_postgres_database
from tests.fakes.chroma_server import ChromaServer
from tests.fakes.health import until

DIM = 8


def vector(seed: int) -> list[float]:
    values = np.random.default_rng(seed).normal(size=DIM)
    return [float(x) for x in values / np.linalg.norm(values)]


def item(id_: str, text: str, seed: int) -> VectorItem:
    return VectorItem(id=id_, text=text, embedding=vector(seed), metadata={"kind": "message", "n": seed})


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/outbox.db"
        return
    with fresh_postgres_database("we_test_outbox") as url:
        yield url


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SQLConversationStore]:
    sql = SQLConversationStore(database_url)
    await sql.start()
    yield sql
    await sql.aclose()


@pytest.fixture
async def chroma() -> AsyncIterator[ChromaServer]:
    async with ChromaServer() as server:
        yield server


async def outbox_rows(store: SQLConversationStore) -> list[tuple[str, str, list[str]]]:
    """(scope, op, ids) of every queued row, in id order, read straight from the table."""
    async with store.engine.connect() as conn:
        rows = await conn.execute(sa.select(vector_outbox).order_by(vector_outbox.c.id))
        return [(r.scope, r.op, list(r.payload.get("ids") or r.payload.get("metadata", []))) for r in rows]


async def test_writes_wait_in_the_database_while_chroma_is_down_and_replay_in_order(
    store: SQLConversationStore, chroma: ChromaServer
) -> None:
    memory = DurableVectorMemory(
        ChromaVectorMemory.http(chroma.url, connect_timeout_s=1.0, timeout_s=5.0),
        store,
        probe_interval_s=0.1,
        timeout_s=5.0,
    )
    await memory.start()
    try:
        await memory.add("discord:1", [item("m1", "Ana: first", 1)])
        assert await memory.count("discord:1") == 1
        assert await outbox_rows(store) == []
        assert (await memory.health("chroma")).status == "ok"

        await asyncio.to_thread(chroma.stop_keeping_data)
        # Nothing raises while Chroma is away: writes go to the outbox, recall finds nothing.
        await memory.add("discord:1", [item("m2", "Ana: second, first version", 2)])
        await memory.add("discord:1", [item("m3", "Ana: third", 3), item("m4", "Ana: fourth", 4)])
        await memory.add("discord:1", [item("m2", "Ana: second, final version", 2)])
        await memory.update_metadata("discord:1", {"m3": {"mentions": 2}})
        await memory.delete("discord:1", ["m1", "m4"])
        await memory.add("telegram:9", [item("t1", "Bo: in another scope", 9)])
        assert await memory.query("discord:1", vector(2), 5) == []
        assert await outbox_rows(store) == [
            ("discord:1", "add", ["m2"]),
            ("discord:1", "add", ["m3", "m4"]),
            ("discord:1", "add", ["m2"]),
            ("discord:1", "update_metadata", ["m3"]),
            ("discord:1", "delete", ["m1", "m4"]),
            ("telegram:9", "add", ["t1"]),
        ]
        assert memory.pending == 6
        health = await memory.health("chroma")
        assert health.status == "degraded"
        assert "6 memory writes queued" in health.detail

        await asyncio.to_thread(chroma.restart)
        await until(lambda: memory.pending == 0, "the outbox to be replayed")
        assert await outbox_rows(store) == []
        assert memory.replayed == 6
        assert await memory.count("discord:1") == 2  # m2 and m3: m1 and m4 were deleted after
        hits = await memory.query("discord:1", vector(2), 5)
        assert [h.id for h in hits] == ["m2", "m3"]
        assert hits[0].text == "Ana: second, final version"  # the later write won: order held
        assert hits[0].similarity == pytest.approx(1.0, abs=1e-4)  # the embedding came back intact
        assert hits[0].metadata == {"kind": "message", "n": 2}
        assert hits[1].metadata == {"kind": "message", "n": 3, "mentions": 2}  # updated, not re-added
        assert [h.id for h in await memory.query("telegram:9", vector(9), 5)] == ["t1"]
        assert (await memory.health("chroma")).status == "ok"

        await memory.add("discord:1", [item("m5", "Ana: after the return", 5)])
        assert await outbox_rows(store) == []  # straight through again
        assert await memory.count("discord:1") == 3
    finally:
        await memory.aclose()


async def test_queued_writes_survive_a_restart_of_the_process(
    store: SQLConversationStore, chroma: ChromaServer
) -> None:
    url = chroma.url
    first = DurableVectorMemory(ChromaVectorMemory.http(url), store, probe_interval_s=3600)
    await first.start()
    await asyncio.to_thread(chroma.stop_keeping_data)
    await first.add("discord:2", [item("a", "Cy: kept through a restart", 11)])
    await first.drop_scope("discord:3")
    await first.aclose()  # the process stops with Chroma still down

    # A new process starts while Chroma is still down: it starts, and finds the queue.
    second = DurableVectorMemory(ChromaVectorMemory.http(url), store, probe_interval_s=0.1)
    await second.start()
    try:
        assert second.pending == 2
        assert await second.query("discord:2", vector(11), 3) == []
        await asyncio.to_thread(chroma.restart)
        await until(lambda: second.pending == 0, "the outbox to be replayed")
        assert [h.id for h in await second.query("discord:2", vector(11), 3)] == ["a"]
    finally:
        await second.aclose()


async def test_dropping_a_scope_discards_its_queued_writes(
    store: SQLConversationStore, chroma: ChromaServer
) -> None:
    memory = DurableVectorMemory(ChromaVectorMemory.http(chroma.url), store, probe_interval_s=0.1)
    await memory.start()
    try:
        await memory.add("discord:7", [item("old", "Di: written before", 7)])
        await asyncio.to_thread(chroma.stop_keeping_data)
        await memory.add("discord:7", [item("secret", "Di: my secret", 8)])
        await memory.add("discord:8", [item("other", "Ed: not forgotten", 12)])
        await memory.drop_scope("discord:7")
        rows = await outbox_rows(store)
        assert rows == [("discord:8", "add", ["other"]), ("discord:7", "drop_scope", [])]
        assert not any("secret" in str(r) for r in rows)

        await asyncio.to_thread(chroma.restart)
        await until(lambda: memory.pending == 0, "the outbox to be replayed")
        assert await memory.count("discord:7") == 0
        assert await memory.count("discord:8") == 1
    finally:
        await memory.aclose()
