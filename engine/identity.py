"""One person, several platform accounts: linking them into one identity.

A ``user_key`` (``"discord:1234"``) names one platform account. Someone who talks to the bot
on two platforms links the two: ``/link`` on one account gives a one-time code, ``/link CODE``
on the other merges the identities. The account that asked for the code keeps its identity
(the *canonical* user_key); the other one's profile, messages, memories (rows and vectors),
relationship and settings move into it, and from then on the engine resolves that account to
the canonical key before it recalls, stores or updates anything.

Codes: 8 characters from an alphabet without look-alikes (no 0/O, 1/I/L), drawn with
``secrets``; they live in the Cache port (shared across processes with Redis) for 10 minutes,
work once (an atomic ``incr`` claims a code, so two redeemers cannot both win), and a new
``/link`` voids the account's previous code. Each account may try at most 5 codes per 10
minutes, right or wrong: guessing a code is hopeless (31**8 codes).

Storage (no table of its own): the SQL settings table holds, under the scope
``identity:<account>``, the key ``linked_to`` (the canonical user_key of a linked account) and,
for a canonical identity, ``accounts`` (the accounts linked into it). Alias lookups are cached
in the Cache port (``identity:alias:<account>``, an empty string for "not linked"), so resolving
a message costs one cache read; linking and forgetting update those entries, which makes the
change visible to every process sharing the cache at once.

Merging, in an order that a failure half-way leaves safe to retry: background writes are
settled; the relationship profiles are combined; the source's vectors are re-embedded into the
target's partition (the VectorMemory port cannot read vectors back; memory texts embed to the
same vectors they had); the store moves every row in one transaction
(``ConversationStore.merge_users``); the aliases are written; writes that raced the merge are
settled and moved too; the source's vector partition is dropped. Links are made one at a time
per process (two processes linking the same identity at the same instant are not serialized).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from engine.errors import BackendUnavailable, LinkRefused, StorageError
from engine.events import utcnow
from engine.memory import vector_metadata
from engine.ports import (
    Cache,
    ConversationStore,
    Embedder,
    MemoryState,
    VectorItem,
    VectorMemory,
)
from engine.relationship import RECENT_EMOTIONS, RELATIONSHIP_SETTING, RelationshipProfile

logger = logging.getLogger(__name__)

CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8
CODE_TTL_S = 600.0
MAX_ATTEMPTS = 5
ATTEMPT_WINDOW_S = 600.0
ALIAS_CACHE_TTL_S = 3600.0
EMBED_BATCH = 64

LINKED_TO = "linked_to"
ACCOUNTS = "accounts"

Settle = Callable[[], Awaitable[None]]

_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)
_PLATFORM_NAMES = {"discord": "Discord", "telegram": "Telegram", "slack": "Slack", "web": "web chat"}


def identity_scope(account: str) -> str:
    """The settings scope that holds an account's link records."""
    return f"identity:{account}"


def generate_code(length: int = CODE_LENGTH) -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(length))


def normalize_code(text: str, length: int = CODE_LENGTH) -> str | None:
    """The code as issued (upper case, spaces and dashes removed), or None if it cannot be one."""
    code = "".join(text.split()).replace("-", "").upper()
    if len(code) != length or any(c not in CODE_ALPHABET for c in code):
        return None
    return code


def platform_name(account: str) -> str:
    platform = account.partition(":")[0]
    return _PLATFORM_NAMES.get(platform, platform.capitalize() or "other")


@dataclass(frozen=True, slots=True)
class LinkCode:
    """A one-time code for linking another account to ``account``."""

    code: str
    account: str
    expires_at: datetime
    ttl_s: float


@dataclass(frozen=True, slots=True)
class LinkResult:
    """Two identities made one: ``merged`` now resolves to ``canonical``."""

    canonical: str
    merged: str
    accounts: tuple[str, ...]
    """Every account of the identity now, the canonical one first."""
    messages: int = 0
    memories: int = 0


def link_instructions(issued: LinkCode, *, emphasis: str = "") -> str:
    """What to do with a code: where to enter it and when it expires. ``emphasis`` wraps the
    code (``"**"`` on Discord)."""
    code = f"{emphasis}{issued.code}{emphasis}"
    minutes = round(issued.ttl_s / 60)
    return (
        f"Your link code is {code}. On your other account, send me /link {issued.code} "
        f"(on Discord: the /link command with code {issued.code}). "
        f"It works once and expires in {minutes} minutes, at {issued.expires_at:%H:%M} UTC. "
        "Keep it to yourself: whoever enters it shares your memories."
    )


def linked_message(result: LinkResult, account: str) -> str:
    """The confirmation shown on ``account`` after a link."""
    others = sorted({platform_name(a) for a in result.accounts if a != account})
    where = " and ".join(others) or "other"
    return (
        f"Linked: this account and your {where} account are now one. I remember the same things "
        "on both, and erasing your data on either erases it on both."
    )


def merge_relationships(target: RelationshipProfile, source: RelationshipProfile) -> RelationshipProfile:
    """One relationship from two: interactions summed, the widest span of dates, the feelings
    of the longer-ago account first, target's preferred name (else source's)."""
    firsts = [d for d in (target.first_seen, source.first_seen) if d is not None]
    lasts = [d for d in (target.last_seen, source.last_seen) if d is not None]
    older, newer = sorted((source, target), key=lambda r: r.last_seen or _LONG_AGO)
    emotions = (*older.recent_emotions, *newer.recent_emotions)[-RECENT_EMOTIONS:]
    return RelationshipProfile(
        user_key=target.user_key,
        interactions=target.interactions + source.interactions,
        first_seen=min(firsts) if firsts else None,
        last_seen=max(lasts) if lasts else None,
        recent_emotions=emotions,
        preferred_name=target.preferred_name or source.preferred_name,
        updated_at=utcnow(),
    )


class IdentityLinker:
    """Issues and redeems link codes, merges identities, and resolves accounts to identities."""

    def __init__(
        self,
        store: ConversationStore,
        cache: Cache,
        vectors: VectorMemory,
        embedder: Embedder,
        *,
        code_ttl_s: float = CODE_TTL_S,
        max_attempts: int = MAX_ATTEMPTS,
        attempt_window_s: float = ATTEMPT_WINDOW_S,
        alias_cache_ttl_s: float = ALIAS_CACHE_TTL_S,
    ) -> None:
        self._store = store
        self._cache = cache
        self._vectors = vectors
        self._embedder = embedder
        self.code_ttl_s = code_ttl_s
        self.max_attempts = max_attempts
        self.attempt_window_s = attempt_window_s
        self._alias_ttl_s = alias_cache_ttl_s
        self._merging = asyncio.Lock()

    # --- resolving ------------------------------------------------------------------

    async def resolve(self, account: str) -> str:
        """The canonical user_key of an account (the account itself when it is not linked)."""
        key = f"identity:alias:{account}"
        cached = await self._cache_get(key)
        if cached is not None:
            return cached or account
        value = await self._store.get_setting(identity_scope(account), LINKED_TO)
        canonical = value if isinstance(value, str) and value else account
        await self._cache_set(key, "" if canonical == account else canonical, self._alias_ttl_s)
        return canonical

    async def accounts(self, user_key: str) -> list[str]:
        """Every account of the identity ``user_key`` belongs to, the canonical one first."""
        canonical = await self.resolve(user_key)
        return [canonical, *await self._linked(canonical)]

    async def _linked(self, canonical: str) -> list[str]:
        value = await self._store.get_setting(identity_scope(canonical), ACCOUNTS)
        return [a for a in value if isinstance(a, str)] if isinstance(value, list) else []

    # --- codes ----------------------------------------------------------------------

    async def issue_code(self, account: str) -> LinkCode:
        """A new one-time code for ``account``; its previous code, if any, stops working."""
        issued_key = f"link:issued:{account}"
        previous = await self._cache.get(issued_key)
        if previous:
            await self._cache.delete(f"link:code:{previous}")
        code = generate_code()
        while await self._cache.get(f"link:code:{code}") is not None:  # pragma: no cover - 1 in 8e11
            code = generate_code()
        await self._cache.set(f"link:code:{code}", account, self.code_ttl_s)
        await self._cache.set(issued_key, code, self.code_ttl_s)
        logger.info("link code issued for %s", account)
        return LinkCode(
            code=code,
            account=account,
            expires_at=utcnow() + timedelta(seconds=self.code_ttl_s),
            ttl_s=self.code_ttl_s,
        )

    async def void_code(self, code: str) -> bool:
        """Stop a code from working (it was shown where others can read it); False if unknown."""
        normalized = normalize_code(code)
        if normalized is None:
            return False
        issuer = await self._cache.get(f"link:code:{normalized}")
        if issuer is None:
            return False
        await self._cache.delete(f"link:code:{normalized}", f"link:issued:{issuer}")
        logger.info("link code of %s voided", issuer)
        return True

    async def redeem(self, account: str, code: str, *, settle: Settle | None = None) -> LinkResult:
        """Link ``account`` to the account that was given ``code``; LinkRefused when the code is
        malformed, unknown, expired or used, is this account's own, the two are linked already,
        or the account has tried too many codes lately. ``settle`` waits for background writes."""
        minutes = round(self.attempt_window_s / 60)
        attempts = await self._cache.incr(f"link:attempts:{account}", self.attempt_window_s)
        if attempts > self.max_attempts:
            logger.warning("link code refused for %s: %d attempts", account, attempts)
            raise LinkRefused(
                "too_many",
                f"Too many link codes tried from this account. Please wait {minutes} minutes and try again.",
            )
        normalized = normalize_code(code)
        if normalized is None:
            raise LinkRefused(
                "malformed",
                f"That doesn't look like a link code: codes are {CODE_LENGTH} letters and digits, "
                "like ABCD2345.",
            )
        code_key, used_key = f"link:code:{normalized}", f"link:used:{normalized}"
        issuer = await self._cache.get(code_key)
        if issuer is None:
            if await self._cache.get(used_key) is not None:
                raise LinkRefused(
                    "used", "That code was already used. Send /link on your other account for a new one."
                )
            raise LinkRefused(
                "unknown",
                f"That code is unknown or has expired: codes work for {round(self.code_ttl_s / 60)} minutes. "
                "Send /link on your other account for a new one.",
            )
        if issuer == account:
            raise LinkRefused(
                "own",
                "That code is from this account: enter it on your other account, the one you want to link.",
            )
        if await self.resolve(issuer) == await self.resolve(account):
            raise LinkRefused("already", "These accounts are already linked.")
        if await self._cache.incr(used_key, self.code_ttl_s) > 1:  # another redeemer won the race
            raise LinkRefused(
                "used", "That code was already used. Send /link on your other account for a new one."
            )
        await self._cache.delete(code_key, f"link:issued:{issuer}")
        async with self._merging:  # identities are read and rewritten by one link at a time
            target, source = await self.resolve(issuer), await self.resolve(account)
            if target == source:
                raise LinkRefused("already", "These accounts are already linked.")
            result = await self.merge(source, target, settle=settle)
        logger.info("linked %s into %s (code of %s)", source, target, issuer)
        return result

    # --- merging --------------------------------------------------------------------

    async def merge(self, source: str, target: str, *, settle: Settle | None = None) -> LinkResult:
        """Make the identity ``source`` part of ``target`` (both canonical user_keys)."""
        if source == target:
            raise ValueError("cannot merge an identity into itself")
        if settle is not None:
            await settle()
        source_accounts = await self._linked(source)
        target_accounts = await self._linked(target)
        await self._merge_relationship(source, target)
        early = [state.id for state in await self._store.memory_states(source)]
        await self._copy_vectors(source, early, into=target)
        moved = await self._store.merge_users(source, target)
        copied = set(early)
        await self._copy_vectors(target, [i for i in moved.memory_ids if i not in copied], into=target)

        accounts = [a for a in dict.fromkeys([*target_accounts, source, *source_accounts]) if a != target]
        await self._store.set_setting(identity_scope(target), ACCOUNTS, accounts)
        for account in (source, *source_accounts):
            await self._store.set_setting(identity_scope(account), LINKED_TO, target)
            await self._cache_set(f"identity:alias:{account}", target, self._alias_ttl_s)
        await self._store.delete_setting(identity_scope(source), ACCOUNTS)

        # Messages that resolved to ``source`` before the aliases were written: move them too.
        if settle is not None:
            await settle()
        late = await self._store.merge_users(source, target)
        await self._copy_vectors(target, late.memory_ids, into=target)
        await self._vectors.drop_scope(source)
        return LinkResult(
            canonical=target,
            merged=source,
            accounts=(target, *accounts),
            messages=moved.messages + late.messages,
            memories=len(moved.memory_ids) + len(late.memory_ids),
        )

    async def _merge_relationship(self, source: str, target: str) -> None:
        stored = await self._store.get_setting(source, RELATIONSHIP_SETTING)
        if stored is None:
            return
        mine = RelationshipProfile.from_json(
            target, await self._store.get_setting(target, RELATIONSHIP_SETTING)
        )
        merged = merge_relationships(mine, RelationshipProfile.from_json(source, stored))
        await self._store.set_setting(target, RELATIONSHIP_SETTING, merged.to_json())

    async def _copy_vectors(self, owner: str, ids: Sequence[str], *, into: str) -> None:
        """Embed ``owner``'s memories ``ids`` again and store them in ``into``'s partition."""
        for start in range(0, len(ids), EMBED_BATCH):
            chunk = ids[start : start + EMBED_BATCH]
            records = await self._store.get_memories(owner, chunk)
            if not records:
                continue
            states: Mapping[str, MemoryState] = {
                s.id: s for s in await self._store.memory_states(owner, [r.id for r in records])
            }
            embeddings = await self._embedder.embed([r.text for r in records])
            await self._vectors.add(
                into,
                [
                    VectorItem(
                        id=r.id, text=r.text, embedding=e, metadata=vector_metadata(r, states.get(r.id))
                    )
                    for r, e in zip(records, embeddings, strict=True)
                ],
            )

    # --- forgetting -----------------------------------------------------------------

    async def forget(self, accounts: Sequence[str]) -> None:
        """Erase the link records of these accounts (their data is erased by the caller)."""
        for account in accounts:
            scope = identity_scope(account)
            await self._store.delete_setting(scope, LINKED_TO)
            await self._store.delete_setting(scope, ACCOUNTS)
            issued = await self._cache.get(f"link:issued:{account}")
            if issued:
                await self._cache.delete(f"link:code:{issued}")
            await self._cache.delete(
                f"identity:alias:{account}", f"link:issued:{account}", f"link:attempts:{account}"
            )

    # --- the cache, best effort -------------------------------------------------------

    async def _cache_get(self, key: str) -> str | None:
        try:
            return await self._cache.get(key)
        except (BackendUnavailable, StorageError) as exc:
            logger.warning("identity cache read failed, asking the store: %s", exc)
            return None

    async def _cache_set(self, key: str, value: str, ttl_s: float) -> None:
        try:
            await self._cache.set(key, value, ttl_s)
        except (BackendUnavailable, StorageError) as exc:
            logger.warning("identity cache write failed: %s", exc)
