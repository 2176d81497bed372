"""Implementations of the ``LLM`` and ``Embedder`` ports (see ``engine/ports.py``).

One module per backend, imported lazily by the composition root so that an unused
backend's SDK is never loaded:

* :mod:`inference.openai_chat` — ``OpenAIChat``, any OpenAI-compatible API (official SDK);
* :mod:`inference.ollama_chat` — ``OllamaChat`` and ``ollama_reachable`` (official SDK);
* :mod:`inference.llamacpp_chat` — ``LlamaCppChat``, a GGUF model in process (llama.cpp);
* :mod:`inference.minilm` — ``MiniLMEmbedder``, all-MiniLM-L6-v2 int8 on onnxruntime.

The retry/fallback policy over chat backends is backend-independent: ``engine.llm.ResilientLLM``.
This package's ``__init__`` holds only small shared helpers and imports no SDK.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from typing import Any

from engine.errors import LLMError
from engine.events import ChatMessage
from engine.ports import ToolCall, ToolRound, ToolSpec


def llm_error(message: str, status: int | None = None) -> LLMError:
    """An ``LLMError`` carrying the HTTP ``status`` it came from (read by ``ResilientLLM``:
    a 4xx other than 408/409/425/429 is not retried on the same backend)."""
    return LLMError(message, status=status)


def function_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    """``tools`` as the OpenAI and Ollama chat APIs both take them (``type: function``)."""
    return [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": dict(t.parameters)},
        }
        for t in tools
    ]


class ToolChat:
    """``stream`` and ``stream_with_tools`` for a backend whose ``_chat`` serves both: a plain
    request is one that offers no tools and has no earlier rounds."""

    def _chat(
        self,
        messages: Sequence[ChatMessage],
        tools: Sequence[ToolSpec],
        rounds: Sequence[ToolRound],
        max_tokens: int,
        temperature: float,
        *,
        may_call: bool = True,
    ) -> AsyncGenerator[str | ToolCall, None]:
        raise NotImplementedError

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncGenerator[str, None]:
        async for item in self._chat(messages, (), (), max_tokens, temperature):
            if isinstance(item, str):
                yield item

    def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec],
        rounds: Sequence[ToolRound],
        max_tokens: int,
        temperature: float,
        may_call: bool = True,
    ) -> AsyncGenerator[str | ToolCall, None]:
        return self._chat(messages, tools, rounds, max_tokens, temperature, may_call=may_call)
