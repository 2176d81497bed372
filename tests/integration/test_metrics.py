"""``GET /metrics``: the engine's metrics through the real web server, in Prometheus format."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.web import WebAdapter
from bot.metrics import PrometheusMetrics
from config.settings import PACKAGED_PERSONAS
from engine.errors import LLMError
from engine.health import ComponentHealth
from engine.llm import ResilientLLM
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from storage.cache.memory import MemoryCache
from storage.sql import SQLConversationStore
from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory

TOKEN = "metrics-token-Jf83kQ"
REPLY = "Hello there, it is good to see you again today."


class NamedLLM(FakeLLM):
    def __init__(self, name: str, reply: str = REPLY, **kwargs: object) -> None:
        super().__init__(reply, **kwargs)  # type: ignore[arg-type]
        self._name = name

    @property
    def name(self) -> str:
        return self._name


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Server:
    def __init__(self, web: WebAdapter, session: aiohttp.ClientSession, engine: Engine) -> None:
        self.web, self.session, self.engine = web, session, engine

    def url(self, path: str) -> str:
        return self.web.url.rstrip("/") + path

    async def chat(self, message: str, *, user: str = "alice", stream: bool = False) -> int:
        async with self.session.post(
            self.url("/api/chat"),
            json={"message": message, "user_id": user, "stream": stream},
            headers={"Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            await resp.read()
            return resp.status

    async def scrape(self, token: str | None = TOKEN) -> tuple[int, str, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.get(self.url("/metrics"), headers=headers) as resp:
            return resp.status, resp.headers["Content-Type"], await resp.text()

    async def samples(self) -> Samples:
        status, _, text = await self.scrape()
        assert status == 200, text
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }


Start = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    async with AsyncExitStack() as stack:

        async def make(*backends: FakeLLM, rate_limit: int = 10) -> Server:
            store = SQLConversationStore(f"sqlite:///{tmp_path}/metrics.db")
            await store.start()
            stack.push_async_callback(store.aclose)
            cache = MemoryCache()
            await cache.start()
            stack.push_async_callback(cache.aclose)
            vectors, embedder = InMemoryVectorMemory(), FakeEmbedder()
            llm = ResilientLLM(list(backends) or [NamedLLM("primary")], timeout_s=5, max_retries=0)
            metrics = PrometheusMetrics()
            engine = Engine(
                llm=llm,
                store=store,
                cache=cache,
                personas=PersonaSelector(
                    PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store
                ),
                recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.1),
                writer=MemoryWriter(store, vectors, embedder),
                config=EngineConfig(rate_limit_messages=rate_limit),
                metrics=metrics,
            )
            await engine.start()
            stack.push_async_callback(engine.aclose)
            metrics.watch_queue("memory_writer", lambda: engine.writer.depth)
            metrics.watch_queue("relationship_tracker", lambda: engine.relationships.depth)
            metrics.watch_llm(llm.stats)

            async def health() -> dict[str, ComponentHealth]:
                return {"store": ComponentHealth("store", "ok", "sqlite")}

            web = WebAdapter(
                engine, host="127.0.0.1", port=0, api_token=TOKEN, health=health, metrics=metrics
            )
            await web.start()
            stack.push_async_callback(web.aclose)
            session = await stack.enter_async_context(aiohttp.ClientSession())
            return Server(web, session, engine)

        yield make


def label(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


async def test_metrics_count_messages_latency_and_streamed_tokens(start: Start) -> None:
    server = await start()
    assert await server.chat("hi there") == 200
    assert await server.chat("tell me more", stream=True) == 200
    await server.engine.writer.drain()
    samples = await server.samples()

    web = label(platform="web")
    assert samples[("whisperengine_messages_handled_total", label(platform="web", kind="answer"))] == 2
    assert samples[("whisperengine_reply_seconds_count", web)] == 2
    assert samples[("whisperengine_reply_seconds_sum", web)] > 0
    assert samples[("whisperengine_reply_first_token_seconds_count", web)] == 2
    # each reply of the fake model is one chunk per word
    words = len(REPLY.split())
    assert samples[("whisperengine_llm_chunks_total", label(backend="primary"))] == 2 * words
    assert samples[("whisperengine_llm_tokens_total", label(backend="primary"))] >= 2 * len(REPLY) / 4
    assert samples[("whisperengine_queue_depth", label(queue="memory_writer"))] == 0
    assert ("whisperengine_queue_depth", label(queue="relationship_tracker")) in samples
    assert samples[("whisperengine_llm_errors_total", label(backend="primary"))] == 0


async def test_errors_are_counted_per_backend_and_apologies_by_kind(start: Start) -> None:
    broken = NamedLLM("broken", fail_with=LLMError("HTTP 500 from the model server"))
    spare = NamedLLM("spare")
    server = await start(broken, spare)
    assert await server.chat("first") == 200
    samples = await server.samples()
    assert samples[("whisperengine_llm_errors_total", label(backend="broken"))] == 1
    assert samples[("whisperengine_llm_errors_total", label(backend="spare"))] == 0
    assert samples[("whisperengine_llm_attempts_total", label(backend="spare"))] == 1
    assert samples[("whisperengine_llm_chunks_total", label(backend="spare"))] == len(REPLY.split())

    spare.fail_with = LLMError("HTTP 503")
    assert await server.chat("second") == 200  # an apology
    samples = await server.samples()
    assert samples[("whisperengine_messages_handled_total", label(platform="web", kind="apology"))] == 1
    assert samples[("whisperengine_llm_errors_total", label(backend="spare"))] == 1


async def test_rate_limited_messages_are_counted_without_an_llm_call(start: Start) -> None:
    server = await start(rate_limit=1)
    assert await server.chat("one") == 200
    assert await server.chat("two") == 429
    samples = await server.samples()
    assert samples[("whisperengine_messages_handled_total", label(platform="web", kind="rate_limited"))] == 1
    assert samples[("whisperengine_reply_seconds_count", label(platform="web"))] == 1


async def test_metrics_need_the_api_token_when_one_is_set(start: Start) -> None:
    server = await start()
    status, _, body = await server.scrape(token=None)
    assert status == 401 and "whisperengine" not in body
    status, _, _ = await server.scrape(token="wrong-token")
    assert status == 401
    status, content_type, body = await server.scrape()
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    assert "# TYPE whisperengine_reply_seconds histogram" in body
