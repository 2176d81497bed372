"""``adapters/ordering.py``: messages prepared concurrently, handed over in arrival order."""

from __future__ import annotations

import asyncio
import random

from adapters.ordering import ArrivalOrder


async def test_hand_over_follows_arrival_order_whatever_the_preparation_takes() -> None:
    order = ArrivalOrder()
    handed: list[int] = []
    prepared: list[int] = []
    rng = random.Random(7)
    delays = [rng.uniform(0, 0.03) for _ in range(20)]
    delays[0] = 0.05  # the first takes longest to prepare

    async def message(n: int) -> None:
        ticket = order.ticket("1180742165388615730")
        try:
            await asyncio.sleep(delays[n])  # preparation runs concurrently
            prepared.append(n)
            await ticket.turn()
            handed.append(n)
        finally:
            ticket.pass_on()

    await asyncio.gather(*(message(n) for n in range(20)))
    assert handed == list(range(20))
    assert prepared != handed  # preparation did overlap and finish out of order
    assert order.channels == 0


async def test_a_message_that_is_dropped_or_fails_lets_the_next_go() -> None:
    order = ArrivalOrder()
    first, second, third = (order.ticket("c") for _ in range(3))
    other_channel = order.ticket("d")
    await asyncio.wait_for(other_channel.turn(), 1)  # another channel never waits
    first.pass_on()
    first.pass_on()  # idempotent
    await asyncio.wait_for(second.turn(), 1)
    waiting = asyncio.create_task(third.turn())
    await asyncio.sleep(0.01)
    assert not waiting.done()
    second.pass_on()
    await asyncio.wait_for(waiting, 1)
