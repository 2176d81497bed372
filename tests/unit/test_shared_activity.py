"""``SharedActivity``: a busy channel shows one "typing…" indicator, whatever the replies in progress."""

from __future__ import annotations

import asyncio

from adapters.streaming import ActivityIndicator, SharedActivity


async def test_replies_in_one_channel_share_one_indicator_until_the_last_is_done() -> None:
    shown: list[str] = []
    made: list[str] = []

    def indicator(channel: str) -> ActivityIndicator:
        made.append(channel)

        async def show() -> None:
            shown.append(channel)

        return ActivityIndicator(show, every_s=0.01, errors=(OSError,), name=f"typing-{channel}")

    shared = SharedActivity()
    holds = [shared.hold("1180742165388615730", lambda: indicator("busy")) for _ in range(50)]
    for hold in holds:
        hold.start()
        hold.start()  # idempotent
    other = shared.hold("1180742165388615731", lambda: indicator("quiet"))
    other.start()
    await asyncio.sleep(0.05)
    assert made == ["busy", "quiet"]
    assert shared.channels == 2
    for hold in holds[:-1]:
        hold.stop()
        hold.stop()
    assert shared.channels == 2  # one reply still in progress in the busy channel
    holds[-1].stop()
    other.stop()
    assert shared.channels == 0
    count = len(shown)
    await asyncio.sleep(0.05)
    assert len(shown) == count  # stopped: no more typing requests
    assert 2 <= shown.count("busy") <= 10  # paced by every_s, not once per reply
