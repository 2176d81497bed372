"""Two engines (as two processes would have them: their own connections) sharing one Redis and one
PostgreSQL database: a conversation's messages take their place in one order whichever engine
answers them, their replies are written in parallel, and the rate limit counts a user's messages
wherever they arrive."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack

import pytest

from config.settings import PACKAGED_PERSONAS
from engine.events import ChatMessage, ReplyKind, UniversalMessage
from engine.memory import MemoryRecall, MemoryWriter
from engine.persona import PersonaLibrary, PersonaSelector
from engine.pipeline import Engine, EngineConfig
from storage.cache.locks import RedisConversationLocks
from storage.cache.redis import RedisCache
from storage.sql import SQLConversationStore
from tests.conftest import fresh_postgres_database, require_redis
from tests.fakes.ports import FakeEmbedder, FakeLLM, InMemoryVectorMemory


class OverlapLLM(FakeLLM):
    """Streams slowly and records how many replies it was writing at once."""

    def __init__(self) -> None:
        super().__init__("Sure, let me think about that for a moment.", chunk_delay_s=0.005)
        self.inside = 0
        self.most = 0

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            async for piece in super().stream(messages, max_tokens=max_tokens, temperature=temperature):
                yield piece
        finally:
            self.inside -= 1


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    with fresh_postgres_database("we_shared_redis") as url:
        yield url


async def start_engine(
    stack: AsyncExitStack, database_url: str, prefix: str, llm: FakeLLM, config: EngineConfig
) -> Engine:
    store = SQLConversationStore(database_url)
    cache = RedisCache(require_redis(), prefix=prefix)
    locks = RedisConversationLocks(require_redis(), prefix=prefix, wait_s=30.0)
    for part in (store, cache, locks):
        await part.start()
        stack.push_async_callback(part.aclose)
    vectors, embedder = InMemoryVectorMemory(), FakeEmbedder()
    engine = Engine(
        llm=llm,
        store=store,
        cache=cache,
        personas=PersonaSelector(PersonaLibrary.from_dirs([PACKAGED_PERSONAS], default="ember"), store),
        recall=MemoryRecall(vectors, embedder, top_k=5, min_similarity=0.2, keywords=store),
        writer=MemoryWriter(store, vectors, embedder, queue_size=64),
        config=config,
        locks=locks,
    )
    await engine.start()
    stack.push_async_callback(engine.aclose)
    stack.push_async_callback(cache.delete_prefix, "")
    return engine


@pytest.fixture
async def two_engines(database_url: str) -> AsyncIterator[tuple[Engine, Engine, OverlapLLM]]:
    prefix = f"test-engines:{uuid.uuid4().hex}:"
    llm = OverlapLLM()
    config = EngineConfig(rate_limit_messages=3, rate_limit_window_s=3600.0)
    async with AsyncExitStack() as stack:
        first = await start_engine(stack, database_url, prefix, llm, config)
        second = await start_engine(stack, database_url, prefix, llm, config)
        yield first, second, llm


def message(text: str, *, user: str, channel: str) -> UniversalMessage:
    return UniversalMessage(
        content=text, user_id=user, user_name=user.capitalize(), platform="discord", channel_id=channel
    )


async def test_a_conversation_is_answered_in_parallel_each_message_seeing_the_ones_before_it(
    two_engines: tuple[Engine, Engine, OverlapLLM],
) -> None:
    first, second, llm = two_engines
    channel = f"c-{uuid.uuid4().hex[:8]}"
    opening = await first.handle(message("hello everyone", user="host", channel=channel)).collect()
    assert opening.kind is ReplyKind.ANSWER
    texts = [f"question {i}" for i in range(8)]
    replies = await asyncio.gather(
        *(
            (first if i % 2 else second).handle(message(text, user=f"u{i}", channel=channel)).collect()
            for i, text in enumerate(texts)
        )
    )
    assert [r.kind for r in replies] == [ReplyKind.ANSWER] * 8
    assert llm.most > 1  # the two engines wrote replies of one conversation at the same time
    # one order for the conversation, whichever engine answered: each message's prompt holds
    # every message placed before it, and none after
    seen = sorted(
        (
            {m.content.split(": ", 1)[-1] for m in prompt[1:-1] if m.role == "user"}
            for prompt in llm.prompts
            if prompt[-1].content.split(": ", 1)[-1] in texts
        ),
        key=len,
    )
    assert [len(earlier - {"hello everyone"}) for earlier in seen] == list(range(8))
    assert all(a < b for a, b in itertools.pairwise(seen))
    # every turn reached the shared history
    turns = await first.cache.tail(f"turns:discord:{channel}", 18)
    roles = [json.loads(turn)[0] for turn in turns]
    assert sorted(roles) == ["assistant"] * 9 + ["user"] * 9


async def test_different_conversations_are_answered_at_the_same_time(
    two_engines: tuple[Engine, Engine, OverlapLLM],
) -> None:
    first, second, llm = two_engines
    replies = await asyncio.gather(
        *(
            (first if i % 2 else second)
            .handle(message(f"question {i}", user=f"v{i}", channel=f"c{i}"))
            .collect()
            for i in range(8)
        )
    )
    assert [r.kind for r in replies] == [ReplyKind.ANSWER] * 8
    assert llm.most > 1


async def test_the_rate_limit_counts_a_users_messages_on_every_engine(
    two_engines: tuple[Engine, Engine, OverlapLLM],
) -> None:
    first, second, _ = two_engines
    user = f"w{uuid.uuid4().hex[:8]}"
    kinds = []
    for i in range(5):
        engine = first if i % 2 == 0 else second
        reply = await engine.handle(message(f"message number {i}", user=user, channel=f"dm-{user}")).collect()
        kinds.append(reply.kind)
    assert kinds == [ReplyKind.ANSWER] * 3 + [ReplyKind.RATE_LIMITED] * 2
    # another user is not limited by it
    other = await second.handle(message("hello there", user=f"{user}-other", channel="elsewhere")).collect()
    assert other.kind is ReplyKind.ANSWER
