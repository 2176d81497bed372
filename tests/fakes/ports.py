"""Test doubles of the engine's ports (``engine/ports.py``), for unit tests of the engine itself.

Real backends (SQLite, the in-process cache, Chroma, MiniLM, the LLM clients) are
tested against these same ports in ``tests/contract`` and ``tests/integration``.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace

from engine.errors import LLMError
from engine.events import ChatMessage
from engine.ports import MetadataValue, Vector, VectorHit, VectorItem

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
