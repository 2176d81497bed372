"""Fuzzing the REST API: arbitrary JSON, text and bytes at a real aiohttp server and Engine.

Every request gets an answer (never a 500), invalid input a clear JSON error, and every
valid message reaches the engine and is stored.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.web import WebAdapter
from config.settings import PACKAGED_PERSONAS
from engine.health import ComponentHealth
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from storage.cache.memory import MemoryCache
from storage.sql import SQLConversationStore
from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMIT = 2000
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ERROR_STATUSES = {400, 413, 415}


@dataclass
class Server:
    web: WebAdapter
    session: aiohttp.ClientSession
    store: SQLConversationStore
    engine: Engine

    def url(self, path: str) -> str:
        return self.web.url.rstrip("/") + path

    async def post(self, data: bytes, content_type: str = "application/json") -> tuple[int, Any]:
        async with self.session.post(
            self.url("/api/chat"), data=data, headers={"Content-Type": content_type}
        ) as resp:
            assert resp.content_type == "application/json"
            return resp.status, await resp.json()

    async def still_serving(self) -> None:
        async with self.session.get(self.url("/api/health")) as resp:
            assert resp.status == 200


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    data: Path = tmp_path_factory.mktemp("fuzz-web")
    store = SQLConversationStore(f"sqlite:///{data}/fuzz.db")
    await store.start()
    cache = MemoryCache()
    await cache.start()
    vectors, embedder = InMemoryVectorMemory(), FakeEmbedder()
    engine = Engine(
        llm=FakeLLM("Got it."),
        store=store,
        cache=cache,
        personas=PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store),
        recall=MemoryRecall(vectors, embedder, top_k=3, min_similarity=0.1),
        writer=MemoryWriter(store, vectors, embedder),
        config=EngineConfig(rate_limit_messages=0),
    )
    await engine.start()

    async def health() -> dict[str, ComponentHealth]:
        return {"store": ComponentHealth("store", "ok", "sqlite")}

    web = WebAdapter(engine, host="127.0.0.1", port=0, api_token=None, health=health, max_message_chars=LIMIT)
    await web.start()
    async with aiohttp.ClientSession() as session:
        yield Server(web, session, store, engine)
    await web.aclose()
    await engine.aclose()
    await cache.aclose()
    await store.aclose()


def assert_clear_error(status: int, body: Any) -> None:
    assert status in ERROR_STATUSES, (status, body)
    error = body["error"]
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and len(error["message"]) > 5


async def stored_user_turns(server: Server, user_id: str) -> list[str]:
    return [m.content for m in await server.store.user_messages(f"web:{user_id}") if m.role == "user"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
# Bodies shaped like a chat request, with every field possibly wrong.
request_like = st.fixed_dictionaries(
    {},
    optional={
        "message": st.text(max_size=60) | json_values,
        "user_id": st.text(max_size=140) | json_values,
        "user_name": st.text(max_size=80) | json_values,
        "conversation_id": st.text(max_size=140) | json_values,
        "stream": st.booleans() | json_values,
        "extra": json_values,
    },
)


@FUZZ
@given(message=st.text(max_size=LIMIT + 200) | st.sampled_from(["", " ", "\n\t", "x" * (LIMIT + 1)]))
async def test_every_valid_message_is_answered_and_stored_and_the_rest_refused(
    server: Server, message: str
) -> None:
    user_id = f"fuzz-{uuid.uuid4().hex}"
    body = json.dumps({"message": message, "user_id": user_id}).encode()
    status, answer = await server.post(body)
    text = message.strip()
    if text and len(text) <= LIMIT and "\x00" not in text:
        assert status == 200, answer
        assert answer["reply"] == "Got it."
        assert await stored_user_turns(server, user_id) == [text]
    else:
        assert_clear_error(status, answer)
        assert await stored_user_turns(server, user_id) == []


@FUZZ
@given(body=request_like | json_values)
async def test_arbitrary_json_gets_an_answer_or_a_clear_error(server: Server, body: Any) -> None:
    status, answer = await server.post(json.dumps(body).encode())
    if status == 200:
        assert isinstance(answer["reply"], str) and answer["reply"]
        user_id = body.get("user_id") or "web-user"
        assert body["message"].strip() in await stored_user_turns(server, user_id)
    else:
        assert_clear_error(status, answer)


EDGE_BODIES = [
    b'{"message": "\\ud800 lone surrogate"}',
    b'{"message": "hi", "user_name": "\\udfff"}',
    b'{"message": "\\u0000 nul byte"}',
    b'{"message": "hi", "message": 5}',
    b"[" * 5000,
    b'{"message": "' + "\u00e9".encode() * 3000 + b'"}',
    b"\xff\xfe{}",
]


@FUZZ
@given(
    data=st.binary(max_size=300) | st.sampled_from(EDGE_BODIES),
    content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
)
@example(data=EDGE_BODIES[0], content_type="application/json")
@example(data=EDGE_BODIES[1], content_type="application/json")
@example(data=EDGE_BODIES[2], content_type="application/json")
@example(data=EDGE_BODIES[3], content_type="application/json")
@example(data=EDGE_BODIES[4], content_type="application/json")
@example(data=EDGE_BODIES[5], content_type="application/json")
@example(data=EDGE_BODIES[6], content_type="application/json")
async def test_arbitrary_bytes_never_break_the_server(server: Server, data: bytes, content_type: str) -> None:
    status, answer = await server.post(data, content_type)
    if status != 200:
        assert_clear_error(status, answer)
    await server.still_serving()


@pytest.mark.parametrize(
    ("raw", "field"),
    [(EDGE_BODIES[0], "message"), (EDGE_BODIES[1], "user_name"), (EDGE_BODIES[2], "message")],
)
async def test_text_no_database_can_store_is_refused_naming_the_field(
    server: Server, raw: bytes, field: str
) -> None:
    status, answer = await server.post(raw)
    assert status == 400 and answer["error"]["field"] == field
    assert any(word in answer["error"]["message"].lower() for word in ("surrogate", "nul", "unicode"))


async def test_json_nested_too_deeply_is_a_clear_error(server: Server) -> None:
    status, answer = await server.post(EDGE_BODIES[4])
    assert status == 400 and answer["error"]["code"] == "invalid_json"
