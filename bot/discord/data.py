"""A user's own data: export it, forget their memories, forget them entirely.

Built on the engine's ports so it can move into the engine unchanged.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from engine.pipeline import Engine
from engine.ports import ConversationStore, MemoryRecord, VectorMemory

PAGE = 500
MAX_EXPORTED_MESSAGES = 100_000


async def all_memories(store: ConversationStore, user_key: str) -> list[MemoryRecord]:
    """Every memory of the user, newest first."""
    found: list[MemoryRecord] = []
    while True:
        page = await store.list_memories(user_key, limit=PAGE, offset=len(found))
        found.extend(page)
        if len(page) < PAGE:
            return found


async def export_user_data(engine: Engine, store: ConversationStore, user_key: str) -> dict[str, Any]:
    """Everything stored about the user, as plain JSON-ready data."""
    await engine.writer.drain()
    await engine.relationships.drain()
    profile = await store.get_user(user_key)
    relationship = None if profile is None else await engine.relationships.get(user_key, profile)
    memories = await all_memories(store, user_key)
    messages = await store.user_messages(user_key, limit=MAX_EXPORTED_MESSAGES)
    return {
        "exported_at": datetime.now(UTC).isoformat(),
        "user_key": user_key,
        "linked_accounts": (await engine.linked_accounts(user_key))[1:],
        "profile": None
        if profile is None
        else {
            "display_name": profile.display_name,
            "preferred_name": profile.preferred_name,
            "first_seen": profile.first_seen.isoformat(),
            "last_seen": profile.last_seen.isoformat(),
            "message_count": profile.message_count,
        },
        "relationship": None if relationship is None else relationship.to_json(),
        "memories": [
            {
                "id": m.id,
                "text": m.text,
                "created_at": m.created_at.isoformat(),
                "kind": m.kind,
                "importance": m.importance,
                "platform": m.platform,
                "channel_id": m.channel_id,
                "source_message_ids": list(m.source_message_ids),
            }
            for m in memories
        ],
        "messages": [
            {
                "id": m.id,
                "conversation": m.conversation_key,
                "role": m.role,
                "author": m.user_name,
                "content": m.content,
                "created_at": m.created_at.isoformat(),
                "channel_id": m.channel_id,
                "guild_id": m.guild_id,
                "thread_id": m.thread_id,
            }
            for m in messages
        ],
    }


def export_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, ensure_ascii=False, indent=2).encode()


async def forget_memories(
    engine: Engine,
    store: ConversationStore,
    vectors: VectorMemory,
    user_key: str,
    ids: list[str] | None = None,
) -> int:
    """Erase the user's memories (all of them, or those ``ids``): rows and vectors.

    Conversation history is kept; ``Engine.forget_user`` erases everything.
    """
    await engine.writer.drain()
    if ids is None:
        ids = [m.id for m in await all_memories(store, user_key)]
        removed = await store.delete_memories(user_key, ids) if ids else 0
        await engine.recall.forget(user_key)
        return removed
    owned = [m.id for m in await store.get_memories(user_key, ids)]
    if not owned:
        return 0
    removed = await store.delete_memories(user_key, owned)
    await vectors.delete(user_key, owned)
    return removed
