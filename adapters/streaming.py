"""Show a streaming reply on a chat platform: post at the first chunk, then paced edits.

``StreamRenderer(sink, split=..., edit_interval_s=...).render(chunks)`` reads the engine's
chunks and keeps the platform in step with the text so far:

* the text is split with ``split`` (a platform's size limit); part ``i`` is shown by the
  ``i``-th message the sink posted; a new part is posted as soon as it exists;
* the platform is touched at most once per ``edit_interval_s`` while the reply streams;
  the final text is always written, waiting out the interval when it needs an edit;
* an edit that fails while streaming is retried at the next update; a final edit that
  fails is replaced by a new message with that part's text, so nothing is lost.

The sink is the only platform-specific piece: ``post(text)`` returns a handle for later
``edit(handle, text)`` calls; both raise :class:`engine.errors.WhisperEngineError`
subclasses (the adapter converts its SDK's exceptions).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from engine.errors import WhisperEngineError

logger = logging.getLogger(__name__)

H = TypeVar("H")


class ActivityIndicator:
    """Shows an activity ("typing…") from ``start()`` until ``stop()``: ``show()`` is called every
    ``every_s`` (platforms let the indicator fade after a few seconds). One of ``errors`` from
    ``show`` ends it quietly, logged at debug level: an indicator is never worth an error."""

    def __init__(
        self,
        show: Callable[[], Awaitable[object]],
        *,
        every_s: float,
        errors: tuple[type[BaseException], ...],
        name: str,
    ) -> None:
        self._show = show
        self._every_s = every_s
        self._errors = errors
        self._name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self._show()
            except self._errors as exc:
                logger.debug("%s failed: %s", self._name, exc)
                return
            await asyncio.sleep(self._every_s)


class ActivityHold:
    """One reply's claim on its channel's shared indicator (:class:`SharedActivity`)."""

    __slots__ = ("_held", "_key", "_make", "_shared")

    def __init__(self, shared: SharedActivity, key: Hashable, make: Callable[[], ActivityIndicator]) -> None:
        self._shared = shared
        self._key = key
        self._make = make
        self._held = False

    def start(self) -> None:
        if not self._held:
            self._held = True
            self._shared._acquire(self._key, self._make)

    def stop(self) -> None:
        if self._held:
            self._held = False
            self._shared._release(self._key)


class SharedActivity:
    """One indicator per channel, shown while any reply there is being prepared: a busy channel
    sends one "typing" request every few seconds, not one for every message in it."""

    def __init__(self) -> None:
        self._shown: dict[Hashable, tuple[ActivityIndicator, int]] = {}

    def hold(self, key: Hashable, make: Callable[[], ActivityIndicator]) -> ActivityHold:
        """A claim on ``key``'s indicator (made with ``make`` by the first claim that starts)."""
        return ActivityHold(self, key, make)

    @property
    def channels(self) -> int:
        """Channels whose indicator is showing."""
        return len(self._shown)

    def _acquire(self, key: Hashable, make: Callable[[], ActivityIndicator]) -> None:
        shown = self._shown.get(key)
        if shown is None:
            indicator = make()
            indicator.start()
            self._shown[key] = (indicator, 1)
        else:
            self._shown[key] = (shown[0], shown[1] + 1)

    def _release(self, key: Hashable) -> None:
        indicator, holders = self._shown[key]
        if holders > 1:
            self._shown[key] = (indicator, holders - 1)
        else:
            del self._shown[key]
            indicator.stop()


class MessageSink(Protocol[H]):
    async def post(self, text: str) -> H: ...

    async def edit(self, handle: H, text: str) -> None: ...


@dataclass(slots=True)
class _Shown(Generic[H]):
    text: str
    handle: H


class StreamRenderer(Generic[H]):
    def __init__(
        self, sink: MessageSink[H], *, split: Callable[[str], list[str]], edit_interval_s: float
    ) -> None:
        self._sink = sink
        self._split = split
        self._interval = edit_interval_s
        self._shown: list[_Shown[H]] = []
        self._next_at = 0.0
        self.text = ""

    @property
    def handles(self) -> list[H]:
        """The messages showing the reply, in order."""
        return [shown.handle for shown in self._shown]

    async def render(self, chunks: AsyncIterable[str]) -> list[H]:
        """Show every chunk; returns the handles of the messages that show the whole reply."""
        async for chunk in chunks:
            self.text += chunk
            if time.monotonic() >= self._next_at:
                await self._sync(final=False)
        await self._sync(final=True)
        return self.handles

    async def _sync(self, *, final: bool) -> None:
        parts = [part for part in self._split(self.text) if part.strip()]
        shown = self._shown
        edits = [i for i, part in enumerate(parts[: len(shown)]) if part.strip() != shown[i].text.strip()]
        if not edits and len(parts) <= len(self._shown):
            return
        wait = self._next_at - time.monotonic()
        if edits and wait > 0:
            if not final:
                return
            await asyncio.sleep(wait)
        for i in edits:
            await self._edit(i, parts[i], final=final)
        for part in parts[len(self._shown) :]:
            try:
                handle = await self._sink.post(part)
            except WhisperEngineError as exc:
                if final:
                    raise
                logger.warning("could not post part %d of a reply (will retry): %s", len(self._shown), exc)
                break
            self._shown.append(_Shown(part, handle))
        self._next_at = time.monotonic() + self._interval

    async def _edit(self, i: int, text: str, *, final: bool) -> None:
        shown = self._shown[i]
        try:
            await self._sink.edit(shown.handle, text)
        except WhisperEngineError as exc:
            if not final:
                logger.warning("could not edit part %d of a reply (will retry): %s", i, exc)
                return
            logger.warning("could not edit part %d of a reply; posting it again: %s", i, exc)
            shown.handle = await self._sink.post(text)
        shown.text = text
