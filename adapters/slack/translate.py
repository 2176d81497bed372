"""Slack message text ↔ plain text, and Slack events → :class:`UniversalMessage`.

Incoming text uses Slack's markup: ``<@U123>`` mentions, ``<#C123|general>`` channels,
``<!here>`` broadcasts, ``<https://x|label>`` links, and ``&amp; &lt; &gt;`` escapes. The engine
gets readable text. Outgoing text is escaped so that nothing the model writes can become a
mention or a broadcast (an ``<!channel>`` in a reply stays text).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from engine.events import UniversalMessage

PLATFORM = "slack"

_MARKUP = re.compile(r"<([@#!]?)([^<>|]*)(?:\|([^<>]*))?>")


def escape(text: str) -> str:
    """Text for Slack's ``text`` field: only ``&``, ``<`` and ``>`` are escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def unescape(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


async def readable_text(
    text: str, *, bot_user_id: str | None, user_name: Callable[[str], Awaitable[str]]
) -> str:
    """Slack markup → plain text; the bot's own mention is dropped, other users are named."""
    pieces: list[str] = []
    last = 0
    for match in _MARKUP.finditer(text):
        pieces.append(text[last : match.start()])
        last = match.end()
        sigil, target, label = match.groups()
        if sigil == "@":
            if target != bot_user_id:
                pieces.append("@" + (label or await user_name(target)))
        elif sigil == "#":
            pieces.append("#" + (label or target))
        elif sigil == "!":
            pieces.append(label or "@" + target.split("^")[0])
        elif label and label != target:
            pieces.append(f"{label} ({target})")
        else:
            pieces.append(target.removeprefix("mailto:"))
    pieces.append(text[last:])
    return re.sub(r"[ \t]{2,}", " ", unescape("".join(pieces))).strip()


def is_direct(event: Mapping[str, Any]) -> bool:
    return event.get("channel_type") == "im" or str(event.get("channel", "")).startswith("D")


def reply_thread(event: Mapping[str, Any]) -> str | None:
    """Where the answer goes: the event's thread; a channel mention starts one; a DM answers inline."""
    thread = event.get("thread_ts")
    if thread:
        return str(thread)
    return None if is_direct(event) else str(event["ts"])


_TS = re.compile(r"\d{1,12}(\.\d{1,9})?")


def is_well_formed(event: Mapping[str, Any]) -> bool:
    """A message event this adapter can answer: user, channel and ts strings, a real timestamp."""
    user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
    return (
        all(isinstance(v, str) and v for v in (user, channel, ts))
        and _TS.fullmatch(str(ts)) is not None
        and isinstance(event.get("text", ""), str | None)
        and isinstance(event.get("thread_ts", ""), str | None)
    )


def to_universal(
    event: Mapping[str, Any], *, content: str, user_name: str, team_id: str | None
) -> UniversalMessage:
    ts = str(event["ts"])
    return UniversalMessage(
        content=content,
        user_id=str(event["user"]),
        user_name=user_name,
        platform=PLATFORM,
        channel_id=str(event["channel"]),
        guild_id=team_id,
        thread_id=reply_thread(event),
        message_id=ts,
        timestamp=datetime.fromtimestamp(float(ts), UTC),
        is_bot=bool(event.get("bot_id")),
        is_direct=is_direct(event),
        metadata={"event_type": str(event.get("type", ""))},
    )
