"""Telegram ``Message`` → :class:`UniversalMessage`, and when a group message is meant for the bot."""

from __future__ import annotations

import re

from telegram import Message, MessageEntity, User
from telegram.constants import ChatType

from engine.events import Attachment, UniversalMessage

PLATFORM = "telegram"


def is_private(message: Message) -> bool:
    return message.chat.type == ChatType.PRIVATE


def mentions_bot(message: Message, bot: User) -> bool:
    """Whether the text or caption names the bot: ``@username`` or a text mention of its user."""
    entities = {**message.parse_entities(), **message.parse_caption_entities()}
    username = f"@{bot.username}".lower() if bot.username else None
    for entity, text in entities.items():
        if entity.type == MessageEntity.MENTION and username and text.lower() == username:
            return True
        if entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == bot.id:
            return True
    return False


def replies_to_bot(message: Message, bot: User) -> bool:
    replied = message.reply_to_message
    return bool(replied and replied.from_user and replied.from_user.id == bot.id)


def is_addressed(message: Message, bot: User) -> bool:
    """Private chats: always. Groups: only when the bot is mentioned or replied to."""
    return is_private(message) or mentions_bot(message, bot) or replies_to_bot(message, bot)


def strip_mention(text: str, bot: User) -> str:
    """The text without ``@botname`` (anywhere, any case), whitespace tidied."""
    if bot.username:
        text = re.sub(rf"@{re.escape(bot.username)}\b", "", text, flags=re.IGNORECASE)
    return re.sub(r"[ \t]{2,}", " ", text).strip()


def thread_id(message: Message) -> int | None:
    """The forum topic of the message, if it is in one."""
    return message.message_thread_id if message.is_topic_message else None


def to_universal(
    message: Message,
    bot: User,
    *,
    content: str,
    attachments: tuple[Attachment, ...] = (),
    metadata: dict[str, str] | None = None,
) -> UniversalMessage:
    user = message.from_user
    if user is None:
        raise ValueError("a message without a sender cannot be answered")
    topic = thread_id(message)
    replied = message.reply_to_message
    return UniversalMessage(
        content=content,
        user_id=str(user.id),
        user_name=user.full_name or user.username or str(user.id),
        platform=PLATFORM,
        channel_id=str(message.chat.id),
        thread_id=str(topic) if topic is not None else None,
        reply_to=str(replied.message_id) if replied else None,
        message_id=str(message.message_id),
        attachments=attachments,
        timestamp=message.date,
        is_bot=user.is_bot,
        is_self=user.id == bot.id,
        is_direct=is_private(message),
        metadata={"chat_type": str(message.chat.type), **(metadata or {})},
    )
