"""Tool use within a reply: the tools a persona may use, run between the model's requests.

When the owner configured tools (``Tools``: tools of MCP servers, ``tools/mcp.py``) and the
reply's persona allows some of them (its ``tools`` allow-list), the engine asks the model with
those tools offered (:class:`engine.ports.ToolCallingLLM`). If the model answers with tool
calls, :class:`ToolRunner` runs them, all at once, each bounded by the tool timeout; then the
model is asked again with its calls and their results (a :class:`engine.ports.ToolRound`), up
to ``max_rounds`` rounds; a last request offers no tools, so the model answers with what it
has. The reply's text streams as usual (:class:`ToolingStream` is a text stream like the
LLM's), and only that text is the reply: calls and results belong to the request alone, never
stored as turns, never in memory, never in another conversation's prompt.

A call the model makes to a tool it was not offered is refused. A tool that fails, or does not
answer within the timeout, has that said to the model as its result: the reply still comes.
Each call is logged (tool, outcome, duration and sizes, never the arguments or the result,
which are the users' words) and counted (``Metrics.tool_called``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any

from engine.errors import BackendUnavailable, ToolError, ToolTimeout
from engine.events import ChatMessage
from engine.ports import (
    Metrics,
    NoMetrics,
    ToolCall,
    ToolCallingLLM,
    ToolOutcome,
    ToolResult,
    ToolRound,
    Tools,
    ToolSpec,
)

logger = logging.getLogger(__name__)

NOT_OFFERED = "(not offered)"
"""The tool label of a refused call in the metrics (the model may make up any name)."""

TIMEOUT_GRACE_S = 0.5
"""The engine's own deadline for a call comes this long after the one the tools are given,
so that theirs (which can tell the server to stop) normally fires first."""


class ToolRunner:
    """Runs the calls of one round against ``tools``, within their timeout, never raising."""

    def __init__(
        self,
        tools: Tools,
        *,
        timeout_s: float = 20.0,
        max_rounds: int = 3,
        max_result_chars: int = 8000,
        metrics: Metrics | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        self.tools = tools
        self.timeout_s = timeout_s
        self.max_rounds = max_rounds
        self.max_result_chars = max_result_chars
        self.metrics: Metrics = metrics or NoMetrics()

    def offered(self, allowed: Sequence[str]) -> list[ToolSpec]:
        """The tools an allow-list names that are available now (none without an allow-list)."""
        return self.tools.offered(allowed) if allowed else []

    async def run(
        self, calls: Sequence[ToolCall], offered: Sequence[ToolSpec], *, where: str = ""
    ) -> tuple[ToolResult, ...]:
        """Every call's result, in the order of ``calls``; the calls run concurrently."""
        names = {spec.name for spec in offered}
        return tuple(await asyncio.gather(*(self._one(call, names, where) for call in calls)))

    async def _one(self, call: ToolCall, offered: set[str], where: str) -> ToolResult:
        started = time.perf_counter()
        outcome: ToolOutcome
        if call.name not in offered:
            outcome, content = "refused", f"Error: there is no tool named {call.name!r} here."
        else:
            try:
                arguments = _arguments(call.arguments)
                async with asyncio.timeout(self.timeout_s + TIMEOUT_GRACE_S):
                    content = await self.tools.call(call.name, arguments, timeout_s=self.timeout_s)
                outcome = "ok"
            except (TimeoutError, ToolTimeout):
                outcome = "timeout"
                content = f"Error: the tool {call.name} did not answer within {self.timeout_s:g} seconds."
            except (ToolError, BackendUnavailable) as exc:
                outcome, content = "error", f"Error: {exc}"
        content = self._capped(content)
        duration_s = time.perf_counter() - started
        # a refused name is the model's own words: kept short, and out of the metrics' labels
        name = call.name if outcome != "refused" else repr(call.name[:64])
        logger.info(
            "tool %s %s in %.0f ms (%d chars of arguments, %d chars of result)%s",
            name,
            outcome,
            duration_s * 1000,
            len(call.arguments),
            len(content),
            f" for {where}" if where else "",
        )
        self.metrics.tool_called(
            NOT_OFFERED if outcome == "refused" else call.name, outcome, duration_s=duration_s
        )
        return ToolResult(call=call, content=content, outcome=outcome)

    def _capped(self, content: str) -> str:
        if len(content) <= self.max_result_chars:
            return content
        return content[: self.max_result_chars] + "\n[... the rest was cut: too long]"


def _arguments(raw: str) -> Mapping[str, Any]:
    try:
        value = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise ToolError(f"the arguments are not valid JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise ToolError("the arguments must be a JSON object")
    return value


class ToolingStream:
    """A reply's text, with the rounds of tool calls it takes run in between (the module's
    docstring). Iterate it like the LLM's stream; ``backend`` names the backend of the last
    request; ``aclose()`` stops it (and the request in progress) at once."""

    __slots__ = ("_chunks", "backend", "rounds")

    def __init__(
        self,
        llm: ToolCallingLLM,
        messages: Sequence[ChatMessage],
        *,
        runner: ToolRunner,
        offered: Sequence[ToolSpec],
        max_tokens: int,
        temperature: float,
        where: str = "",
    ) -> None:
        self.backend: str | None = None
        self.rounds: list[ToolRound] = []
        """The rounds run so far (for tests and logs: they are never kept after the reply)."""
        self._chunks = self._run(
            llm,
            messages,
            runner=runner,
            offered=list(offered),
            max_tokens=max_tokens,
            temperature=temperature,
            where=where,
        )

    def __aiter__(self) -> ToolingStream:
        return self

    async def __anext__(self) -> str:
        return await self._chunks.__anext__()

    async def aclose(self) -> None:
        await self._chunks.aclose()

    async def _run(
        self,
        llm: ToolCallingLLM,
        messages: Sequence[ChatMessage],
        *,
        runner: ToolRunner,
        offered: list[ToolSpec],
        max_tokens: int,
        temperature: float,
        where: str,
    ) -> AsyncGenerator[str, None]:
        for number in range(runner.max_rounds + 1):
            last = number == runner.max_rounds  # tools no more: the model answers with what it has
            stream = llm.stream_with_tools(
                messages,
                tools=offered,
                rounds=tuple(self.rounds),
                max_tokens=max_tokens,
                temperature=temperature,
                may_call=not last,
            )
            calls: list[ToolCall] = []
            text: list[str] = []
            try:
                async for item in stream:
                    if isinstance(item, ToolCall):
                        calls.append(item)
                    else:
                        text.append(item)
                        yield item
            finally:
                close = getattr(stream, "aclose", None)
                if close is not None:
                    await close()
                self.backend = getattr(stream, "backend", None) or self.backend
            if not calls:
                return
            if last:
                logger.warning(
                    "the model still asked for %d tool calls after %d rounds%s; answering without them",
                    len(calls),
                    runner.max_rounds,
                    f" for {where}" if where else "",
                )
                return
            results = await runner.run(calls, offered, where=where)
            self.rounds.append(ToolRound(text="".join(text), results=results))
