"""The engine pipeline end to end, on a real SQLite store and in-process cache."""

from __future__ import annotations

import json
from collections.abc import Sequence

from engine.errors import LLMError, LLMTimeout
from engine.events import ChatMessage, ReplyKind, UniversalMessage
from engine.pipeline import APOLOGY, EngineConfig
from tests.fakes.ports import FakeLLM


def dm(text: str, user: str = "u1", name: str = "Alice", **kw: object) -> UniversalMessage:
    return UniversalMessage(
        content=text,
        user_id=user,
        user_name=name,
        platform="test",
        channel_id=f"dm-{user}",
        is_direct=True,
        **kw,
    )


def prompt_text(messages: Sequence[ChatMessage]) -> str:
    return "\n".join(m.content for m in messages)


async def test_streams_the_reply_and_reports_it(make_engine) -> None:
    llm = FakeLLM("Nice to meet you, Alice. What do you like to do?")
    async with make_engine(llm) as engine:
        stream = engine.handle(dm("hello there"))
        chunks = [chunk async for chunk in stream]
        assert len(chunks) > 1
        assert "".join(chunks) == "Nice to meet you, Alice. What do you like to do?"
        response = stream.response
        assert response.kind is ReplyKind.ANSWER
        assert response.persona == "ember"
        assert response.content == "".join(chunks)
        assert response.timings.total_ms >= response.timings.llm_ms >= 0


async def test_user_message_is_stored_even_when_the_llm_fails(make_engine) -> None:
    llm = FakeLLM(fail_with=LLMError("backend exploded"))
    async with make_engine(llm) as engine:
        response = await engine.handle(dm("please remember my cat is called Miso")).collect()
        assert response.kind is ReplyKind.APOLOGY
        assert response.content == APOLOGY
        assert "backend exploded" in (response.error or "")
        await engine.writer.drain()
        stored = await engine.store.recent_messages("test:dm-u1", 10)
        assert [m.role for m in stored] == ["user", "assistant"]
        assert stored[0].content == "please remember my cat is called Miso"


async def test_timeout_gives_an_apology_not_silence(make_engine) -> None:
    async with make_engine(FakeLLM(fail_with=LLMTimeout("took too long"))) as engine:
        response = await engine.handle(dm("are you there?")).collect()
        assert response.kind is ReplyKind.APOLOGY
        assert response.content


async def test_recent_turns_reach_the_next_prompt_in_order(make_engine) -> None:
    llm = FakeLLM(lambda msgs: f"reply to: {msgs[-1].content}")
    async with make_engine(llm) as engine:
        await engine.handle(dm("first message here")).collect()
        await engine.handle(dm("second message here")).collect()
        await engine.handle(dm("third one")).collect()
        last_prompt = llm.prompts[-1]
        assert [m.role for m in last_prompt] == [
            "system",
            "user",
            "assistant",
            "user",
            "assistant",
            "system",
            "user",
        ]
        assert last_prompt[1].content == "first message here"
        assert last_prompt[2].content == "reply to: first message here"
        assert last_prompt[-1].content == "third one"


async def test_context_survives_a_cache_loss(make_engine) -> None:
    llm = FakeLLM("ok")
    async with make_engine(llm) as engine:
        await engine.handle(dm("my favourite colour is green")).collect()
        await engine.writer.drain()
        await engine.cache.delete_prefix("turns:")
        await engine.handle(dm("what did I just say?")).collect()
        history = [m.content for m in llm.prompts[-1][1:-2]]
        assert history == ["my favourite colour is green", "ok"]


async def test_memories_are_written_in_the_background_and_recalled_for_the_same_user_only(
    make_engine,
) -> None:
    llm = FakeLLM("noted")
    async with make_engine(llm) as engine:
        await engine.handle(dm("my sister Maria lives in Lisbon and paints murals", user="u1")).collect()
        await engine.writer.drain()
        # another user asks about the same words: must not see u1's memory
        other = await engine.handle(
            dm("where does Maria live and paint murals?", user="u2", name="Bob")
        ).collect()
        assert other.memories_used == ()
        assert "Lisbon" not in prompt_text(llm.prompts[-1])
        # u1 in a fresh conversation gets it back, with provenance
        fresh = UniversalMessage(
            content="where does my sister Maria live?",
            user_id="u1",
            user_name="Alice",
            platform="test",
            channel_id="another-channel",
            is_direct=True,
        )
        response = await engine.handle(fresh).collect()
        assert any("Lisbon" in hit.text for hit in response.memories_used)
        hit = next(h for h in response.memories_used if "Lisbon" in h.text)
        assert hit.channel_id == "dm-u1" and hit.platform == "test" and hit.source_message_ids
        assert "Lisbon" in llm.prompts[-1][-2].content  # the context, after the turns
        assert "Alice" in hit.text


async def test_a_memory_is_found_by_the_question_it_answered(make_engine) -> None:
    llm = FakeLLM(lambda msgs: "How was the pottery class?" if "pottery" in msgs[-1].content else "ok")
    async with make_engine(llm) as engine:
        await engine.handle(dm("I went to my first pottery workshop today")).collect()
        await engine.handle(dm("Honestly it was wonderful, I loved it")).collect()
        await engine.writer.drain()
        found = await engine.store.keyword_search("test:u1", "how was the class", 5)
        [answer] = [m for m, _ in found if "wonderful" in m.text]
        bot_name = engine.bot_name
        assert answer.search_context.endswith(f"{bot_name}: How was the pottery class?")
        assert answer.text == "Alice: Honestly it was wonderful, I loved it"

        # in a channel the turn before may be someone else's: it is not kept with the memory
        group = {"is_direct": False, "channel_id": "general"}
        await engine.handle(
            UniversalMessage(
                content="my pottery teacher is Ines", user_id="u9", user_name="Bob", platform="test", **group
            )
        ).collect()
        await engine.handle(
            UniversalMessage(
                content="Honestly the glaze came out wonderful",
                user_id="u1",
                user_name="Alice",
                platform="test",
                **group,
            )
        ).collect()
        await engine.writer.drain()
        [glaze] = [m for m in await engine.store.list_memories("test:u1") if "glaze" in m.text]
        assert "\n" not in glaze.search_context  # the date only, not the bot's answer to Bob
        assert "pottery" not in glaze.search_context


async def test_group_chat_prompts_name_the_speakers(make_engine) -> None:
    llm = FakeLLM("hi both")
    async with make_engine(llm) as engine:
        for user, name, text in [("a", "Ann", "hello bot"), ("b", "Ben", "hi from Ben")]:
            await engine.handle(
                UniversalMessage(
                    content=text,
                    user_id=user,
                    user_name=name,
                    platform="test",
                    channel_id="general",
                    guild_id="g1",
                )
            ).collect()
        prompt = llm.prompts[-1]
        assert prompt[1].content == "Ann: hello bot"
        assert prompt[-1].content == "Ben: hi from Ben"


async def test_own_messages_are_ignored_and_not_stored(make_engine) -> None:
    llm = FakeLLM("should not be called")
    async with make_engine(llm) as engine:
        response = await engine.handle(dm("echo", is_self=True)).collect()
        assert response.kind is ReplyKind.IGNORED
        assert response.content == ""
        assert llm.prompts == []
        assert await engine.store.recent_messages("test:dm-u1", 10) == []


async def test_rate_limit_answers_kindly_per_user(make_engine) -> None:
    llm = FakeLLM("ok")
    async with make_engine(llm, EngineConfig(rate_limit_messages=2, rate_limit_window_s=3600)) as engine:
        kinds = [(await engine.handle(dm(f"message {i}")).collect()).kind for i in range(3)]
        assert kinds == [ReplyKind.ANSWER, ReplyKind.ANSWER, ReplyKind.RATE_LIMITED]
        limited = await engine.handle(dm("again")).collect()
        assert "Alice" in limited.content
        other = await engine.handle(dm("hi", user="u2", name="Bob")).collect()
        assert other.kind is ReplyKind.ANSWER
        assert len(llm.prompts) == 3


async def test_redelivered_platform_message_is_stored_once(make_engine) -> None:
    async with make_engine(FakeLLM("ok")) as engine:
        message = dm("the same delivery twice", message_id="m-42")
        await engine.handle(message).collect()
        await engine.handle(message).collect()
        await engine.writer.drain()
        users = [m for m in await engine.store.recent_messages("test:dm-u1", 10) if m.role == "user"]
        assert len(users) == 1


async def test_persona_chosen_per_channel_then_guild(make_engine) -> None:
    async with make_engine(FakeLLM("ok")) as engine:

        def in_channel(channel: str, guild: str) -> UniversalMessage:
            return UniversalMessage(
                content="hi", user_id="u", user_name="U", platform="test", channel_id=channel, guild_id=guild
            )

        await engine.personas.set("guild:test:g1", "sage")
        assert (await engine.handle(in_channel("c1", "g1")).collect()).persona == "sage"
        assert (await engine.handle(in_channel("c9", "g2")).collect()).persona == "ember"
        await engine.personas.set("channel:test:c1", "ember")
        assert (await engine.handle(in_channel("c1", "g1")).collect()).persona == "ember"
        assert (await engine.handle(in_channel("c2", "g1")).collect()).persona == "sage"
        assert await engine.store.get_setting("guild:test:g1", "persona") == "sage"
        assert await engine.store.get_setting("guild:test:g2", "persona") is None


async def test_forget_user_erases_rows_vectors_and_cache(make_engine) -> None:
    async with make_engine(FakeLLM("ok")) as engine:
        await engine.handle(dm("I work as a nurse in Leeds at night", user="u1")).collect()
        await engine.handle(dm("I am Bob and I keep bees in my garden", user="u2", name="Bob")).collect()
        await engine.writer.drain()
        assert await engine.store.count_memories("test:u1") == 1
        removed = await engine.forget_user("test:u1")
        assert removed >= 3
        assert await engine.store.get_user("test:u1") is None
        assert await engine.store.count_memories("test:u1") == 0
        assert await engine.store.recent_messages("test:dm-u1", 10) == []
        assert await engine.recall.recall("test:u1", "nurse in Leeds") == []
        assert await engine.cache.tail("turns:test:dm-u1", 10) == []
        # the other user is untouched
        assert await engine.store.count_memories("test:u2") == 1
        assert await engine.cache.tail("turns:test:dm-u2", 10) != []


async def test_export_holds_profile_messages_and_memories_of_that_user_only(make_engine) -> None:
    async with make_engine(FakeLLM("ok")) as engine:
        await engine.handle(dm("I grow tomatoes on my balcony", user="u1")).collect()
        await engine.handle(dm("I race sailing boats on weekends", user="u2", name="Bob")).collect()
        document = await engine.export_user("test:u1")
        assert document["profile"]["display_name"] == "Alice"
        assert [m["content"] for m in document["messages"]] == ["I grow tomatoes on my balcony", "ok"]
        assert [m["text"] for m in document["memories"]] == [
            next(m["text"] for m in document["memories"] if "tomatoes" in m["text"])
        ]
        assert "sailing" not in json.dumps(document)
