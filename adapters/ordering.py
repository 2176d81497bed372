"""The order in which an adapter hands a channel's messages to the engine: :class:`ArrivalOrder`.

A platform delivers a channel's messages one after another, but preparing each one for the
engine takes its own time (a voice message is transcribed, settings are read). Messages are
prepared concurrently; only the hand-over is ordered. Each message takes a :class:`Ticket` when
it arrives (synchronously, in the platform's event handler); once prepared it waits for its
turn, is handed to the engine, and passes the turn on as soon as the engine has placed it in
the conversation (``Engine.handle(..., on_placed=ticket.pass_on)``). From there the engine keeps
the order: context in arrival order, generation in parallel (``engine/pipeline.py``).

A message that is not answered, or that fails, passes its turn on at once (``pass_on`` is
idempotent; the adapter calls it in a ``finally``), so one failure never holds up a channel.
Like python-telegram-bot's ``BaseUpdateProcessor``, this is the adapter's whole concurrency
policy, in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable


class Ticket:
    """One message's place in its channel's line."""

    __slots__ = ("_before", "_passed")

    def __init__(self, before: asyncio.Future[None] | None) -> None:
        self._before = before
        self._passed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def turn(self) -> None:
        """Wait until every earlier message of the channel has been handed over (or dropped)."""
        if self._before is not None:
            await asyncio.shield(self._before)

    def pass_on(self) -> None:
        """Let the next message of the channel go ahead; idempotent."""
        if not self._passed.done():
            self._passed.set_result(None)


class ArrivalOrder:
    """Tickets per channel (any hashable key), in the order :meth:`ticket` is called."""

    def __init__(self) -> None:
        self._last: dict[Hashable, asyncio.Future[None]] = {}

    def ticket(self, key: Hashable) -> Ticket:
        """A place at the end of ``key``'s line; call it in arrival order, without awaiting first."""
        ticket = Ticket(self._last.get(key))
        passed = ticket._passed
        self._last[key] = passed

        def forget(done: asyncio.Future[None]) -> None:
            if self._last.get(key) is done:
                del self._last[key]

        passed.add_done_callback(forget)
        return ticket

    @property
    def channels(self) -> int:
        """Channels with a message still waiting to be handed over."""
        return len(self._last)
