"""Checks that run before the engine answers, as ``async (message, next) -> ReplyStream``."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable

from engine.events import ReplyKind, UniversalMessage
from engine.ports import Cache
from engine.reply import ReplyStream

Next = Callable[[UniversalMessage], Awaitable[ReplyStream]]
Middleware = Callable[[UniversalMessage, Next], Awaitable[ReplyStream]]


async def ignore_own_messages(message: UniversalMessage, call_next: Next) -> ReplyStream:
    """The bot never answers itself."""
    if message.is_self:
        return ReplyStream.fixed("", ReplyKind.IGNORED)
    return await call_next(message)


class LengthLimit:
    """Refuses a message longer than ``max_chars`` with a reply that names the limit."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars

    async def __call__(self, message: UniversalMessage, call_next: Next) -> ReplyStream:
        length = len(message.content)
        if self.max_chars > 0 and length > self.max_chars:
            text = (
                f"That message is too long for me to read in one go ({length} characters; "
                f"the limit is {self.max_chars})."
            )
            return ReplyStream.fixed(text, ReplyKind.TOO_LONG)
        return await call_next(message)


class RateLimiter:
    """At most ``max_messages`` per user in each ``window_s`` window, counted in the cache.

    Counting in the cache port means several processes sharing Redis share the limit.
    """

    def __init__(self, cache: Cache, *, max_messages: int, window_s: float) -> None:
        self._cache = cache
        self.max_messages = max_messages
        self.window_s = window_s

    async def __call__(self, message: UniversalMessage, call_next: Next) -> ReplyStream:
        if self.max_messages <= 0:
            return await call_next(message)
        window = int(time.time() // self.window_s)
        count = await self._cache.incr(f"rl:{message.user_key}:{window}", self.window_s)
        if count > self.max_messages:
            wait = math.ceil((window + 1) * self.window_s - time.time())
            text = (
                f"You're sending messages faster than I can keep up with, {message.user_name}. "
                f"Give me about {max(wait, 1)} seconds and try again."
            )
            return ReplyStream.fixed(text, ReplyKind.RATE_LIMITED)
        return await call_next(message)
