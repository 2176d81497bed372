"""``ReplyStream``: the engine's answer as it is produced.

Iterate it for text chunks as the model writes them; when the iteration ends,
``response`` holds the complete :class:`AIResponse`. ``collect()`` does both for
callers that do not stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from engine.events import AIResponse, ReplyKind


class ReplyStream:
    __slots__ = ("_items", "_response", "_started")

    def __init__(self, items: AsyncIterator[str | AIResponse]) -> None:
        """``items`` yields text chunks and finally exactly one AIResponse."""
        self._items = items
        self._response: AIResponse | None = None
        self._started = False

    @classmethod
    def fixed(cls, text: str, kind: ReplyKind, *, persona: str = "") -> ReplyStream:
        async def items() -> AsyncIterator[str | AIResponse]:
            if text:
                yield text
            yield AIResponse(content=text, kind=kind, persona=persona)

        return cls(items())

    async def __aiter__(self) -> AsyncIterator[str]:
        if self._started:
            raise RuntimeError("a ReplyStream can be iterated only once")
        self._started = True
        async for item in self._items:
            if isinstance(item, AIResponse):
                self._response = item
            elif item:
                yield item

    async def _raw(self) -> AsyncIterator[str | AIResponse]:
        """Chunks and the final response, for middleware that passes a stream through."""
        async for chunk in self:
            yield chunk
        yield self.response

    @property
    def response(self) -> AIResponse:
        if self._response is None:
            raise RuntimeError("the reply is not complete yet: iterate the stream first")
        return self._response

    async def collect(self) -> AIResponse:
        async for _ in self:
            pass
        return self.response
