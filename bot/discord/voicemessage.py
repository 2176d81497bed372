"""Voice messages from the bot: a spoken reply posted the way Discord's own clients post one.

discord.py 2.7 reads voice messages (``MessageFlags.voice``, ``Attachment.duration`` and
``waveform``) but has no way to send one, so this module builds the request from discord.py's
own pieces: a :class:`discord.File` whose attachment entry carries ``duration_secs`` and the
base64 ``waveform``, the ``IS_VOICE_MESSAGE`` flag (8192), and discord.py's HTTP client (so
rate limits and retries work as for any message). Discord allows nothing else alongside: no
content, embeds or other files; it refuses voice messages where the bot lacks the Send Voice
Messages permission (403, or code 50173), and then :func:`send_spoken_reply` posts the same
OGG/Opus file as an ordinary audio attachment instead.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any, Protocol

import discord
from discord.http import handle_message_parameters
from discord.utils import MISSING

logger = logging.getLogger(__name__)

VOICE_MESSAGE_FLAG = 8192
"""``MessageFlags.voice``: Discord's ``IS_VOICE_MESSAGE``."""


class SpokenNote(Protocol):
    """An OGG/Opus voice note with its duration and 256-point waveform (``voice.audio.VoiceNote``)."""

    @property
    def data(self) -> bytes: ...

    @property
    def filename(self) -> str: ...

    @property
    def duration_s(self) -> float: ...

    @property
    def waveform(self) -> bytes: ...


class VoiceMessageFile(discord.File):
    """An upload that describes itself as a voice message's audio."""

    __slots__ = ("duration_s", "waveform")

    def __init__(self, note: SpokenNote) -> None:
        super().__init__(io.BytesIO(note.data), filename=note.filename)
        self.duration_s = note.duration_s
        self.waveform = note.waveform

    def to_dict(self, index: int) -> dict[str, Any]:
        payload = super().to_dict(index)
        payload["duration_secs"] = round(self.duration_s, 3)
        payload["waveform"] = base64.b64encode(self.waveform).decode("ascii")
        return payload


async def send_voice_message(
    client: discord.Client, channel_id: int, note: SpokenNote, *, reference: discord.Message | None = None
) -> int:
    """Post ``note`` as a voice message in the channel (replying to ``reference``); its id.

    Raises :class:`discord.HTTPException` when Discord refuses it.
    """
    with handle_message_parameters(
        file=VoiceMessageFile(note),
        flags=discord.MessageFlags(voice=True),
        message_reference=reference.to_message_reference_dict() if reference is not None else MISSING,
        allowed_mentions=discord.AllowedMentions.none(),
        mention_author=False,
    ) as params:
        data = await client.http.send_message(channel_id, params=params)
    return int(data["id"])


async def send_spoken_reply(
    client: discord.Client,
    channel: discord.abc.Messageable,
    channel_id: int,
    note: SpokenNote,
    *,
    reference: discord.Message | None = None,
) -> int | None:
    """Post ``note`` as a voice message, or as an audio file where voice messages are refused;
    the id of the message posted, None when neither could be (logged, never raised)."""
    try:
        return await send_voice_message(client, channel_id, note, reference=reference)
    except discord.HTTPException as exc:
        logger.warning(
            "Discord refused a voice message in channel %s (%s); sending the audio as a file", channel_id, exc
        )
    try:
        audio = discord.File(io.BytesIO(note.data), filename=note.filename)
        if reference is not None:
            sent = await channel.send(file=audio, reference=reference, mention_author=False)
        else:
            sent = await channel.send(file=audio)
    except discord.HTTPException as exc:
        logger.warning("could not post the spoken reply in channel %s either: %s", channel_id, exc)
        return None
    return sent.id
