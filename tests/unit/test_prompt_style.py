"""PROMPT_STYLE and the reply caps: compact with short replies for llama.cpp in process, full and
uncapped for a large model behind an API, unless set."""

from __future__ import annotations

from bot.app import COMPACT_REPLY_SENTENCES, COMPACT_REPLY_TOKENS, reply_shape
from config.settings import Settings
from engine.events import UniversalMessage
from engine.pipeline import EngineConfig
from tests.fakes.ports import FakeLLM


def settings(**fields: object) -> Settings:
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


def test_the_embedded_model_gets_compact_prompts_and_short_replies() -> None:
    assert reply_shape(settings(), "llamacpp") == ("compact", COMPACT_REPLY_SENTENCES, COMPACT_REPLY_TOKENS)


def test_a_model_behind_an_api_gets_the_full_prompt_and_no_cap() -> None:
    assert reply_shape(settings(), "openai") == ("full", None, None)
    assert reply_shape(settings(), "ollama") == ("full", None, None)


def test_settings_choose_the_style_and_the_caps() -> None:
    chosen = settings(prompt_style="full", reply_max_sentences=5, reply_max_tokens=200)
    assert reply_shape(chosen, "llamacpp") == ("full", 5, 200)
    assert reply_shape(settings(prompt_style="compact"), "openai") == ("compact", 3, 96)
    assert reply_shape(settings(reply_max_sentences=0), "llamacpp")[1] is None  # 0: no sentence cap


async def test_the_persona_read_ahead_is_how_the_first_real_prompt_starts(make_engine) -> None:  # type: ignore[no-untyped-def]
    llm = FakeLLM("Hello!")
    for style in ("compact", "full"):
        async with make_engine(llm, EngineConfig(prompt_style=style)) as engine:
            await engine.read_persona()
            ahead = llm.prompts[-1]
            message = UniversalMessage(
                content="hi there",
                user_id=style,  # a conversation of its own
                user_name="Ann",
                platform="test",
                channel_id=style,
                is_direct=True,
            )
            await engine.handle(message).collect()
            first = llm.prompts[-1]
            assert ahead[:-2] == first[:-2] and len(first[:-2]) >= 1  # persona (and examples) alike
            assert ahead[-1].content != first[-1].content


async def test_the_read_ahead_is_of_the_default_persona_the_owner_chose(make_engine) -> None:  # type: ignore[no-untyped-def]
    llm = FakeLLM("Hello!")
    async with make_engine(llm) as engine:
        other = next(name for name in engine.personas.library.names() if name != "ember")
        chosen = await engine.personas.set_default(other)  # stored, as the owner's console does
        engine.personas.library.default = engine.personas.configured_default  # a fresh process
        await engine.read_persona()
        assert llm.prompts[-1][0].content == chosen.system_text()
