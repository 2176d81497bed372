"""Fixtures shared by the contract tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.conftest import require_redis


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    """A plain client of the machine's Redis, to look at what the code under test wrote."""
    client = aioredis.Redis.from_url(require_redis(), decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()
