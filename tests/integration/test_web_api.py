"""The web adapter's REST API: a real aiohttp server and client in front of a real Engine."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from adapters.web import WebAdapter
from engine.errors import LLMError
from engine.health import ComponentHealth, probe
from engine.pipeline import APOLOGY, EngineConfig
from storage.cache.memory import MemoryCache
from tests.fakes.ports import FakeLLM

if TYPE_CHECKING:
    from tests.integration.conftest import EngineKit, MakeEngine

REPLY = "Hello there, friend! It is lovely to hear from you today."
TOKEN = "s3cret-token-value"

HealthSource = Callable[[], Awaitable[Mapping[str, ComponentHealth]]]


def healthy(kit: EngineKit) -> HealthSource:
    async def check() -> Mapping[str, ComponentHealth]:
        store, llm, cache = await asyncio.gather(
            probe("store", "sqlite", kit.store.ping),
            probe("llm", kit.llm.name, kit.llm.ping),
            probe("cache", "memory", kit.cache.ping),
        )
        return {"store": store, "llm": llm, "cache": cache}

    return check


def fixed_health(**statuses: str) -> HealthSource:
    async def check() -> Mapping[str, ComponentHealth]:
        return {
            name: ComponentHealth(name, status, "test", "" if status == "ok" else "it is unplugged")  # type: ignore[arg-type]
            for name, status in statuses.items()
        }

    return check


class Client:
    """A started WebAdapter and an aiohttp session pointed at it."""

    def __init__(self, web: WebAdapter, session: aiohttp.ClientSession, kit: EngineKit) -> None:
        self.web = web
        self.session = session
        self.kit = kit

    def url(self, path: str) -> str:
        return self.web.url.rstrip("/") + path

    async def chat(
        self, body: Any, *, token: str | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        async with self.session.post(self.url("/api/chat"), json=body, headers=all_headers) as resp:
            return resp.status, await resp.json()

    async def post_raw(self, data: bytes, content_type: str) -> tuple[int, Any]:
        async with self.session.post(
            self.url("/api/chat"), data=data, headers={"Content-Type": content_type}
        ) as resp:
            return resp.status, await resp.json()

    async def stream(self, body: dict[str, Any]) -> tuple[int, str, list[dict[str, Any]]]:
        async with self.session.post(self.url("/api/chat"), json={**body, "stream": True}) as resp:
            lines = [json.loads(line) async for line in resp.content if line.strip()]
            return resp.status, resp.content_type, lines


Connect = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect(make_engine: MakeEngine) -> AsyncIterator[Connect]:
    async with AsyncExitStack() as stack:

        async def start(
            *,
            llm: FakeLLM | None = None,
            config: EngineConfig | None = None,
            api_token: str | None = None,
            health: HealthSource | None = None,
            max_message_chars: int = 8000,
            cache: MemoryCache | None = None,
        ) -> Client:
            kit = await make_engine(llm=llm or FakeLLM(REPLY), config=config, cache=cache)
            web = WebAdapter(
                kit.engine,
                host="127.0.0.1",
                port=0,
                api_token=api_token,
                health=health or healthy(kit),
                max_message_chars=max_message_chars,
            )
            await web.start()
            stack.push_async_callback(web.aclose)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            return Client(web, session, kit)

        yield start


# --- chat -----------------------------------------------------------------------------------


async def test_chat_round_trip_answers_and_stores_both_turns(connect: Connect) -> None:
    client = await connect()
    assert client.web.port > 0

    status, body = await client.chat({"message": "  Hi! I just adopted a puppy named Biscuit.  "})

    assert status == 200
    assert body["reply"] == REPLY
    assert body["kind"] == "answer"
    assert body["persona"] == "ember"
    assert body["llm_backend"] == "fake"
    assert set(body["timings"]) == {"context_ms", "first_token_ms", "llm_ms", "total_ms"}
    assert isinstance(body["memories_used"], list)
    assert "error" not in body

    await client.kit.engine.writer.drain()
    stored = await client.kit.store.recent_messages("web:web-user", 10)
    assert [(m.role, m.content) for m in stored] == [
        ("user", "Hi! I just adopted a puppy named Biscuit."),
        ("assistant", REPLY),
    ]
    assert stored[0].user_key == "web:web-user"
    assert stored[0].platform == "web"


async def test_memories_used_are_reported_with_provenance(connect: Connect) -> None:
    client = await connect()
    user = {"user_id": "alice", "user_name": "Alice"}
    await client.chat({**user, "message": "My sister Clara lives in Lisbon and teaches piano."})
    await client.kit.engine.writer.drain()

    status, body = await client.chat({**user, "message": "Where does my sister Clara live?"})

    assert status == 200
    assert body["memories_used"], "the earlier message should be recalled"
    hit = body["memories_used"][0]
    assert set(hit) == {"id", "text", "score", "created_at", "platform", "channel_id", "source_message_ids"}
    assert "Lisbon" in hit["text"]
    assert hit["platform"] == "web"
    assert hit["channel_id"] == "alice"
    assert hit["source_message_ids"]


async def test_streaming_sends_chunks_then_done(connect: Connect) -> None:
    client = await connect(llm=FakeLLM(REPLY, chunk_delay_s=0.001))

    status, content_type, lines = await client.stream({"message": "Tell me something nice."})

    assert status == 200
    assert content_type == "application/x-ndjson"
    chunks = [line for line in lines if line["type"] == "chunk"]
    assert len(chunks) > 2, "the reply should arrive in several chunks"
    assert "".join(c["text"] for c in chunks) == REPLY
    assert lines[-1]["type"] == "done"
    assert lines[-1]["reply"] == REPLY
    assert lines[-1]["kind"] == "answer"
    assert [line["type"] for line in lines].count("done") == 1


async def test_a_client_leaving_mid_stream_does_not_lose_the_reply(connect: Connect) -> None:
    client = await connect(llm=FakeLLM(REPLY, chunk_delay_s=0.02))

    async with client.session.post(
        client.url("/api/chat"), json={"message": "Start talking please.", "stream": True}
    ) as resp:
        first = json.loads(await resp.content.readline())
        assert first["type"] == "chunk"
        resp.close()

    engine = client.kit.engine
    for _ in range(500):  # the server finishes the reply on its own
        if engine.in_flight == 0:
            break
        await asyncio.sleep(0.01)
    await engine.writer.drain()
    stored = await client.kit.store.recent_messages("web:web-user", 10)
    assert [m.content for m in stored if m.role == "assistant"] == [REPLY]


async def test_user_and_conversation_ids_choose_the_conversation(connect: Connect) -> None:
    client = await connect()
    await client.chat({"message": "hello in a thread", "user_id": "bob", "conversation_id": "trip-2025"})
    # another caller naming the same conversation id gets a conversation of their own
    await client.chat({"message": "mallory was here", "user_id": "mallory", "conversation_id": "trip-2025"})
    await client.chat({"message": "hello in my own chat", "user_id": "bob"})
    await client.kit.engine.writer.drain()

    trip = await client.kit.store.recent_messages("web:bob.trip-2025", 10)
    assert [
        m.content
        for m in await client.kit.store.recent_messages("web:mallory.trip-2025", 10)
        if m.role == "user"
    ] == ["mallory was here"]
    own = await client.kit.store.recent_messages("web:bob", 10)
    assert [m.content for m in trip if m.role == "user"] == ["hello in a thread"]
    assert [m.content for m in own if m.role == "user"] == ["hello in my own chat"]
    assert {m.user_key for m in trip + own} == {"web:bob"}


async def test_one_users_conversation_is_not_in_anothers_prompt(connect: Connect) -> None:
    client = await connect()
    await client.chat({"message": "Hello, I'm Alice.", "user_id": "alice"})
    await client.chat({"message": "My locker code is zebra-4417, keep it secret", "user_id": "bob"})
    await client.kit.engine.writer.drain()

    status, _ = await client.chat({"message": "What did we talk about so far?", "user_id": "alice"})

    assert status == 200
    alice_prompt = "\n".join(m.content for m in client.kit.llm.prompts[-1])
    assert "Hello, I'm Alice." in alice_prompt
    assert "zebra-4417" not in alice_prompt


# --- failures of the engine's parts ----------------------------------------------------------


async def test_llm_failure_is_an_apology_and_the_message_is_kept(connect: Connect) -> None:
    client = await connect(llm=FakeLLM(fail_with=LLMError("boom: upstream said 502")))

    status, body = await client.chat({"message": "Are you there?"})

    assert status == 200
    assert body["kind"] == "apology"
    assert body["reply"] == APOLOGY
    assert "boom" not in json.dumps(body)
    await client.kit.engine.writer.drain()
    stored = await client.kit.store.recent_messages("web:web-user", 10)
    assert ("user", "Are you there?") in [(m.role, m.content) for m in stored]


async def test_rate_limit_answers_429_with_the_reply_text(connect: Connect) -> None:
    client = await connect(config=EngineConfig(rate_limit_messages=2))
    for i in range(2):
        status, _ = await client.chat({"message": f"message number {i}"})
        assert status == 200

    status, body = await client.chat({"message": "one too many"})
    assert status == 429
    assert body["kind"] == "rate_limited"
    assert "faster than I can keep up" in body["reply"]

    status, content_type, lines = await client.stream({"message": "and streamed"})
    assert status == 429
    assert content_type == "application/x-ndjson"
    assert lines[-1]["type"] == "done"
    assert lines[-1]["kind"] == "rate_limited"
    assert "".join(line["text"] for line in lines if line["type"] == "chunk") == lines[-1]["reply"]

    # Another user has their own allowance.
    status, _ = await client.chat({"message": "hi, I'm new", "user_id": "someone-else"})
    assert status == 200


class ExplodingCache(MemoryCache):
    """A cache whose reads fail with an error that is not one of ours."""

    async def tail(self, key: str, n: int) -> list[str]:
        raise RuntimeError("connection to 10.0.0.7 failed, password=hunter2")


@pytest.mark.parametrize("stream", [False, True])
async def test_unexpected_errors_are_500_without_internals(
    connect: Connect, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    client = await connect(cache=ExplodingCache())

    async with client.session.post(client.url("/api/chat"), json={"message": "hi", "stream": stream}) as resp:
        status, text = resp.status, await resp.text()

    assert status == 500
    assert json.loads(text) == {"error": {"code": "internal_error", "message": "internal server error"}}
    assert "hunter2" not in text
    assert "10.0.0.7" not in text
    assert "error answering POST /api/chat" in caplog.text


class CacheFailingAfterTheReply(MemoryCache):
    """A cache that fails when the finished reply is added to the recent turns."""

    async def push(self, key: str, value: str, max_len: int, ttl_s: float | None = None) -> None:
        if value.startswith('["assistant"'):
            raise RuntimeError("redis at 10.0.0.7 went away")
        await super().push(key, value, max_len, ttl_s)


async def test_an_error_after_streaming_began_ends_the_stream_with_an_error_line(connect: Connect) -> None:
    client = await connect(cache=CacheFailingAfterTheReply())

    status, _, lines = await client.stream({"message": "hello there"})

    assert status == 200
    assert "".join(line["text"] for line in lines if line["type"] == "chunk") == REPLY
    assert lines[-1] == {
        "type": "error",
        "error": {"code": "internal_error", "message": "internal server error"},
    }
    assert "done" not in [line["type"] for line in lines]


# --- authentication ---------------------------------------------------------------------------


async def test_token_is_required_when_set(connect: Connect) -> None:
    client = await connect(api_token=TOKEN)

    async with client.session.post(client.url("/api/chat"), json={"message": "hi"}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == "Bearer"
        assert (await resp.json())["error"]["code"] == "unauthorized"

    status, body = await client.chat({"message": "hi"}, token="wrong-token")
    assert status == 401
    assert body["error"]["message"] == "the bearer token is not valid"

    status, body = await client.chat({"message": "hi"}, headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401

    status, body = await client.chat({"message": "hi"}, token=TOKEN)
    assert status == 200
    assert body["reply"] == REPLY

    async with client.session.get(client.url("/api/health")) as resp:
        assert resp.status == 200
    async with client.session.get(client.url("/api/config")) as resp:
        assert (await resp.json())["token_required"] is True


async def test_unauthenticated_requests_are_refused_before_the_body_is_read(connect: Connect) -> None:
    client = await connect(api_token=TOKEN)

    status, body = await client.post_raw(b"{not json", "text/plain")

    assert status == 401
    assert body["error"]["code"] == "unauthorized"


async def test_no_token_configured_means_open_api(connect: Connect) -> None:
    client = await connect()
    async with client.session.get(client.url("/api/config")) as resp:
        assert await resp.json() == {"token_required": False, "max_message_chars": 8000}
    status, _ = await client.chat({"message": "hi"}, token="anything")
    assert status == 200


async def test_access_log_never_shows_the_token(connect: Connect, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    client = await connect(api_token=TOKEN)

    await client.chat({"message": "hi"}, token=TOKEN)
    await client.chat({"message": "hi"}, token="wrong-" + TOKEN)

    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("POST /api/chat" in line for line in access)
    assert TOKEN not in caplog.text


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"message": ""}, "message", "must not be empty"),
        ({"message": "   \n\t "}, "message", "must not be empty"),
        ({}, "message", "message is required"),
        ({"message": 42}, "message", "valid string"),
        ({"message": "hi", "mood": "happy"}, "mood", "unknown field 'mood'"),
        ({"message": "hi", "user_id": "has space"}, "user_id", "1-128 characters"),
        ({"message": "hi", "user_id": "x" * 129}, "user_id", "1-128 characters"),
        ({"message": "hi", "conversation_id": "a/b"}, "conversation_id", "1-128 characters"),
        ({"message": "hi", "user_name": "   "}, "user_name", "user_name"),
        ({"message": "hi", "stream": "yes"}, "stream", "stream"),
        (["message", "hi"], "body", "JSON object"),
    ],
)
async def test_invalid_requests_are_400_naming_the_field(
    connect: Connect, body: Any, field: str, fragment: str
) -> None:
    client = await connect()

    status, answer = await client.chat(body)

    assert status == 400
    assert answer["error"]["code"] == "invalid_request"
    assert answer["error"]["field"] == field
    assert fragment in answer["error"]["message"]
    assert client.kit.llm.prompts == []


async def test_malformed_json_is_400(connect: Connect) -> None:
    client = await connect()
    status, body = await client.post_raw(b'{"message": "hi"', "application/json")
    assert status == 400
    assert body["error"] == {"code": "invalid_json", "message": "the body is not valid JSON"}


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
async def test_wrong_content_type_is_415(connect: Connect, content_type: str) -> None:
    client = await connect()
    status, body = await client.post_raw(b'{"message": "hi"}', content_type)
    assert status == 415
    assert body["error"]["code"] == "unsupported_media_type"
    assert "application/json" in body["error"]["message"]


async def test_a_message_over_the_limit_is_413_with_the_limit(connect: Connect) -> None:
    client = await connect(max_message_chars=100)

    status, body = await client.chat({"message": "a" * 101})
    assert status == 413
    assert body["error"]["code"] == "message_too_long"
    assert body["error"]["field"] == "message"
    assert "101 characters; the limit is 100" in body["error"]["message"]

    status, body = await client.chat({"message": "é" * 100})
    assert status == 200


@pytest.mark.parametrize("declared", [True, False])
async def test_a_body_over_the_size_limit_is_413(connect: Connect, declared: bool) -> None:
    client = await connect(max_message_chars=100)
    payload = json.dumps({"message": "x" * 200_000}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(payload), 16_384):
            yield payload[start : start + 16_384]

    data: Any = payload if declared else chunked()
    async with client.session.post(
        client.url("/api/chat"), data=data, headers={"Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413
        body = await resp.json()
    assert body["error"]["code"] == "body_too_large"
    assert "at most 100 characters" in body["error"]["message"]


async def test_unknown_paths_and_methods_answer_json(connect: Connect) -> None:
    client = await connect()
    async with client.session.get(client.url("/api/nothing-here")) as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    async with client.session.get(client.url("/api/chat")) as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "method_not_allowed"
    async with client.session.get(client.url("/static/..%2fserver.py")) as resp:
        assert resp.status == 404


# --- health and the page -------------------------------------------------------------------------


async def test_health_reports_components_without_a_token(connect: Connect) -> None:
    client = await connect(api_token=TOKEN)

    async with client.session.get(client.url("/api/health")) as resp:
        assert resp.status == 200
        body = await resp.json()

    assert body["status"] == "ok"
    assert set(body["components"]) == {"store", "llm", "cache"}
    store = body["components"]["store"]
    assert store["status"] == "ok"
    assert store["backend"] == "sqlite"
    assert isinstance(store["latency_ms"], float)
    assert set(store) == {"status", "backend", "detail", "latency_ms"}


async def test_health_is_degraded_but_200_when_an_optional_part_is_down(connect: Connect) -> None:
    client = await connect(health=fixed_health(store="ok", llm="ok", vectors="down"))
    async with client.session.get(client.url("/api/health")) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert body["status"] == "degraded"
    assert body["components"]["vectors"] == {
        "status": "down",
        "backend": "test",
        "detail": "it is unplugged",
        "latency_ms": None,
    }


@pytest.mark.parametrize("core", ["store", "llm"])
async def test_health_is_503_when_a_core_part_is_down(connect: Connect, core: str) -> None:
    statuses = {"store": "ok", "llm": "ok", "cache": "ok", core: "down"}
    client = await connect(health=fixed_health(**statuses))
    async with client.session.get(client.url("/api/health")) as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["status"] == "down"
    assert body["components"][core]["status"] == "down"


async def test_health_of_a_failing_llm_probe(connect: Connect) -> None:
    client = await connect(llm=FakeLLM(fail_with=LLMError("model file missing")))
    async with client.session.get(client.url("/api/health")) as resp:
        assert resp.status == 503
        body = await resp.json()
    assert body["components"]["llm"]["status"] == "down"
    assert body["components"]["store"]["status"] == "ok"


async def test_the_page_and_its_assets_are_served(connect: Connect) -> None:
    client = await connect()
    async with client.session.get(client.web.url) as resp:
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        html = await resp.text()
    assert '<textarea id="message"' in html
    assert "/static/chat.js" in html
    assert "http://" not in html and "https://" not in html, "the page must not load anything remote"
    for name, kind in [("chat.js", "text/javascript"), ("chat.css", "text/css")]:
        async with client.session.get(client.url(f"/static/{name}")) as resp:
            assert resp.status == 200
            assert resp.content_type == kind
            assert "https://" not in await resp.text()
