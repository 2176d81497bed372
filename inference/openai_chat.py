"""The ``LLM`` port over any OpenAI-compatible chat API, with the official ``openai`` SDK.

Streams ``POST {base_url}/chat/completions``. The SDK's own retries are disabled
(``max_retries=0``): retrying and falling back is ``engine.llm.ResilientLLM``'s job.
SDK errors are converted here: connection failures → ``BackendUnavailable`` (check
``OPENAI_BASE_URL``), timeouts → ``LLMTimeout``, HTTP errors → ``LLMError`` with ``status``.
The API key is never logged.

Tools (``stream_with_tools``): the request offers ``tools`` (``type: function``); the streamed
``delta.tool_calls`` are put together by their ``index`` (the id and name come first, the
arguments' JSON in pieces) and handed over as ``ToolCall`` records once the stream has ended
(``finish_reason: tool_calls``). Earlier rounds go after the prompt as an assistant message
with ``tool_calls`` and one ``tool`` message per result; ``may_call=False`` sends
``tool_choice: "none"``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletion

from engine.errors import BackendUnavailable, LLMError, LLMTimeout
from engine.events import ChatMessage
from engine.ports import ToolCall, ToolRound, ToolSpec
from inference import ToolChat, function_tools, llm_error
from inference.openai_client import OpenAIEndpoint, describe_openai_error

logger = logging.getLogger(__name__)


class OpenAIChat(ToolChat):
    """An OpenAI (or compatible: vLLM, LM Studio, llama.cpp server, ...) chat model."""

    def __init__(self, base_url: str | None, api_key: str, model: str, timeout_s: float) -> None:
        self._endpoint = OpenAIEndpoint(
            api_key=api_key, base_url=base_url, timeout_s=timeout_s, max_retries=0, purpose="the OpenAI API"
        )
        self._model = model
        # The official API wants ``max_completion_tokens`` (``max_tokens`` is refused by its
        # reasoning models); compatible servers commonly know only ``max_tokens``.
        self._official = self._endpoint.official

    def __repr__(self) -> str:
        return f"OpenAIChat(base_url={self._where!r}, model={self._model!r})"

    @property
    def name(self) -> str:
        return f"openai:{self._model}"

    @property
    def _where(self) -> str:
        return self._endpoint.where

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._endpoint.open():
            logger.info("OpenAI chat backend: %s at %s", self._model, self._where)

    async def aclose(self) -> None:
        await self._endpoint.close()

    async def ping(self) -> None:
        """Lists the models: checks the address and the key with one cheap request."""
        client = self._require_client()
        try:
            await client.models.list()
        except openai.APIStatusError as exc:
            variable = "OPENAI_API_KEY" if exc.status_code in (401, 403) else "OPENAI_BASE_URL"
            raise BackendUnavailable(
                f"OpenAI API at {self._where}",
                f"HTTP {exc.status_code}: {self._message(exc)}",
                variable=variable,
            ) from exc
        except openai.APIError as exc:
            raise BackendUnavailable(
                f"OpenAI API at {self._where}", self._message(exc), variable="OPENAI_BASE_URL"
            ) from exc

    # --- the port -----------------------------------------------------------------------

    async def _chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        rounds: Sequence[ToolRound],
        max_tokens: int,
        temperature: float,
        *,
        may_call: bool = True,
    ) -> AsyncGenerator[str | ToolCall, None]:
        client = self._require_client()
        wire: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in messages]
        for done in rounds:
            wire.extend(_round_messages(done))
        body: dict[str, object] = {
            "model": self._model,
            "messages": wire,
            "temperature": temperature,
            "stream": True,
            # the official API names the cap max_completion_tokens; compatible servers max_tokens
            ("max_completion_tokens" if self._official else "max_tokens"): max_tokens,
        }
        if tools:
            body["tools"] = function_tools(tools)
            if not may_call:  # described, not to be called: the model answers now
                body["tool_choice"] = "none"
        produced = False
        calls = _ToolCallParts()
        try:
            # The body is plain JSON already: posted as it is, without the SDK's per-request
            # transformation of typed parameters (several ms of CPU for a long prompt).
            response = await client.post(
                "/chat/completions",
                body=body,
                cast_to=ChatCompletion,
                stream=True,
                stream_cls=AsyncStream[dict[str, Any]],
            )
            try:
                async for chunk in response:  # plain JSON: no typed model built per token
                    text = _delta_text(chunk)
                    calls.feed(chunk)
                    if text:
                        produced = True
                        yield text
            finally:
                await response.close()
        except openai.APIError as exc:
            raise self._convert(exc, produced) from exc
        for call in calls.finished():
            yield call

    # --- internals ----------------------------------------------------------------------

    def _message(self, exc: openai.APIError) -> str:
        return describe_openai_error(exc, self._endpoint.api_key)

    def _require_client(self) -> AsyncOpenAI:
        if self._endpoint.client is None:
            raise LLMError(f"{self.name} is not started")
        return self._endpoint.client

    def _convert(self, exc: openai.APIError, produced: bool) -> Exception:
        if isinstance(exc, openai.APITimeoutError):
            return LLMTimeout(
                f"{self.name}: no answer from {self._where} within {self._endpoint.timeout_s:g}s"
            )
        if isinstance(exc, openai.APIConnectionError):
            if produced:
                return LLMError(f"{self.name}: connection to {self._where} lost mid-reply")
            return BackendUnavailable(
                f"OpenAI API at {self._where}", self._message(exc), variable="OPENAI_BASE_URL"
            )
        if isinstance(exc, openai.APIStatusError):
            hint = " (check OPENAI_API_KEY)" if exc.status_code in (401, 403) else ""
            return llm_error(
                f"{self.name}: HTTP {exc.status_code}: {self._message(exc)}{hint}", status=exc.status_code
            )
        return LLMError(f"{self.name}: {self._message(exc)}")


def _delta_text(chunk: object) -> str:
    """The text of a ``chat.completion.chunk`` (its choices' deltas); "" for anything else."""
    if not isinstance(chunk, dict):
        return ""
    parts = []
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") if isinstance(choice, dict) else None
        content = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(content, str):
            parts.append(content)
    return "".join(parts)


def _round_messages(done: ToolRound) -> list[dict[str, Any]]:
    """An earlier round as the API wants it: the assistant's calls, then each result."""
    assistant: dict[str, Any] = {
        "role": "assistant",
        "content": done.text or None,
        "tool_calls": [
            {
                "id": r.call.id,
                "type": "function",
                "function": {"name": r.call.name, "arguments": r.call.arguments},
            }
            for r in done.results
        ],
    }
    results = [{"role": "tool", "tool_call_id": r.call.id, "content": r.content} for r in done.results]
    return [assistant, *results]


class _ToolCallParts:
    """The streamed ``delta.tool_calls`` of one reply, put together by index."""

    def __init__(self) -> None:
        self._parts: dict[int, dict[str, str]] = {}

    def feed(self, chunk: object) -> None:
        if not isinstance(chunk, dict):
            return
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            pieces = delta.get("tool_calls") if isinstance(delta, dict) else None
            for piece in pieces or ():
                if not isinstance(piece, dict):
                    continue
                index = piece.get("index")
                part = self._parts.setdefault(
                    index if isinstance(index, int) else len(self._parts),
                    {"id": "", "name": "", "arguments": ""},
                )
                if isinstance(piece.get("id"), str):
                    part["id"] = piece["id"]
                function = piece.get("function")
                if isinstance(function, dict):
                    if isinstance(function.get("name"), str) and not part["name"]:
                        part["name"] = function["name"]  # sent whole, in the call's first piece
                    if isinstance(function.get("arguments"), str):
                        part["arguments"] += function["arguments"]

    def finished(self) -> list[ToolCall]:
        return [
            ToolCall(id=part["id"] or f"call_{index}", name=part["name"], arguments=part["arguments"] or "{}")
            for index, part in sorted(self._parts.items())
            if part["name"]
        ]
