"""A :class:`engine.ports.Cache` that keeps working when Redis does not.

:class:`FailoverCache` serves every call from its *primary* (Redis) while it answers. The first
call that finds Redis unreachable (``BackendUnavailable``, or no answer within ``op_timeout_s``)
opens the primary's circuit breaker: that call and every later one is served by the in-process
*fallback* cache, and health reports the cache as degraded. A background probe asks Redis every
``probe_interval_s``; once it answers, the keys written during the outage are deleted from Redis
(they hold turns and counters from before it: stale), the breaker closes, calls go to Redis
again and the fallback is emptied (so a later outage never serves what this one left behind).
When Redis is unreachable at start-up, the cache starts on the fallback and the probe takes over.

What the switch costs: recent turns cached in Redis are not seen during the outage (the engine
then reads them from the conversation store), rate-limit counters restart in each cache, and
nothing else: no call fails because Redis did. A list is only appended to on the fallback once it
has been read there (a ``tail`` that missed makes the engine rebuild it from the store): a list
begun by an append mid-outage would look complete while missing everything before the switch.
A caller's bad input (``ValueError``) and wrong-type use (``StorageError``) are raised as they
are, from whichever cache served the call.

:class:`FailoverLocks` does the same for the conversation locks kept in that Redis: while the
cache's breaker is open (or taking the Redis lock finds Redis gone) a conversation is locked in
this process only, so replies go on; processes sharing the Redis may then overlap on one
conversation until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from engine.breaker import BreakerState, CircuitBreaker
from engine.errors import BackendUnavailable
from engine.health import ComponentHealth
from engine.locks import LocalConversationLocks
from engine.ports import Cache, ConversationLocks

logger = logging.getLogger(__name__)

T = TypeVar("T")


class FailoverCache:
    """``primary`` (Redis) while it answers, ``fallback`` (in-process) while it does not."""

    def __init__(
        self,
        primary: Cache,
        fallback: Cache,
        *,
        breaker: CircuitBreaker | None = None,
        op_timeout_s: float = 1.0,
        probe_interval_s: float = 5.0,
        primary_name: str = "Redis",
    ) -> None:
        if op_timeout_s <= 0 or probe_interval_s <= 0:
            raise ValueError("op_timeout_s and probe_interval_s must be positive")
        self.primary = primary
        self.fallback = fallback
        # The first failure switches over: half the calls on each cache would serve neither well.
        self.breaker = breaker or CircuitBreaker(
            primary_name, failure_threshold=1, reset_timeout_s=probe_interval_s
        )
        self.primary_name = primary_name
        self._op_timeout_s = op_timeout_s
        self._probe_interval_s = probe_interval_s
        self._touched_keys: set[str] = set()
        self._touched_prefixes: set[str] = set()
        self._read_lists: set[str] = set()  # lists read from the fallback since the switch
        self._probe: asyncio.Task[None] | None = None
        self.switches = 0
        """How many times the cache has moved from one backend to the other."""

    @property
    def on_primary(self) -> bool:
        """Whether calls are going to the primary (Redis) now."""
        return self.breaker.state is BreakerState.CLOSED

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._probe is not None:
            return
        await self.fallback.start()
        try:
            await asyncio.wait_for(self.primary.start(), self._op_timeout_s + 5.0)
        except (BackendUnavailable, TimeoutError) as exc:
            self.fail_over(f"{exc or 'no answer at start-up'}")
        self._probe = asyncio.create_task(self._probe_loop(), name="cache-failover-probe")

    async def aclose(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
        try:
            await self.primary.aclose()
        finally:
            await self.fallback.aclose()

    async def ping(self) -> None:
        """Succeeds while either cache answers: the cache as a whole is up. (Use :meth:`health`
        to see which one serves.) A failing primary is switched away from here too."""
        if self.on_primary:
            await self._call(self.primary.ping, self.fallback.ping, touches=())
        else:
            await self.fallback.ping()

    def health(self, backend: str) -> ComponentHealth:
        """``ok`` on the primary; ``degraded`` (still serving, from memory) on the fallback."""
        if self.on_primary:
            return ComponentHealth("cache", "ok", backend)
        reason = self.breaker.last_error or "unreachable"
        return ComponentHealth(
            "cache",
            "degraded",
            f"in-process (standing in for {backend})",
            f"{self.primary_name} unreachable ({reason}); serving from the in-process cache and "
            f"checking every {self._probe_interval_s:g}s",
        )

    # --- switching ---------------------------------------------------------------------

    def fail_over(self, reason: str) -> None:
        """Serve from the fallback from now on, until the probe finds the primary again."""
        was_primary = self.on_primary
        self.breaker.record_failure(reason)
        if was_primary and not self.on_primary:
            self.switches += 1
            logger.warning("%s unreachable (%s): using the in-process cache", self.primary_name, reason)

    async def _call(
        self,
        on_primary: Callable[[], Awaitable[T]],
        on_fallback: Callable[[], Awaitable[T]],
        *,
        touches: tuple[str, ...],
        prefix: str | None = None,
    ) -> T:
        if self.on_primary:
            try:
                async with asyncio.timeout(self._op_timeout_s):
                    return await on_primary()
            except TimeoutError:
                self.fail_over(f"no answer within {self._op_timeout_s:g}s")
            except BackendUnavailable as exc:
                self.fail_over(str(exc))
        self._touched_keys.update(touches)
        if prefix is not None:
            self._touched_prefixes.add(prefix)
        return await on_fallback()

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self._probe_interval_s)
            if self.on_primary:
                continue
            try:
                await self.try_primary()
            except BackendUnavailable as exc:
                self.breaker.record_failure(str(exc))
                logger.debug("%s still unreachable: %s", self.primary_name, exc)

    async def try_primary(self) -> bool:
        """Ask the primary now; when it answers, move back to it. True when on the primary."""
        if self.on_primary:
            return True
        try:
            async with asyncio.timeout(self._op_timeout_s + 5.0):
                await self.primary.start()  # a no-op once started; connects when it never did
                await self.primary.ping()
                # Keys written to the fallback meanwhile are stale in the primary: drop them there.
                # Calls may add more while this awaits; loop until none are left, then switch
                # without awaiting in between.
                while self._touched_keys or self._touched_prefixes:
                    keys, self._touched_keys = self._touched_keys, set()
                    prefixes, self._touched_prefixes = self._touched_prefixes, set()
                    try:
                        if keys:
                            await self.primary.delete(*keys)
                        for prefix in prefixes:
                            await self.primary.delete_prefix(prefix)
                    except BaseException:
                        self._touched_keys |= keys
                        self._touched_prefixes |= prefixes
                        raise
        except TimeoutError as exc:
            raise BackendUnavailable(self.primary_name, "no answer to the health probe") from exc
        self.breaker.record_success()
        self.switches += 1
        logger.info("%s answers again: the cache is back on it", self.primary_name)
        await self.fallback.delete_prefix("")
        self._read_lists.clear()
        return True

    # --- Cache port --------------------------------------------------------------------

    async def get(self, key: str) -> str | None:
        return await self._call(lambda: self.primary.get(key), lambda: self.fallback.get(key), touches=())

    async def set(self, key: str, value: str, ttl_s: float | None = None) -> None:
        await self._call(
            lambda: self.primary.set(key, value, ttl_s),
            lambda: self.fallback.set(key, value, ttl_s),
            touches=(key,),
        )

    async def delete(self, *keys: str) -> None:
        await self._call(
            lambda: self.primary.delete(*keys), lambda: self.fallback.delete(*keys), touches=keys
        )

    async def incr(self, key: str, ttl_s: float) -> int:
        return await self._call(
            lambda: self.primary.incr(key, ttl_s), lambda: self.fallback.incr(key, ttl_s), touches=(key,)
        )

    async def push(self, key: str, value: str, max_len: int, ttl_s: float | None = None) -> None:
        async def on_fallback() -> None:
            if key not in self._read_lists and not await self.fallback.tail(key, 1):
                # A list begun mid-outage would hold only what came after the switch, and a
                # reader would take it for the whole list. Leave it missing: the next read
                # misses, and its reader rebuilds the list (recent turns: from the store).
                return
            await self.fallback.push(key, value, max_len, ttl_s)

        await self._call(lambda: self.primary.push(key, value, max_len, ttl_s), on_fallback, touches=(key,))

    async def tail(self, key: str, n: int) -> list[str]:
        async def on_fallback() -> list[str]:
            self._read_lists.add(key)
            return await self.fallback.tail(key, n)

        return await self._call(lambda: self.primary.tail(key, n), on_fallback, touches=())

    async def delete_prefix(self, prefix: str) -> int:
        return await self._call(
            lambda: self.primary.delete_prefix(prefix),
            lambda: self.fallback.delete_prefix(prefix),
            touches=(),
            prefix=prefix,
        )


class FailoverLocks:
    """Conversation locks in Redis (``primary``) while ``cache`` is on Redis; in this process only
    while it is not (the same Redis). Waiters of one key always queue in this process first."""

    def __init__(
        self, primary: ConversationLocks, cache: FailoverCache, *, wait_s: float | None = None
    ) -> None:
        self.primary = primary
        self.cache = cache
        self._local = LocalConversationLocks(wait_s=wait_s)

    async def start(self) -> None:
        await self.primary.start()

    async def aclose(self) -> None:
        await self.primary.aclose()

    @contextlib.asynccontextmanager
    async def hold(self, conversation_key: str) -> AsyncIterator[None]:
        async with self._local.hold(conversation_key), contextlib.AsyncExitStack() as held:
            if self.cache.on_primary:
                try:
                    await held.enter_async_context(self.primary.hold(conversation_key))
                except BackendUnavailable as exc:
                    self.cache.fail_over(str(exc))
                    logger.warning("%s; locking %s in this process only", exc, conversation_key)
            yield
