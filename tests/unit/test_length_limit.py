"""The engine's length limit: a message over MAX_MESSAGE_CHARS is refused with the limit named."""

from __future__ import annotations

from engine.events import ReplyKind, UniversalMessage
from engine.middleware import LengthLimit
from engine.reply import ReplyStream


def message(content: str) -> UniversalMessage:
    return UniversalMessage(content=content, user_id="u1", user_name="Uma", platform="slack", channel_id="C1")


async def answered(msg: UniversalMessage) -> ReplyStream:
    return ReplyStream.fixed("answered", ReplyKind.ANSWER)


async def test_a_message_at_the_limit_goes_through() -> None:
    response = await (await LengthLimit(10)(message("x" * 10), answered)).collect()
    assert response.kind is ReplyKind.ANSWER


async def test_a_longer_message_is_refused_naming_its_length_and_the_limit() -> None:
    response = await (await LengthLimit(10)(message("x" * 11), answered)).collect()
    assert response.kind is ReplyKind.TOO_LONG
    assert "11 characters" in response.content and "the limit is 10" in response.content


async def test_zero_means_no_limit() -> None:
    response = await (await LengthLimit(0)(message("x" * 100_000), answered)).collect()
    assert response.kind is ReplyKind.ANSWER
