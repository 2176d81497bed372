"""Tool use in a reply (``engine/tools.py``): the runner's guarantees, the rounds, the engine's
choice of when to offer tools, and the fallback chain's handling of backends without tools."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping

import pytest

from engine.errors import BackendUnavailable, ToolError
from engine.events import ReplyKind, UniversalMessage
from engine.llm import ResilientLLM
from engine.persona import Persona, PersonaLibrary, PersonaSelector
from engine.ports import JSONValue, ToolCall, ToolSpec
from engine.tools import NOT_OFFERED, ToolingStream, ToolRunner
from tests.fakes.ports import FakeLLM, FakeTools, RecordingMetrics, ToolCallingFakeLLM, ToolRequest


async def weather(arguments: Mapping[str, JSONValue]) -> str:
    return f"Sunny and 21°C in {arguments.get('city', 'Lisbon')}"


async def flaky(arguments: Mapping[str, JSONValue]) -> str:
    raise ToolError("the weather station is offline")


async def forever(arguments: Mapping[str, JSONValue]) -> str:
    await asyncio.sleep(3600)
    return "never"


async def long_answer(arguments: Mapping[str, JSONValue]) -> str:
    return "x" * 10_000


TOOLS = {"weather": weather, "flaky": flaky, "forever": forever, "long_answer": long_answer}
ALL = list(TOOLS)


def call(name: str, arguments: str = "{}") -> ToolCall:
    return ToolCall(id=f"call_{name}", name=name, arguments=arguments)


async def test_the_runner_reports_every_outcome_to_the_model_and_the_metrics() -> None:
    metrics = RecordingMetrics()
    tools = FakeTools(TOOLS, ignore_timeout=True)  # the engine's own deadline still holds
    runner = ToolRunner(tools, timeout_s=0.2, max_result_chars=100, metrics=metrics)
    offered = runner.offered(["weather", "flaky", "forever", "long_answer"])
    started = time.monotonic()
    results = await runner.run(
        [
            call("weather", '{"city": "Porto"}'),
            call("flaky"),
            call("forever"),
            call("delete_everything"),
            call("weather", '{"city": '),
            call("weather", "[1, 2]"),
            call("long_answer"),
        ],
        offered,
    )
    assert time.monotonic() - started < 2  # all at once, the hanging one cut off
    assert [(r.outcome, r.content[:60]) for r in results] == [
        ("ok", "Sunny and 21°C in Porto"),
        ("error", "Error: the weather station is offline"),
        ("timeout", "Error: the tool forever did not answer within 0.2 seconds."),
        ("refused", "Error: there is no tool named 'delete_everything' here."),
        ("error", "Error: the arguments are not valid JSON (Expecting value)"),
        ("error", "Error: the arguments must be a JSON object"),
        ("ok", "x" * 60),
    ]
    assert len(results[-1].content) < 150 and results[-1].content.endswith("too long]")
    assert sorted(name for name, _ in tools.calls) == ["flaky", "forever", "long_answer", "weather"]
    assert sorted(metrics.tools) == sorted(
        [
            ("weather", "ok"),
            ("flaky", "error"),
            ("forever", "timeout"),
            (NOT_OFFERED, "refused"),
            ("weather", "error"),
            ("weather", "error"),
            ("long_answer", "ok"),
        ]
    )  # counted as each call ends


async def test_no_allow_list_offers_nothing() -> None:
    runner = ToolRunner(FakeTools(TOOLS))
    assert runner.offered([]) == []
    assert [spec.name for spec in runner.offered(["weather", "nonexistent"])] == ["weather"]


def script(request: ToolRequest) -> str | tuple[str, list[tuple[str, str]]]:
    if not request.rounds:
        return "Let me look. ", [("weather", '{"city": "Faro"}'), ("flaky", "{}")]
    results = [r.content for done in request.rounds for r in done.results]
    return "Here you go: " + " | ".join(results)


async def test_rounds_run_the_calls_and_send_them_back_and_only_the_text_is_streamed() -> None:
    llm = ToolCallingFakeLLM(script)
    runner = ToolRunner(FakeTools(TOOLS))
    stream = ToolingStream(
        llm, [], runner=runner, offered=runner.offered(ALL), max_tokens=50, temperature=0.5, where="test:c1"
    )
    text = "".join([chunk async for chunk in stream])
    assert text == (
        "Let me look. Here you go: Sunny and 21°C in Faro | Error: the weather station is offline"
    )
    first, second = llm.requests
    assert first.tools == ALL and first.rounds == () and first.may_call
    (done,) = second.rounds
    assert done.text == "Let me look. "
    assert [(r.call.name, r.outcome) for r in done.results] == [("weather", "ok"), ("flaky", "error")]


async def test_a_model_that_keeps_calling_must_answer_after_the_last_round() -> None:
    def greedy(request: ToolRequest) -> tuple[str, list[tuple[str, str]]]:
        return f"Checking ({len(request.rounds)}). ", [("weather", "{}")]

    llm = ToolCallingFakeLLM(greedy)
    runner = ToolRunner(FakeTools(TOOLS), max_rounds=2)
    stream = ToolingStream(
        llm, [], runner=runner, offered=runner.offered(ALL), max_tokens=50, temperature=0.5
    )
    text = "".join([chunk async for chunk in stream])
    assert text == "Checking (0). Checking (1). Checking (2). "
    assert [r.may_call for r in llm.requests] == [True, True, False]
    assert len(stream.rounds) == 2


def tooled_engine_persona(engine: object, tools: tuple[str, ...]) -> None:
    persona = Persona(name="ember", system_prompt="You are Ember, a helpful companion.", tools=tools)
    engine.personas = PersonaSelector(PersonaLibrary([persona], default="ember"), engine.store)  # type: ignore[attr-defined]


def dm(text: str) -> UniversalMessage:
    return UniversalMessage(
        content=text, user_id="u1", user_name="Alice", platform="test", channel_id="dm-u1"
    )


async def test_the_engine_offers_tools_only_when_the_persona_allows_some(make_engine) -> None:
    llm = ToolCallingFakeLLM(script)
    async with make_engine(llm) as engine:
        engine.tools = ToolRunner(FakeTools(TOOLS))
        tooled_engine_persona(engine, ())
        response = await engine.handle(dm("How's the weather?")).collect()
        assert llm.requests == [] and len(llm.prompts) == 1  # asked the plain way
        assert response.kind is ReplyKind.ANSWER

        tooled_engine_persona(engine, ("weather",))
        response = await engine.handle(dm("How's the weather in Faro?")).collect()
        assert [r.tools for r in llm.requests] == [["weather"], ["weather"]]
        assert response.content.startswith("Let me look. Here you go: Sunny and 21°C in Faro")
        await engine.writer.drain()
        stored = await engine.store.recent_messages("test:dm-u1", 10)
        assert [m.role for m in stored] == ["user", "assistant"] * 2
        assert stored[-1].content == response.content


class DownToolLLM(ToolCallingFakeLLM):
    """A tool-calling backend whose server is down."""

    @property
    def name(self) -> str:
        return "down"

    async def stream_with_tools(self, *args: object, **kwargs: object) -> AsyncIterator[str | ToolCall]:
        raise BackendUnavailable("the primary LLM", "connection refused")
        yield ""  # an async generator, like the real backends


async def test_the_fallback_chain_asks_a_backend_without_tools_the_plain_way() -> None:
    plain = FakeLLM("No tools here, but hello!")
    llm = ResilientLLM([DownToolLLM(script), plain], timeout_s=5, max_retries=0)
    spec = ToolSpec(name="weather", description="the weather")
    stream = llm.stream_with_tools([], tools=[spec], rounds=(), max_tokens=20, temperature=0.5)
    assert "".join([c async for c in stream if isinstance(c, str)]) == "No tools here, but hello!"
    assert stream.backend == "fake"
    assert len(plain.prompts) == 1


@pytest.mark.parametrize("timeout_s", [0, -1])
def test_the_runner_wants_a_positive_timeout(timeout_s: float) -> None:
    with pytest.raises(ValueError):
        ToolRunner(FakeTools(TOOLS), timeout_s=timeout_s)
