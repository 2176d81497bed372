"""Test doubles of the engine's ports (``engine/ports.py``), for unit tests of the engine itself.

Real backends (SQLite, the in-process cache, Chroma, MiniLM, the LLM clients) are
tested against these same ports in ``tests/contract`` and ``tests/integration``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from engine.errors import LLMError
from engine.events import ChatMessage
from engine.ports import (
    JSONValue,
    MetadataValue,
    ToolCall,
    ToolOutcome,
    ToolRound,
    ToolSpec,
    Vector,
    VectorHit,
    VectorItem,
)

_WORD = re.compile(r"\w+")


class FakeLLM:
    """Streams a scripted reply word by word and records every prompt it was sent."""

    def __init__(
        self,
        reply: str | Callable[[Sequence[ChatMessage]], str] = "Hello there! How can I help?",
        *,
        fail_with: Exception | None = None,
        chunk_delay_s: float = 0.0,
    ) -> None:
        self._reply = reply
        self.fail_with = fail_with
        self.chunk_delay_s = chunk_delay_s
        self.prompts: list[list[ChatMessage]] = []

    @property
    def name(self) -> str:
        return "fake"

    async def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int, temperature: float
    ) -> AsyncIterator[str]:
        self.prompts.append(list(messages))
        if self.fail_with is not None:
            raise self.fail_with
        text = self._reply(messages) if callable(self._reply) else self._reply
        for piece in re.findall(r"\S+\s*", text):
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
            yield piece

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def ping(self) -> None:
        if isinstance(self.fail_with, LLMError):
            raise self.fail_with


class FakeEmbedder:
    """Bag-of-words hashing into a unit vector: texts sharing words are close."""

    def __init__(self, dimension: int = 64) -> None:
        self._dimension = dimension

    @property
    def dimension(self) -> int:
        return self._dimension

    def _one(self, text: str) -> list[float]:
        vec = [0.0] * self._dimension
        for word in _WORD.findall(text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=4).digest()
            vec[int.from_bytes(digest, "little") % self._dimension] += 1.0
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        return [v / norm for v in vec]

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        return [self._one(t) for t in texts]

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class InMemoryVectorMemory:
    """Brute-force cosine search over dicts, one per scope."""

    def __init__(self) -> None:
        self._scopes: dict[str, dict[str, VectorItem]] = {}

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def add(self, scope: str, items: Sequence[VectorItem]) -> None:
        bucket = self._scopes.setdefault(scope, {})
        for item in items:
            bucket[item.id] = item

    async def query(self, scope: str, embedding: Vector, k: int) -> list[VectorHit]:
        items = self._scopes.get(scope, {}).values()
        scored = [
            VectorHit(
                id=item.id,
                text=item.text,
                similarity=sum(a * b for a, b in zip(item.embedding, embedding, strict=True)),
                metadata=item.metadata,
            )
            for item in items
        ]
        scored.sort(key=lambda hit: hit.similarity, reverse=True)
        return scored[:k]

    async def update_metadata(self, scope: str, metadata: Mapping[str, Mapping[str, MetadataValue]]) -> None:
        bucket = self._scopes.get(scope, {})
        for item_id, meta in metadata.items():
            item = bucket.get(item_id)
            if item is not None:
                bucket[item_id] = replace(item, metadata={**item.metadata, **meta})

    async def delete(self, scope: str, ids: Sequence[str]) -> None:
        bucket = self._scopes.get(scope, {})
        for item_id in ids:
            bucket.pop(item_id, None)

    async def drop_scope(self, scope: str) -> None:
        self._scopes.pop(scope, None)

    async def count(self, scope: str) -> int:
        return len(self._scopes.get(scope, {}))


@dataclass(slots=True)
class ToolRequest:
    """What a :class:`ToolCallingFakeLLM` was asked: the prompt, the tools, the rounds before."""

    messages: list[ChatMessage]
    tools: list[str]
    rounds: tuple[ToolRound, ...]
    may_call: bool


class ToolCallingFakeLLM(FakeLLM):
    """A FakeLLM that can call tools: ``script(request)`` returns the reply's text, or tool
    calls as ``(name, arguments JSON)`` pairs (with optional text first)."""

    def __init__(self, script: Callable[[ToolRequest], str | tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.script = script
        self.requests: list[ToolRequest] = []

    async def stream_with_tools(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec],
        rounds: Sequence[ToolRound],
        max_tokens: int,
        temperature: float,
        may_call: bool = True,
    ) -> AsyncIterator[str | ToolCall]:
        request = ToolRequest(list(messages), [t.name for t in tools], tuple(rounds), may_call)
        self.requests.append(request)
        answer = self.script(request)
        text, calls = (answer, []) if isinstance(answer, str) else answer
        for piece in re.findall(r"\S+\s*", text):
            yield piece
        for number, (name, arguments) in enumerate(calls if may_call else []):
            yield ToolCall(id=f"call_{len(self.requests)}_{number}", name=name, arguments=arguments)


ToolFn = Callable[[Mapping[str, JSONValue]], Awaitable[str]]


class FakeTools:
    """The ``Tools`` port over plain async functions, by name; ``allowed`` entries are names."""

    def __init__(self, tools: Mapping[str, ToolFn], *, ignore_timeout: bool = False) -> None:
        self._tools = dict(tools)
        self.ignore_timeout = ignore_timeout
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def offered(self, allowed: Sequence[str]) -> list[ToolSpec]:
        return [
            ToolSpec(name=name, description=f"the {name} tool") for name in self._tools if name in allowed
        ]

    async def call(self, name: str, arguments: Mapping[str, JSONValue], *, timeout_s: float) -> str:
        self.calls.append((name, dict(arguments)))
        if self.ignore_timeout:
            return await self._tools[name](arguments)
        async with asyncio.timeout(timeout_s):
            return await self._tools[name](arguments)

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


@dataclass(slots=True)
class RecordingMetrics:
    """The ``Metrics`` port, keeping what it was told."""

    tools: list[tuple[str, ToolOutcome]] = field(default_factory=list)

    def message_handled(self, platform: str, kind: str) -> None:
        return None

    def reply_timed(self, platform: str, *, total_s: float, first_token_s: float | None) -> None:
        return None

    def llm_streamed(self, backend: str, *, chunks: int, approx_tokens: int) -> None:
        return None

    def tool_called(self, tool: str, outcome: ToolOutcome, *, duration_s: float) -> None:
        self.tools.append((tool, outcome))
