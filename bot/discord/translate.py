"""discord.py messages → the engine's :class:`UniversalMessage`.

The bot's own mention is removed from the text; other mentions become readable names
(``@Alice``, ``#general``, ``@Moderators``) so the model sees what people see. A message
in a thread belongs to the thread's conversation: ``channel_id`` is the parent channel and
``thread_id`` the thread.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import discord

from engine.events import Attachment, UniversalMessage

PLATFORM = "discord"

_USER_MENTION = re.compile(r"<@!?(\d{15,22})>")
_ROLE_MENTION = re.compile(r"<@&(\d{15,22})>")
_CHANNEL_MENTION = re.compile(r"<#(\d{15,22})>")
_SPACES = re.compile(r"[ \t]{2,}")

AUDIO_TYPES = ("audio/",)
AUDIO_EXTENSIONS = (".ogg", ".oga", ".opus", ".mp3", ".wav", ".m4a", ".webm", ".flac")


def mentions_bot(message: discord.Message, bot_id: int, bot_role_ids: Iterable[int] = ()) -> bool:
    """Whether the text explicitly mentions the bot (not just the ping of a reply)."""
    ids = {int(m) for m in _USER_MENTION.findall(message.content)}
    if bot_id in ids:
        return True
    roles = {int(r) for r in _ROLE_MENTION.findall(message.content)}
    return bool(roles & set(bot_role_ids))


def readable_content(message: discord.Message, bot_id: int, bot_role_ids: Iterable[int] = ()) -> str:
    """The message text without the bot's mention, other mentions shown as names."""
    names: dict[int, str] = {u.id: u.display_name for u in message.mentions}
    role_ids = set(bot_role_ids)
    guild = message.guild

    def user(match: re.Match[str]) -> str:
        uid = int(match.group(1))
        if uid == bot_id:
            return ""
        return "@" + names.get(uid, "someone")

    def role(match: re.Match[str]) -> str:
        rid = int(match.group(1))
        if rid in role_ids:
            return ""
        found = guild.get_role(rid) if guild else None
        return "@" + (found.name if found else "role")

    def channel(match: re.Match[str]) -> str:
        cid = int(match.group(1))
        found = guild.get_channel_or_thread(cid) if guild else None
        return "#" + (found.name if found is not None else "channel")

    text = _USER_MENTION.sub(user, message.content)
    text = _ROLE_MENTION.sub(role, text)
    text = _CHANNEL_MENTION.sub(channel, text)
    return "\n".join(_SPACES.sub(" ", line).strip() for line in text.strip().splitlines()).strip()


def is_audio(attachment: discord.Attachment, message: discord.Message) -> bool:
    if attachment.is_voice_message() or (message.flags.voice and attachment.duration is not None):
        return True
    content_type = (attachment.content_type or "").split(";")[0].strip().lower()
    return content_type.startswith(AUDIO_TYPES) or attachment.filename.lower().endswith(AUDIO_EXTENSIONS)


def to_attachment(attachment: discord.Attachment, message: discord.Message) -> Attachment:
    return Attachment(
        filename=attachment.filename,
        content_type=(attachment.content_type or "application/octet-stream").split(";")[0].strip(),
        url=attachment.url,
        size=attachment.size,
        duration_secs=attachment.duration,
        is_voice_message=attachment.is_voice_message() or bool(message.flags.voice),
    )


def attachment_note(attachment: Attachment) -> str:
    return f"[attached: {attachment.filename} ({attachment.content_type})]"


def conversation_ids(channel: object) -> tuple[str, str | None]:
    """(channel_id, thread_id) of a message's channel: a thread belongs to its parent."""
    if isinstance(channel, discord.Thread):
        return str(channel.parent_id), str(channel.id)
    return str(getattr(channel, "id", "")), None


def to_universal(
    message: discord.Message,
    *,
    content: str,
    bot_id: int,
    attachments: Iterable[Attachment] = (),
    thread_id: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> UniversalMessage:
    """The engine's view of ``message``; ``thread_id`` when the answer moves into a new thread."""
    channel_id, in_thread = conversation_ids(message.channel)
    if thread_id is not None:
        in_thread = str(thread_id)
    reply_to = None
    if message.reference is not None and message.reference.message_id is not None:
        reply_to = str(message.reference.message_id)
    author = message.author
    return UniversalMessage(
        content=content,
        user_id=str(author.id),
        user_name=author.display_name,
        platform=PLATFORM,
        channel_id=channel_id,
        guild_id=str(message.guild.id) if message.guild else None,
        thread_id=in_thread,
        reply_to=reply_to,
        message_id=str(message.id),
        attachments=tuple(attachments),
        timestamp=message.created_at,
        is_bot=author.bot,
        is_self=author.id == bot_id,
        is_direct=message.guild is None,
        metadata=dict(metadata or {}),
    )
