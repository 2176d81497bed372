"""``SettingsMemo``: one read for a burst of callers; a local change wins over a read in flight."""

from __future__ import annotations

import asyncio

import pytest

from engine.memo import SettingsMemo


class Source:
    def __init__(self, value: str) -> None:
        self.value = value
        self.reads = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def read(self) -> str:
        self.reads += 1
        value = self.value
        await self.gate.wait()
        return value


async def test_a_burst_of_callers_shares_one_read_then_the_memo_answers() -> None:
    memo: SettingsMemo[str, str] = SettingsMemo(ttl_s=30)
    source = Source("always")
    source.gate.clear()
    callers = [
        asyncio.ensure_future(memo.get("channel:discord:1180742165388615730", source.read))
        for _ in range(200)
    ]
    await asyncio.sleep(0.01)
    source.gate.set()
    assert set(await asyncio.gather(*callers)) == {"always"}
    assert await memo.get("channel:discord:1180742165388615730", source.read) == "always"
    assert source.reads == 1 == memo.reads


async def test_a_value_put_while_a_read_is_in_flight_wins() -> None:
    memo: SettingsMemo[str, str] = SettingsMemo(ttl_s=30)
    source = Source("old")
    source.gate.clear()
    reading = asyncio.ensure_future(memo.get("k", source.read))
    await asyncio.sleep(0.01)
    memo.put("k", "new")
    source.gate.set()
    assert await reading == "old"  # that caller asked before the change
    assert await memo.get("k", source.read) == "new"
    assert source.reads == 1


async def test_values_expire_and_a_failed_read_is_not_remembered() -> None:
    memo: SettingsMemo[str, str] = SettingsMemo(ttl_s=0.05)
    source = Source("a")
    assert await memo.get("k", source.read) == "a"
    source.value = "b"
    await asyncio.sleep(0.06)
    assert await memo.get("k", source.read) == "b"

    async def broken() -> str:
        raise OSError("database away")

    await asyncio.sleep(0.06)
    with pytest.raises(OSError):
        await memo.get("k", broken)
    assert await memo.get("k", source.read) == "b"  # read again, not the failure
