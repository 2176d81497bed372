"""``MicroBatchingEmbedder``: concurrent requests share one call of the model, each gets its own."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from engine.embedding import MicroBatchingEmbedder
from engine.ports import Vector
from tests.fakes.ports import FakeEmbedder


class CountingEmbedder(FakeEmbedder):
    """The fake embedder, recording the size of every call; optionally failing or slow."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.fail: Exception | None = None
        self.delay_s = 0.0

    async def embed(self, texts: Sequence[str]) -> list[Vector]:
        self.batches.append(len(texts))
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        return await super().embed(texts)


async def test_concurrent_requests_share_one_call_and_each_gets_its_own_vectors() -> None:
    inner = CountingEmbedder()
    batching = MicroBatchingEmbedder(inner, window_s=0.01)
    texts = [f"Ana: message number {i} about the garden" for i in range(10)]
    results = await asyncio.gather(*(batching.embed([t]) for t in texts), batching.embed(texts[:3]))
    assert inner.batches == [13]
    expected = await FakeEmbedder().embed(texts)
    assert [r[0] for r in results[:10]] == expected
    assert results[10] == expected[:3]


async def test_a_full_batch_goes_at_once_and_the_rest_follows() -> None:
    inner = CountingEmbedder()
    batching = MicroBatchingEmbedder(inner, window_s=5.0, max_batch=4)
    texts = [f"text {i}" for i in range(6)]
    first = [asyncio.ensure_future(batching.embed([t])) for t in texts[:4]]
    await asyncio.wait_for(asyncio.gather(*first), 1.0)  # did not wait out the 5 s window
    batching.window_s = 0.005
    rest = await asyncio.wait_for(asyncio.gather(*(batching.embed([t]) for t in texts[4:])), 10)
    assert inner.batches == [4, 2]
    assert [r[0] for r in rest] == await FakeEmbedder().embed(texts[4:])


async def test_a_failed_call_fails_its_callers_and_the_next_batch_works() -> None:
    inner = CountingEmbedder()
    batching = MicroBatchingEmbedder(inner, window_s=0.005)
    inner.fail = RuntimeError("model crashed")
    with pytest.raises(RuntimeError, match="model crashed"):
        await asyncio.gather(batching.embed(["a b c"]), batching.embed(["d e f"]))
    inner.fail = None
    assert await batching.embed(["a b c"]) == await FakeEmbedder().embed(["a b c"])


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    inner = CountingEmbedder()
    inner.delay_s = 0.05
    batching = MicroBatchingEmbedder(inner, window_s=0.005)
    impatient = asyncio.ensure_future(batching.embed(["one two three"]))
    patient = asyncio.ensure_future(batching.embed(["four five six"]))
    await asyncio.sleep(0.02)
    impatient.cancel()
    assert await patient == await FakeEmbedder().embed(["four five six"])
    assert batching.dimension == inner.dimension
