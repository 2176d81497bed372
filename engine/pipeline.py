"""``Engine.handle``: one pipeline for every platform.

    message → middleware (ignore own messages, length limit, rate limit)
            → the account's identity (accounts linked with /link share one user_key:
              ``engine/identity.py``), which every step below uses
            → persist the user's message (before the LLM is called: nothing is lost)
            → context: recent turns (cache, else the store), the user's relevant memories,
              profile, persona, emotion — gathered concurrently (see "Concurrency" below)
            → prompt within the token budget (``engine/prompt.py``) → LLM, streamed to the
              caller until the reply ends (``engine/reply_cut.py``: stop sequences, length caps);
              with the tools the persona may use offered, run between requests when the model
              calls them (``engine/tools.py``)
            → after the reply: the reply joins the recent turns at once; storing it and
              writing memories happen in the background (``MemoryWriter``)

An LLM failure or timeout becomes a short apology (``ReplyKind.APOLOGY``); the error
goes to the log.

Concurrency within a conversation
    Storing the message, recall (embedding, vector and keyword search), the persona and the
    relationship do not depend on order: they start as soon as a message arrives. Only reading
    the recent turns and adding the message to them hold the conversation
    (``ConversationLocks``: FIFO, across processes with Redis), so every message sees the ones
    that arrived before it, and none after; stored messages are ordered by their platform
    timestamps. Generation then runs in parallel with the next messages. One account's
    messages in a conversation are still answered one after another (:class:`_ReplyChain`):
    the second waits for the reply to the first and has it in its prompt, as a person who
    sends two lines in a row expects. In a DM, where everyone is one person, that is strict
    order; in a busy channel only each person's own messages wait. While context is gathered,
    background writers give way (``ReplyPriority``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from engine.background import ReplyPriority
from engine.emotion import EmotionDetector, LexiconEmotionDetector
from engine.errors import BackendUnavailable, InputError, LLMError, StorageError, WriteRefused
from engine.events import (
    AIResponse,
    ChatMessage,
    MemoryHit,
    ReplyKind,
    Timings,
    Turn,
    UniversalMessage,
    new_id,
    utcnow,
)
from engine.identity import IdentityLinker, LinkCode, LinkResult
from engine.locks import LocalConversationLocks
from engine.memory import MemoryRecall, MemoryWriter, TurnRecord, memory_text
from engine.memory_care import MemoryCare
from engine.middleware import LengthLimit, Middleware, Next, RateLimiter, ignore_own_messages
from engine.persona import Persona, PersonaSelector
from engine.ports import (
    LLM,
    Cache,
    ConversationLocks,
    ConversationStore,
    Metrics,
    NoMetrics,
    StoredMessage,
    ToolCallingLLM,
    UserProfile,
    Vector,
)
from engine.prompt import HistoryWindows, PromptBudget, PromptStyle, build_prompt, estimate_tokens
from engine.reasoning import ReasoningFilter
from engine.relationship import RELATIONSHIP_SETTING, Observation, RelationshipProfile, RelationshipTracker
from engine.reply import ReplyStream
from engine.reply_cut import ReplyCutter, wants_long_reply
from engine.tools import ToolingStream, ToolRunner
from engine.user_settings import USER_SETTINGS

logger = logging.getLogger(__name__)


APOLOGY = "Sorry, I couldn't come up with a reply just now. Please try again in a moment."
PREVIOUS_REPLY_WAIT_S = 300.0
"""How long a message waits for the reply to the same person's previous one before it goes ahead."""
NOT_SAVED = "Sorry, I can't save messages right now, so I didn't take this one in. Please try again later."


@dataclass(frozen=True, slots=True)
class EngineConfig:
    budget: PromptBudget = field(default_factory=PromptBudget)
    temperature: float = 0.7
    recent_turns: int = 20
    rate_limit_messages: int = 10
    rate_limit_window_s: float = 60.0
    turns_ttl_s: float = 6 * 3600
    max_message_chars: int = 8000
    prompt_style: PromptStyle = "full"
    reply_max_sentences: int | None = None
    """A usual reply ends after this many sentences (None: no cap); not when asked for more."""
    reply_max_tokens: int | None = None
    """A usual reply's token cap (None: ``budget.reply_tokens``, which a reply asked to be
    longer gets)."""
    max_preparing: int = 16
    """Messages gathering their context at once; the rest wait their turn (FIFO). Bounds what a
    burst asks of the database, the vector store and the embedder at one time."""


def _turn_to_json(turn: Turn) -> str:
    return json.dumps([turn.role, turn.content, turn.user_name, turn.timestamp.isoformat()])


def _turn_from_json(raw: str) -> Turn:
    role, content, user_name, ts = json.loads(raw)
    return Turn(role=role, content=content, user_name=user_name, timestamp=datetime.fromisoformat(ts))


class Engine:
    """The bot's brain, shared by every adapter."""

    def __init__(
        self,
        *,
        llm: LLM,
        store: ConversationStore,
        cache: Cache,
        personas: PersonaSelector,
        recall: MemoryRecall,
        writer: MemoryWriter,
        config: EngineConfig | None = None,
        emotion: EmotionDetector | None = None,
        middleware: Sequence[Middleware] | None = None,
        bot_name: str = "assistant",
        relationships: RelationshipTracker | None = None,
        care: MemoryCare | None = None,
        metrics: Metrics | None = None,
        locks: ConversationLocks | None = None,
        identity: IdentityLinker | None = None,
        priority: ReplyPriority | None = None,
        tools: ToolRunner | None = None,
    ) -> None:
        self.llm = llm
        # tools of MCP servers, offered to the model as each persona allows; None: no tools
        self.tools = tools
        # replies being prepared go before background work that shares it (the memory writer)
        self.priority = priority or ReplyPriority()
        # linked accounts resolve to one identity; None: every account is its own identity
        self.identity = identity
        # one message per conversation at a time, in arrival order (across processes with Redis)
        self.locks: ConversationLocks = locks or LocalConversationLocks()
        self.metrics = metrics or NoMetrics()
        self.care = care
        self.store = store
        self.cache = cache
        self.personas = personas
        self.recall = recall
        self.writer = writer
        self.config = config = config or EngineConfig()
        self.emotion = emotion or LexiconEmotionDetector()
        self.bot_name = bot_name
        self.relationships = relationships or RelationshipTracker(store)
        self.middleware: list[Middleware] = (
            list(middleware)
            if middleware is not None
            else [
                ignore_own_messages,
                LengthLimit(config.max_message_chars),
                RateLimiter(
                    cache, max_messages=config.rate_limit_messages, window_s=config.rate_limit_window_s
                ),
            ]
        )
        self.in_flight = 0
        self._replies = _ReplyChain()
        self._history = HistoryWindows()  # where each conversation's shown history starts
        self._preparing = asyncio.Semaphore(config.max_preparing)

    async def start(self) -> None:
        await self.writer.start()
        await self.relationships.start()
        if self.care is not None:
            await self.care.start()

    async def aclose(self) -> None:
        if self.care is not None:
            await self.care.aclose()
        await self.writer.aclose()
        await self.relationships.aclose()

    async def read_persona(self) -> None:
        """Have the model read the default persona's part of the prompt, with which every
        conversation's prompt starts: a model that keeps what it read (llama.cpp in this
        process) then reads only the rest of the first reply's prompt. A failure is logged."""
        try:
            persona = await self.personas.default()  # the owner's stored choice, if any
        except (StorageError, BackendUnavailable) as exc:
            logger.warning("could not read the stored default persona; reading DEFAULT_PERSONA's: %s", exc)
            persona = self.personas.library.default
        prompt = build_prompt(
            persona=persona,
            user_message="Hi!",
            user_name="someone",
            turns=[],
            memories=[],
            profile=None,
            budget=self.config.budget,
            style=self.config.prompt_style,
        )
        try:
            stream = self.llm.stream(prompt.messages, max_tokens=1, temperature=self.config.temperature)
            try:
                async for _ in stream:
                    break
            finally:
                await _close_stream(stream)
        except (LLMError, BackendUnavailable) as exc:
            logger.warning("the model could not read the persona ahead of the first reply: %s", exc)

    # --- the pipeline ---------------------------------------------------------------

    def handle(
        self, message: UniversalMessage, *, on_placed: Callable[[], None] | None = None
    ) -> ReplyStream:
        """Answer one message; iterate the result for chunks, or ``await .collect()``.

        ``on_placed`` is called once the message holds its place in the conversation (it has
        the conversation's lock), or once it is known that it never will (middleware answered
        it): from then on a later message may be handed to the engine without overtaking it.
        An adapter that prepares messages concurrently uses it to hand them over in arrival
        order."""
        return ReplyStream(self._through_middleware(message, _Once(on_placed)))

    async def _through_middleware(
        self, message: UniversalMessage, placed: _Once
    ) -> AsyncIterator[str | AIResponse]:
        async def answer(msg: UniversalMessage) -> ReplyStream:
            return ReplyStream(self._answer(msg, placed))

        call: Next = answer
        for layer in reversed(self.middleware):
            call = _bind(layer, call)
        try:
            stream = await call(message)
            async for item in stream._raw():
                yield item
        finally:
            placed()  # answered by middleware, or failed before its turn
        self.metrics.message_handled(message.platform, str(stream.response.kind))

    async def _answer(self, message: UniversalMessage, placed: _Once) -> AsyncIterator[str | AIResponse]:
        started = time.perf_counter()
        self.in_flight += 1
        try:
            try:
                # A conversation's lock is only ever waited for by a message that holds a slot,
                # and its holder has one too: the bound cannot deadlock.
                async with self._preparing:
                    with self.priority.reply():  # background writers wait while context is gathered
                        context = await self._context(message, placed)
            except WriteRefused as exc:  # not stored: say so rather than answer and forget it
                logger.error(
                    "message of %s in %s refused: %s", message.user_key, message.conversation_key, exc
                )
                yield NOT_SAVED
                yield AIResponse(content=NOT_SAVED, kind=ReplyKind.APOLOGY, error=str(exc))
                return
            try:
                async for item in self._reply(message, context, started):
                    yield item
            finally:
                context.reply_link.finish()
        finally:
            self.in_flight -= 1

    async def _context(self, message: UniversalMessage, placed: _Once) -> _Context:
        """Everything the prompt needs. Only the recent turns hold the conversation (in arrival
        order); the rest runs while the message waits for its turn."""
        user_key = await self.resolve_user_key(message.user_key)  # linked accounts: one identity
        stored = StoredMessage(
            id=stored_message_id(message),
            conversation_key=message.conversation_key,
            user_key=user_key,
            role="user",
            content=message.content,
            user_name=message.user_name,
            platform=message.platform,
            channel_id=message.channel_id,
            guild_id=message.guild_id,
            thread_id=message.thread_id,
            platform_message_id=message.message_id,
            created_at=message.timestamp,
        )
        # Stored before the LLM is called (nothing is lost), alongside everything that does not
        # depend on the conversation's order, all started while the message waits for its turn.
        unordered = [
            asyncio.ensure_future(a)
            for a in (
                self._persist_user_message(message, stored),
                self._recall(message, user_key),
                self._persona(message),
                self._relationship(user_key),
            )
        ]
        reply_link: _ReplyLink | None = None
        try:
            async with self.locks.hold(message.conversation_key):
                placed()
                reply_link = self._replies.join(message.conversation_key, message.user_key)
                # history read before this message joins it, then joined: in arrival order
                turns = await self._recent_turns(message.conversation_key, before=stored)
                turn = Turn("user", message.content, message.user_name, message.timestamp)
                await self._remember_turn(message.conversation_key, turn)
            profile, (memories, embedding), persona, relationship = await _all_of(*unordered)
        except BaseException:
            if reply_link is not None:  # no reply will come: the account's next message goes on
                reply_link.finish()
            raise
        finally:
            await _settle(unordered)
        # The recall embedding ("Name: content") doubles as the classifier's input: no second model run.
        emotion = (await self.emotion.detect(message.content, embedding)).label
        return _Context(
            user_key=user_key,
            stored=stored,
            profile=profile,
            turns=turns,
            memories=memories,
            embedding=embedding,
            persona=persona,
            relationship=relationship.with_profile(profile) if relationship is not None else None,
            emotion=emotion,
            reply_link=reply_link,
        )

    async def _reply(
        self, message: UniversalMessage, context: _Context, started: float
    ) -> AsyncIterator[str | AIResponse]:
        """The prompt, once the reply to this account's previous message (if still coming) is
        there, then the LLM's answer, streamed; the turn goes to the background writer."""
        turns, persona, profile, user_key = context.turns, context.persona, context.profile, context.user_key
        previous_reply = await context.reply_link.previous()
        if previous_reply is not None and previous_reply not in turns:  # came after the snapshot
            turns = [*turns, previous_reply]
        config = self.config
        long_reply = wants_long_reply(message.content)
        prompt = build_prompt(
            persona=persona,
            user_message=message.content,
            user_name=message.user_name,
            turns=turns,
            memories=context.memories,
            profile=profile,
            budget=self.config.budget,
            emotion=context.emotion,
            group_chat=not message.is_direct,
            relationship=context.relationship,
            style=config.prompt_style,
            history_from=self._history.get(message.conversation_key),
            long_reply=long_reply,
        )
        self._history.put(message.conversation_key, prompt.first_turn)
        context_done = time.perf_counter()

        parts: list[str] = []
        first_token = 0.0
        kind, error = ReplyKind.ANSWER, None
        max_tokens = config.budget.reply_tokens
        if not long_reply and config.reply_max_tokens is not None:
            max_tokens = min(max_tokens, config.reply_max_tokens)
        stream = self._llm_stream(prompt.messages, persona, message, max_tokens)
        reasoning = ReasoningFilter()  # a reasoning model's <think> blocks are never shown or kept
        cutter = ReplyCutter(  # stop sequences, the sentence cap, whole sentences at the token cap
            stop=prompt.stop,
            max_sentences=None if long_reply else config.reply_max_sentences,
            max_chunks=max_tokens,
        )
        try:
            async for raw in stream:
                chunk = cutter.feed(reasoning.feed(raw))
                if chunk:
                    if not parts:
                        first_token = time.perf_counter()
                    parts.append(chunk)
                    yield chunk
                if cutter.done:
                    break
            if tail := cutter.end("" if cutter.done else reasoning.end()):
                parts.append(tail)
                yield tail
        except (LLMError, BackendUnavailable) as exc:
            logger.error("LLM failed for %s in %s: %s", message.user_key, message.conversation_key, exc)
            kind, error = ReplyKind.APOLOGY, str(exc)
            apology = ("\n\n" if parts else "") + APOLOGY
            parts.append(apology)
            yield apology
        finally:
            await _close_stream(stream)  # read to its end, or left early: the backend stops
        llm_done = time.perf_counter()
        backend = getattr(stream, "backend", None) or self.llm.name
        streamed = parts[:-1] if kind is ReplyKind.APOLOGY else parts
        if streamed:
            self.metrics.llm_streamed(
                backend, chunks=len(streamed), approx_tokens=estimate_tokens("".join(streamed))
            )

        content = "".join(parts).strip()
        if not content:
            kind, content = ReplyKind.APOLOGY, APOLOGY
            yield APOLOGY
        reply = StoredMessage(
            id=new_id(),
            conversation_key=message.conversation_key,
            user_key=user_key,
            role="assistant",
            content=content,
            user_name=self.bot_name,
            platform=message.platform,
            channel_id=message.channel_id,
            guild_id=message.guild_id,
            thread_id=message.thread_id,
            created_at=utcnow(),
        )
        reply_turn = Turn("assistant", content, self.bot_name, reply.created_at)
        await self._remember_turn(message.conversation_key, reply_turn)
        context.reply_link.finish(reply_turn)
        await self.writer.submit(
            TurnRecord(
                user_message=context.stored,
                reply=reply,
                embedding=context.embedding,
                # used = shown to the model, not merely found
                recalled_ids=tuple(hit.memory_id for hit in prompt.memories_included),
                # keyword context from the turn before, in a DM only: in a channel that turn may
                # be someone else's, whose words must not live on in this user's memories
                follows=memory_text(turns[-1].user_name, turns[-1].content)
                if turns and message.is_direct
                else "",
            )
        )
        if profile is not None:  # only users the store knows; the tracker writes in the background
            self.relationships.observe(
                Observation(user_key, message.content, context.emotion, profile, message.timestamp)
            )
        ms = 1000.0
        self.metrics.reply_timed(
            message.platform,
            total_s=time.perf_counter() - started,
            first_token_s=(first_token - started) if first_token else None,
        )
        yield AIResponse(
            content=content,
            kind=kind,
            persona=persona.name,
            emotion=context.emotion,
            memories_used=prompt.memories_included,
            timings=Timings(
                context_ms=(context_done - started) * ms,
                first_token_ms=((first_token or llm_done) - context_done) * ms,
                llm_ms=(llm_done - context_done) * ms,
                total_ms=(time.perf_counter() - started) * ms,
            ),
            # a fallback chain says which of its backends answered this reply
            llm_backend=backend,
            error=error,
        )

    def _llm_stream(
        self, messages: Sequence[ChatMessage], persona: Persona, message: UniversalMessage, max_tokens: int
    ) -> AsyncIterator[str]:
        """The model's reply: with the tools the persona may use, when there are any."""
        temperature = self.config.temperature
        offered = self.tools.offered(persona.tools) if self.tools is not None else []
        if self.tools is None or not offered or not isinstance(self.llm, ToolCallingLLM):
            return self.llm.stream(messages, max_tokens=max_tokens, temperature=temperature)
        return ToolingStream(
            self.llm,
            messages,
            runner=self.tools,
            offered=offered,
            max_tokens=max_tokens,
            temperature=temperature,
            where=message.conversation_key,
        )

    # --- context ----------------------------------------------------------------------

    async def _persist_user_message(
        self, message: UniversalMessage, stored: StoredMessage
    ) -> UserProfile | None:
        platform, user_id = message.platform, message.user_id
        if stored.user_key != message.user_key:  # a linked account: the identity's own names
            platform, _, user_id = stored.user_key.partition(":")
        try:
            profile = await self.store.touch_user(
                stored.user_key,
                platform=platform,
                user_id=user_id,
                display_name=message.user_name,
                seen_at=message.timestamp,
            )
            await self.store.add_message(stored)
        except WriteRefused:
            raise
        except (StorageError, BackendUnavailable):
            logger.exception("could not store message %s of %s", stored.id, message.user_key)
            return None
        return profile

    async def _persona(self, message: UniversalMessage) -> Persona:
        try:
            return await self.personas.for_message(message)
        except (StorageError, BackendUnavailable):
            logger.exception("could not read the persona of %s; using the default", message.conversation_key)
            return self.personas.library.default

    async def _relationship(self, user_key: str) -> RelationshipProfile | None:
        try:
            return await self.relationships.get(user_key)
        except (StorageError, BackendUnavailable):
            logger.exception("could not load the relationship with %s; answering without it", user_key)
            return None

    async def _recent_turns(self, conversation_key: str, *, before: StoredMessage) -> list[Turn]:
        """The conversation's recent turns (held in arrival order by the cache); when the cache
        has none (expired, lost), the stored turns older than ``before``: messages stored
        meanwhile by the conversation's next messages, which join the turns themselves, are
        left out."""
        if self.config.recent_turns <= 0:
            return []
        raw = await self.cache.tail(f"turns:{conversation_key}", self.config.recent_turns)
        if raw:
            return [_turn_from_json(item) for item in raw]
        try:
            rows = await self.store.recent_messages(conversation_key, self.config.recent_turns)
        except (StorageError, BackendUnavailable):
            logger.exception("could not load recent turns of %s", conversation_key)
            return []
        turns = [
            Turn(m.role, m.content, m.user_name, m.created_at)
            for m in rows
            if m.id != before.id and m.created_at < before.created_at
        ]
        for turn in turns:
            await self._remember_turn(conversation_key, turn)
        return turns

    async def _remember_turn(self, conversation_key: str, turn: Turn) -> None:
        if self.config.recent_turns > 0:
            await self.cache.push(
                f"turns:{conversation_key}",
                _turn_to_json(turn),
                self.config.recent_turns,
                self.config.turns_ttl_s,
            )

    async def add_assistant_message(self, message: StoredMessage) -> None:
        """Store a message the bot wrote on its own (a check-in) as a turn of its conversation,
        so the conversation goes on from it. Cached turns are extended only where they exist:
        an empty cache is filled from the store, which then has it."""
        await self.store.add_message(message)
        if self.config.recent_turns > 0 and await self.cache.tail(f"turns:{message.conversation_key}", 1):
            turn = Turn(message.role, message.content, message.user_name, message.created_at)
            await self._remember_turn(message.conversation_key, turn)

    async def _recall(
        self, message: UniversalMessage, user_key: str
    ) -> tuple[list[MemoryHit], Vector | None]:
        """The user's memories relevant to the message, and the message's embedding."""
        if not message.content.strip():
            return [], None
        try:
            # Dense recall embeds the text a memory would have; keyword search matches the words.
            return await self.recall.search(
                user_key, message.content, embed_text=memory_text(message.user_name, message.content)
            )
        except (StorageError, BackendUnavailable):
            logger.exception("memory recall failed for %s; answering without it", user_key)
            return [], None

    # --- linked accounts --------------------------------------------------------------

    async def resolve_user_key(self, user_key: str) -> str:
        """The identity an account belongs to: the canonical user_key of linked accounts, else
        the account's own. When the link records cannot be read, the account's own."""
        if self.identity is None:
            return user_key
        try:
            return await self.identity.resolve(user_key)
        except (StorageError, BackendUnavailable):
            logger.exception("could not resolve the identity of %s; using the account itself", user_key)
            return user_key

    def _linker(self) -> IdentityLinker:
        if self.identity is None:
            raise InputError("Linking accounts isn't available on this bot.")
        return self.identity

    async def start_link(self, user_key: str) -> LinkCode:
        """A one-time code that links another account to this one (see ``engine/identity.py``)."""
        return await self._linker().issue_code(user_key)

    async def link_accounts(self, user_key: str, code: str) -> LinkResult:
        """Link the account ``user_key`` to the one that was given ``code``: its data joins that
        identity. LinkRefused (an InputError) says why a code is refused."""

        async def settle() -> None:
            await self.writer.drain()
            await self.relationships.drain()

        result = await self._linker().redeem(user_key, code, settle=settle)
        self.relationships.forget(result.merged)
        self.relationships.forget(result.canonical)
        return result

    async def linked_accounts(self, user_key: str) -> list[str]:
        """Every account of the identity ``user_key`` belongs to, the canonical one first."""
        if self.identity is None:
            return [user_key]
        return await self.identity.accounts(user_key)

    # --- a user's own data ----------------------------------------------------------

    async def export_user(self, user_key: str) -> dict[str, object]:
        """Everything held about a user (all their linked accounts), as one JSON-ready document."""
        accounts = await self.linked_accounts(user_key)
        user_key = accounts[0]
        await self.writer.drain()
        await self.relationships.drain()
        profile = await self.store.get_user(user_key)
        messages = await self.store.user_messages(user_key, limit=1_000_000)
        memories = await self._export_memories(user_key)
        settings: dict[str, Any] = {}
        for key in USER_SETTINGS:
            value = await self.store.get_setting(user_key, key)
            if value is not None:
                settings[key] = value
        relationship = (
            None
            if profile is None and RELATIONSHIP_SETTING not in settings
            else (await self.relationships.get(user_key, profile)).to_json()
        )
        return {
            "user_key": user_key,
            "linked_accounts": accounts[1:],
            "exported_at": utcnow().isoformat(),
            "profile": None if profile is None else _jsonable(asdict(profile)),
            "relationship": relationship,
            "settings": settings,
            "messages": [_jsonable(asdict(m)) for m in messages],
            "memories": memories,
        }

    async def _export_memories(self, user_key: str) -> list[dict[str, Any]]:
        """The user's memories, superseded ones included (history) with their care fields."""
        memories = [_jsonable(asdict(m)) for m in await self.store.list_memories(user_key, limit=1_000_000)]
        states = {s.id: s for s in await self.store.memory_states(user_key)}
        for memory in memories:
            state = states.get(memory["id"])
            if state is not None:
                memory.update(
                    superseded_by=state.superseded_by,
                    mentions=state.mentions,
                    use_count=state.use_count,
                    last_used_at=state.last_used_at.isoformat() if state.last_used_at else None,
                    updated_at=state.updated_at.isoformat(),
                )
        return memories

    async def forget_user(self, user_key: str) -> int:
        """Erase everything held about a user, on every linked account: rows, vectors, cached
        turns, counters and the links themselves."""
        accounts = await self.linked_accounts(user_key)
        await self.writer.drain()
        await self.relationships.drain()
        removed = 0
        for account in accounts:
            messages = await self.store.user_messages(account, limit=100_000)
            conversations = {m.conversation_key for m in messages}
            removed += await self.store.forget_user(account)
            self.relationships.forget(account)
            await self.recall.forget(account)
            for conversation in conversations:
                await self.cache.delete(f"turns:{conversation}")
            await self.cache.delete_prefix(f"rl:{account}:")
        if self.identity is not None:
            await self.identity.forget(accounts)
        return removed


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v.isoformat() if isinstance(v, datetime) else list(v) if isinstance(v, tuple) else v
        for k, v in row.items()
    }


def stored_message_id(message: UniversalMessage) -> str:
    """A stable id per platform message, so a redelivered message is stored once."""
    digest = hashlib.sha256(f"{message.platform}:{message.channel_id}:{message.message_id}".encode())
    return digest.hexdigest()[:32]


async def _close_stream(stream: AsyncIterator[str]) -> None:
    close = getattr(stream, "aclose", None)
    if close is not None:
        await close()


async def _all_of(*awaitables: Awaitable[Any]) -> list[Any]:
    """Like ``asyncio.gather``, but when one fails the others still run to the end before the
    first failure is raised: none is left behind holding a store connection."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    await asyncio.wait(tasks)
    errors = [t.exception() for t in tasks]
    for error in errors:
        if error is not None:
            raise error
    return [t.result() for t in tasks]


class _Once:
    """Calls ``callback`` the first time it is called, then never again."""

    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None] | None) -> None:
        self._callback = callback

    def __call__(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


@dataclass(frozen=True, slots=True)
class _Context:
    """What ``Engine._context`` gathered for one message's prompt."""

    user_key: str
    stored: StoredMessage
    profile: UserProfile | None
    turns: list[Turn]
    memories: list[MemoryHit]
    embedding: Vector | None
    persona: Persona
    relationship: RelationshipProfile | None
    emotion: str
    reply_link: _ReplyLink


async def _settle(tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Cancel the tasks not done yet and wait until every one has finished."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class _ReplyLink:
    """One message's link in its account's chain of replies in a conversation."""

    __slots__ = ("_before", "done")

    def __init__(self, before: asyncio.Future[Turn | None] | None) -> None:
        self._before = before
        self.done: asyncio.Future[Turn | None] = asyncio.get_running_loop().create_future()

    async def previous(self, wait_s: float = PREVIOUS_REPLY_WAIT_S) -> Turn | None:
        """Wait for the reply to the account's previous message; that reply (None: none came,
        or it took longer than ``wait_s``, a stream its consumer left unfinished)."""
        if self._before is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(self._before), wait_s)
        except TimeoutError:
            return None

    def finish(self, reply: Turn | None = None) -> None:
        """This message is answered (``reply``) or will not be (None); idempotent."""
        if not self.done.done():
            self.done.set_result(reply)


class _ReplyChain:
    """Orders the replies to one account's messages in a conversation (the engine's docstring)."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], asyncio.Future[Turn | None]] = {}

    def join(self, conversation_key: str, user_key: str) -> _ReplyLink:
        key = (conversation_key, user_key)
        link = _ReplyLink(self._last.get(key))
        self._last[key] = link.done

        def forget(done: asyncio.Future[Turn | None]) -> None:
            if self._last.get(key) is done:
                del self._last[key]

        link.done.add_done_callback(forget)
        return link


def _bind(layer: Middleware, call_next: Next) -> Next:
    async def call(message: UniversalMessage) -> ReplyStream:
        return await layer(message, call_next)

    return call
