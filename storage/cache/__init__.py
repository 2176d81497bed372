"""Implementations of :class:`engine.ports.Cache`.

- :class:`storage.cache.memory.MemoryCache`: in-process, for one process and for tests.
- :class:`storage.cache.redis.RedisCache`: Redis through ``redis.asyncio``, shared between processes.

Both are importable from here; each backend module is imported only when its class is first
asked for, so ``redis`` is not imported by a deployment that does not use it.

Semantics shared by both backends (the contract suite, ``tests/contract/test_cache.py``, checks them):
``ttl_s`` must be positive; ``set`` without a ttl keeps the key until it is deleted or overwritten;
``incr`` sets the expiry only on the increment that creates the counter; ``push`` keeps the newest
``max_len`` (>= 1) entries; ``tail`` with ``n <= 0`` is ``[]``; using a key as the wrong kind (a
list as a string, ...) raises :class:`engine.errors.StorageError`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.cache.memory import MemoryCache
    from storage.cache.redis import RedisCache

__all__ = ["MemoryCache", "RedisCache", "check_list_len", "check_ttl"]


def check_ttl(ttl_s: float) -> None:
    """Reject a non-positive time-to-live (a caller bug, not a storage failure)."""
    if not ttl_s > 0:
        raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")


def check_list_len(max_len: int) -> None:
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, got {max_len!r}")


def __getattr__(name: str) -> Any:
    if name == "MemoryCache":
        from storage.cache.memory import MemoryCache

        return MemoryCache
    if name == "RedisCache":
        from storage.cache.redis import RedisCache

        return RedisCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
