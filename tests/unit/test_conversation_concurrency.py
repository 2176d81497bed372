"""Concurrency within one conversation (``engine/pipeline.py``): context in arrival order,
generation in parallel, one person's messages answered one after another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from engine.events import ChatMessage, UniversalMessage
from engine.pipeline import EngineConfig


class GatedLLM:
    """An LLM whose every answer waits until the test opens its gate; counts answers in progress."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.prompts: dict[str, list[ChatMessage]] = {}
        self.started: list[str] = []
        self.running = 0
        self.most_running = 0

    @property
    def name(self) -> str:
        return "gated"

    def gate(self, text: str) -> asyncio.Event:
        return self.gates.setdefault(text, asyncio.Event())

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        last = messages[-1].content.split(": ", 1)[-1]
        self.prompts[last] = list(messages)
        self.started.append(last)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate(last).wait()
            yield f"answer to {last}"
        finally:
            self.running -= 1

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def ping(self) -> None:
        return None


def in_channel(text: str, user_id: str, name: str, message_id: str) -> UniversalMessage:
    return UniversalMessage(
        content=text,
        user_id=user_id,
        user_name=name,
        platform="discord",
        channel_id="1180742165388615730",
        guild_id="1180742164537171998",
        message_id=message_id,
        is_direct=False,
    )


PEOPLE = [("412586117355864065", "Ana"), ("298431746001879040", "Ben"), ("733301945571360818", "Chloe")]


async def until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - a condition on the engine's progress, polled
            await asyncio.sleep(0.005)


async def test_different_people_in_one_channel_are_answered_in_parallel_with_context_in_order(
    make_engine,
) -> None:
    llm = GatedLLM()
    async with make_engine(llm) as engine:
        texts = [f"message {i} from {name}" for i, (_, name) in enumerate(PEOPLE)]
        replies = [
            asyncio.create_task(engine.handle(in_channel(text, uid, name, f"12000000000000000{i}")).collect())
            for i, ((uid, name), text) in enumerate(zip(PEOPLE, texts, strict=True))
        ]
        # all three are generating at once: none waits for another's answer
        await until(lambda: llm.running == 3)
        assert sorted(llm.started) == sorted(texts)
        # each saw the messages that arrived before it, and none that came after
        for i, text in enumerate(texts):
            history = [m.content for m in llm.prompts[text][1:-2]]  # the turns, before the context
            assert history == [f"{PEOPLE[j][1]}: {texts[j]}" for j in range(i)]
        # the last one finishes first; the others are not held up by it, nor it by them
        llm.gate(texts[2]).set()
        assert (await replies[2]).content == f"answer to {texts[2]}"
        assert not replies[0].done() and not replies[1].done()
        for text in texts[:2]:
            llm.gate(text).set()
        assert [(await r).content for r in replies[:2]] == [f"answer to {t}" for t in texts[:2]]
        stored = await engine.store.recent_messages(in_channel("", "", "", "").conversation_key, 10)
        assert [m.content for m in stored if m.role == "user"] == texts


async def test_one_persons_messages_are_answered_in_order_with_the_earlier_reply_in_context(
    make_engine,
) -> None:
    llm = GatedLLM()
    (ana, ana_name), (ben, ben_name) = PEOPLE[:2]
    async with make_engine(llm) as engine:
        first = asyncio.create_task(
            engine.handle(in_channel("I adopted a cat", ana, ana_name, "120000000000000010")).collect()
        )
        second = asyncio.create_task(
            engine.handle(
                in_channel("what should I call her?", ana, ana_name, "120000000000000011")
            ).collect()
        )
        other = asyncio.create_task(
            engine.handle(in_channel("hello everyone", ben, ben_name, "120000000000000012")).collect()
        )
        # Ben is answered while Ana's second message waits for the answer to her first
        await until(lambda: llm.started == ["I adopted a cat", "hello everyone"])
        llm.gate("hello everyone").set()
        await other
        await asyncio.sleep(0.05)
        assert llm.started == ["I adopted a cat", "hello everyone"]
        llm.gate("I adopted a cat").set()
        await first
        await until(lambda: "what should I call her?" in llm.started)
        history = [m.content for m in llm.prompts["what should I call her?"][1:-2]]
        # her first message, then (in the order things happened) the answer to it
        assert history[0] == f"{ana_name}: I adopted a cat"
        assert history[-1] == "answer to I adopted a cat"
        llm.gate("what should I call her?").set()
        assert (await second).content == "answer to what should I call her?"


async def test_a_failed_answer_does_not_hold_up_the_same_persons_next_message(make_engine) -> None:
    llm = GatedLLM()
    uid, name = PEOPLE[0]
    async with make_engine(llm) as engine:
        first = asyncio.create_task(
            engine.handle(in_channel("first", uid, name, "120000000000000020")).collect()
        )
        await until(lambda: llm.started == ["first"])
        first.cancel()
        second = engine.handle(in_channel("second", uid, name, "120000000000000021")).collect()
        llm.gate("second").set()
        assert (await asyncio.wait_for(second, 5)).content == "answer to second"


class CountingRecall:
    """Wraps the engine's memory recall and counts the searches in progress at once."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.running = 0
        self.most_running = 0

    async def search(self, *args: object, **kwargs: object) -> object:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(0.01)
            return await self.inner.search(*args, **kwargs)  # type: ignore[attr-defined]
        finally:
            self.running -= 1


async def test_a_burst_gathers_context_a_few_messages_at_a_time_and_still_answers_all_in_parallel(
    make_engine,
) -> None:
    llm = GatedLLM()
    people = [(f"41258611735586{i:04d}", f"Person{i}") for i in range(12)]
    async with make_engine(llm, EngineConfig(max_preparing=3, rate_limit_messages=0)) as engine:
        recall = engine.recall = CountingRecall(engine.recall)
        texts = [f"burst message {i}" for i in range(len(people))]
        replies = [
            asyncio.create_task(
                engine.handle(in_channel(text, uid, name, f"1300000000000000{i:02d}")).collect()
            )
            for i, ((uid, name), text) in enumerate(zip(people, texts, strict=True))
        ]
        # every message reaches the LLM and all generate at once; context was never gathered
        # for more than three at a time
        await until(lambda: llm.running == len(texts))
        assert 1 <= recall.most_running <= 3
        for text in texts:
            llm.gate(text).set()
        assert [(await r).content for r in replies] == [f"answer to {t}" for t in texts]
        stored = await engine.store.recent_messages(in_channel("", "", "", "").conversation_key, 20)
        assert [m.content for m in stored if m.role == "user"] == texts  # in arrival order
