"""Render a streaming reply on Discord: typing at once, the first chunk quickly, paced edits.

``ReplyRenderer.render(chunks)`` reads the engine's chunks in a task of its own while it
keeps Discord in step with the text so far:

* the text is split with :func:`split_message`; part ``i`` is shown by message ``i``;
* a new part is posted as soon as it exists (the first one as a reply to the user);
* a message is edited at most once per ``edit_interval_s``; edits in between are skipped,
  the latest text wins, and the final text is always written;
* a 429 is waited out by discord.py itself (``retry_after``); a longer one, or any other
  failed edit, is retried later, and a message that cannot be edited after a few tries is
  replaced by a new message with its text: nothing is lost, and no error is fatal.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import discord

from adapters.streaming import ActivityHold, ActivityIndicator
from adapters.textsplit import split_message
from engine.errors import WhisperEngineError

from .config import DISCORD_LIMIT

logger = logging.getLogger(__name__)

TYPING_REPEAT_S = 8.0
MAX_EDIT_FAILURES = 3

Continuation = Callable[[discord.Message], Awaitable[discord.abc.Messageable]]


class Typing(ActivityIndicator):
    """Shows "typing…" in a channel from ``start()`` until ``stop()`` (Discord shows it 10 s)."""

    def __init__(self, channel: discord.abc.Messageable) -> None:
        super().__init__(
            channel.typing,
            every_s=TYPING_REPEAT_S,
            errors=(discord.HTTPException, aiohttp.ClientError, OSError, WhisperEngineError),
            name="discord-typing",
        )


@dataclass(slots=True)
class _Shown:
    """One part of the reply and the message that shows it."""

    text: str
    message: discord.Message | None = None
    shown: str = ""
    next_edit_at: float = 0.0
    failures: int = 0


class ReplyRenderer:
    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        reference: discord.Message | None = None,
        edit_interval_s: float = 1.0,
        limit: int = DISCORD_LIMIT,
        continuation: Continuation | None = None,
        typing: Typing | ActivityHold | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._reference = reference
        self._interval = edit_interval_s
        self._limit = limit
        self._continuation = continuation
        self._typing = typing
        self._clock = clock
        self._parts: list[_Shown] = []
        self.edits = 0

    @property
    def messages(self) -> list[discord.Message]:
        return [p.message for p in self._parts if p.message is not None]

    async def render(self, chunks: AsyncIterable[str]) -> str:
        """Show the whole stream; returns the complete text."""
        text = ""
        changed = asyncio.Event()

        async def read() -> None:
            nonlocal text
            try:
                async for chunk in chunks:
                    text += chunk
                    changed.set()
            finally:
                changed.set()

        reader = asyncio.create_task(read(), name="discord-reply-reader")
        try:
            while True:
                await changed.wait()
                changed.clear()
                while True:
                    wait_s = await self._show(split_message(text, self._limit))
                    if wait_s is None:
                        break
                    # Pacing: the next edit of a message is allowed only after this delay.
                    await asyncio.sleep(wait_s)
                if reader.done() and not changed.is_set():
                    break
            await reader  # re-raises what the stream raised
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            if self._typing is not None:
                self._typing.stop()
        return text

    async def _show(self, parts: list[str]) -> float | None:
        """Bring the messages in step with ``parts`` as far as pacing allows.

        Returns how long to wait before an edit that is due can be made, or None when
        every message shows its part.
        """
        wait: float | None = None
        for i, text in enumerate(parts):
            if i == len(self._parts):
                self._parts.append(_Shown(text))
            part = self._parts[i]
            part.text = text
            if part.message is None:
                if text.strip():
                    await self._post(i, part)
                continue
            if part.shown == text:
                continue
            now = self._clock()
            if now < part.next_edit_at:
                wait = min(wait, part.next_edit_at - now) if wait is not None else part.next_edit_at - now
                continue
            await self._edit(part)
            if part.shown != part.text:
                retry = max(part.next_edit_at - self._clock(), 0.0)
                wait = min(wait, retry) if wait is not None else retry
        return wait

    async def _target(self, i: int) -> discord.abc.Messageable:
        if i == 0 or self._continuation is None:
            return self._channel
        first = self._parts[0].message
        if first is None:
            return self._channel
        return await self._continuation(first)

    async def _post(self, i: int, part: _Shown) -> None:
        target = await self._target(i)
        reference = self._reference if i == 0 else None
        if reference is not None:
            message = await target.send(part.text, reference=reference, mention_author=False)
        else:
            message = await target.send(part.text)
        if i == 0 and self._typing is not None:
            self._typing.stop()
        part.message = message
        part.shown = part.text
        part.next_edit_at = self._clock() + self._interval

    async def _edit(self, part: _Shown) -> None:
        assert part.message is not None
        text = part.text
        try:
            part.message = await part.message.edit(content=text)
        except discord.RateLimited as exc:
            # Longer than the client's max_ratelimit_timeout: try again once it has passed.
            logger.warning("editing a reply is rate limited for %.1fs; will retry", exc.retry_after)
            part.next_edit_at = self._clock() + exc.retry_after
            return
        except discord.NotFound:
            logger.warning("a reply message was deleted while streaming; posting its text again")
            part.message = await part.message.channel.send(text)
        except discord.HTTPException as exc:
            part.failures += 1
            logger.warning("editing a reply failed (%s), attempt %d", exc, part.failures)
            if part.failures < MAX_EDIT_FAILURES:
                part.next_edit_at = self._clock() + self._interval * part.failures
                return
            part.message = await part.message.channel.send(text)
        self.edits += 1
        part.shown = text
        part.failures = 0
        part.next_edit_at = self._clock() + self._interval
