"""The Discord adapter: the real discord.py client in front of the engine.

When it answers
    In DMs; when mentioned (the user or the bot's own role); when someone replies to one
    of its messages; in threads it opened; and in channels an admin set to ``always``.
    Never to itself, to other bots (unless ``DISCORD_IGNORE_BOTS=false``), to @everyone /
    @here pings, or in channels set to ``off``.

How it answers
    Typing at once, then the reply streamed by :class:`ReplyRenderer` (first chunk posted
    quickly, paced edits, split at 2000 characters), in a server as a reply to the message it
    answers. A channel's messages are answered concurrently: they reach the engine in arrival
    order and their replies are generated in parallel (``adapters/ordering.py``,
    ``engine/pipeline.py``); one person's messages are answered one after another. Voice
    messages and audio files are transcribed through the ``SpeechToText`` port; other
    attachments are noted in the text (``[attached: photo.png (image/png)]``). Each message is
    handled in its own task with one error boundary: an unexpected failure is logged and the
    user gets a short apology, never silence.

Voice replies
    When the reply's persona has ``voice_replies: true`` and a ``TextToSpeech`` port is
    configured, the complete text reply is followed by the same reply spoken in the
    persona's ``voice``, posted as a Discord voice message (OGG/Opus, see
    ``voicemessage.py``). Speech that fails (too long, no engine free) is logged and
    skipped: the text reply always stands on its own.

Threads (``DISCORD_THREAD_MODE``, or ``/config thread-mode`` per server)
    ``off``: answer in the channel. ``auto``: a reply longer than one message continues
    in a thread opened on it. ``always``: each new exchange in a channel opens a thread
    from the user's message. One conversation per channel and one per thread.

Sharding
    ``DISCORD_SHARD_COUNT`` alone runs every shard in this process (``AutoShardedClient``);
    with ``DISCORD_SHARD_IDS`` this process runs only those, so several processes can share
    one bot.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp
import discord
import yarl

from adapters.guard import PlatformGuard
from adapters.ordering import ArrivalOrder, Ticket
from adapters.streaming import ActivityHold, SharedActivity
from adapters.textsplit import split_message
from engine.checkins import CheckinScheduler
from engine.errors import BackendUnavailable, ConfigError, InputError, WhisperEngineError
from engine.events import AIResponse, Attachment, ReplyKind, UniversalMessage
from engine.health import ComponentHealth, overall
from engine.pipeline import APOLOGY, Engine
from engine.ports import (
    ConversationStore,
    DirectMessageSent,
    SpeechToText,
    TextToSpeech,
    VectorMemory,
)

from .commands import WhisperCommandTree
from .config import DISCORD_LIMIT, DiscordConfig
from .render import ReplyRenderer, Typing
from .settings import ChannelMode, DiscordSettings, GuildRateLimit, ThreadMode
from .translate import (
    attachment_note,
    is_audio,
    mentions_bot,
    readable_content,
    to_attachment,
    to_universal,
)
from .voicemessage import send_spoken_reply

logger = logging.getLogger(__name__)

HealthSource = Callable[[], Awaitable[Mapping[str, ComponentHealth]]]

VOICE_DISABLED = (
    "Voice messages aren't enabled on this bot yet, so I can't listen to that. Could you type it?"
)
VOICE_FAILED = "Sorry, I couldn't make out that voice message. Could you try again or type it?"
VOICE_EMPTY = "I couldn't hear anything in that voice message."
VOICE_TOO_LARGE = "That audio is too large for me to listen to (the limit is {mb} MB)."
TOO_LONG = "That message is too long for me to read in one go ({length} characters; the limit is {limit})."
THREAD_NAME_CHARS = 60
REMEMBERED_REPLIES = 5000
ANSWERED_TYPES = (discord.MessageType.default, discord.MessageType.reply)
TRANSIENT_ERRORS = (discord.DiscordServerError, aiohttp.ClientError, OSError)
"""Failures of a Discord API call worth retrying (after discord.py's own retries of 500/502/504
and of 429s it can wait out); together they are what opens Discord's circuit."""
PLATFORM_ERRORS = (BackendUnavailable, *TRANSIENT_ERRORS)
GUARDED_ROUTES = ("/channels/", "/users/@me/channels")
"""Sending, editing, typing, threads and DMs go through the guard; log-in, the gateway's URL and
the slash-command sync do not (discord.py's reconnect loop handles those itself)."""


def _point_discord_py_at(config: DiscordConfig) -> None:
    """discord.py reads its endpoints from class attributes; one Discord per process."""
    discord.http.Route.BASE = config.api_base_url
    gateway = config.gateway_url or "wss://gateway.discord.gg/"
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway)


class _Hooks:
    """Connects a discord.py client to the adapter."""

    adapter: DiscordAdapter

    async def setup_hook(self) -> None:
        await self.adapter._setup_hook()

    async def on_ready(self) -> None:
        await self.adapter._on_ready()

    async def on_message(self, message: discord.Message) -> None:
        self.adapter.dispatch(message)

    async def on_connect(self) -> None:
        self.adapter.guard.connection_changed(True)

    async def on_resumed(self) -> None:
        self.adapter.guard.connection_changed(True)

    async def on_disconnect(self) -> None:
        self.adapter.guard.connection_changed(False, "the gateway connection was lost; reconnecting")


class _Client(_Hooks, discord.Client):
    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        self.adapter = adapter
        super().__init__(**options)


class _ShardedClient(_Hooks, discord.AutoShardedClient):
    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        self.adapter = adapter
        super().__init__(**options)


class _Unheard(Exception):
    """An audio attachment that gives no transcript; ``notice`` tells the user why."""

    def __init__(self, notice: str) -> None:
        super().__init__(notice)
        self.notice = notice


@dataclasses.dataclass(slots=True)
class _Progress:
    """What has been posted for one message so far, for its error boundary."""

    renderer: ReplyRenderer | None = None
    notice: discord.Message | None = None

    @property
    def posted(self) -> bool:
        return self.notice is not None or bool(self.renderer and self.renderer.messages)


class DiscordAdapter:
    """Owns the discord.py client; ``start()`` logs in and connects, ``aclose()`` disconnects."""

    def __init__(
        self,
        engine: Engine,
        config: DiscordConfig,
        *,
        store: ConversationStore,
        vectors: VectorMemory,
        health: HealthSource,
        choices: Mapping[str, str] | None = None,
        stt: SpeechToText | None = None,
        tts: TextToSpeech | None = None,
        guard: PlatformGuard | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.guard = guard or PlatformGuard("discord", service="Discord API", variable="DISCORD_API_BASE_URL")
        """Timeout, retries and circuit breaker of every message sent; the ``discord`` health line."""
        self.guard.mode = "gateway"
        self.store = store
        self.vectors = vectors
        self.stt = stt
        self.tts = tts
        self.settings = DiscordSettings(store)
        self._health = health
        self._choices = dict(choices or {})
        self._client: discord.Client | None = None
        self.tree: WhisperCommandTree | None = None
        self._connection: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._typing = SharedActivity()
        """One "typing…" indicator per channel, whatever the number of replies in progress there."""
        self._arrival = ArrivalOrder()
        """Each channel's messages are handed to the engine in the order they arrived."""
        self._our_messages: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._ready = asyncio.Event()
        self._closing = False
        self._started_at = time.monotonic()
        self.synced_commands = 0
        self.answered = 0
        self.spoken = 0
        self.checkins: CheckinScheduler | None = None
        """The check-in scheduler (``/checkin``), when check-ins are on."""

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def client(self) -> discord.Client:
        if self._client is None:
            raise RuntimeError("the Discord adapter is not started")
        return self._client

    def _make_client(self) -> discord.Client:
        intents = discord.Intents.default()
        intents.message_content = True
        # We never join voice channels: silence discord.py's warnings about voice libraries.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        options: dict[str, Any] = {
            "intents": intents,
            "allowed_mentions": discord.AllowedMentions.none(),
            "max_ratelimit_timeout": 30.0,
            "guild_ready_timeout": self.config.guild_ready_timeout_s,
            "enable_debug_events": False,
        }
        if self.config.sharded:
            options["shard_count"] = self.config.shard_count
            if self.config.shard_ids:
                options["shard_ids"] = list(self.config.shard_ids)
            client: discord.Client = _ShardedClient(self, **options)
        else:
            client = _Client(self, **options)
        self._guard_requests(client)
        return client

    def _guard_requests(self, client: discord.Client) -> None:
        """Send every request on :data:`GUARDED_ROUTES` through :attr:`guard`."""
        http = client.http
        request = http.request
        guard = self.guard

        async def guarded(route: discord.http.Route, **kwargs: Any) -> Any:
            if not route.path.startswith(GUARDED_ROUTES):
                return await request(route, **kwargs)

            async def attempt() -> Any:
                for file in kwargs.get("files") or ():
                    file.reset(seek=True)  # a retry uploads the file from its start again
                return await request(route, **kwargs)

            return await guard.call(attempt, transient=TRANSIENT_ERRORS)

        http.request = guarded  # type: ignore[method-assign]

    async def start(self) -> None:
        _point_discord_py_at(self.config)
        self._client = self._make_client()
        self.tree = WhisperCommandTree(self._client)
        try:
            await self._client.login(self.config.token)
        except discord.LoginFailure as exc:
            await self._client.close()
            raise ConfigError(f"Discord rejected the bot token: {exc}", variable="DISCORD_TOKEN") from exc
        except (aiohttp.ClientError, OSError, discord.HTTPException) as exc:
            await self._client.close()
            raise BackendUnavailable("Discord", str(exc), variable="DISCORD_API_BASE_URL") from exc
        self.guard.connection_changed(False, "connecting")
        self._connection = asyncio.create_task(self._run(), name="discord-gateway")

    async def _run(self) -> None:
        """The gateway connection; its one error boundary."""
        try:
            await self.client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            logger.error(
                "Discord refused the Message Content intent: enable it for this bot in the "
                "developer portal (Bot → Privileged Gateway Intents)"
            )
            self.guard.connection_changed(False, "the Message Content intent is not enabled")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("the Discord gateway connection stopped")
            self.guard.connection_changed(False, f"the gateway connection stopped: {exc!r}")

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    async def aclose(self) -> None:
        """Stop taking messages, let the replies in progress finish, then disconnect."""
        if self._client is None:
            return
        self._closing = True
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.shutdown_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._client.close()
        await _stop_ready_timers(self._client)
        if self._connection is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._connection
        self._client = None

    async def _setup_hook(self) -> None:
        if self.config.sync_commands:
            await self.sync_commands()

    async def sync_commands(self) -> None:
        """Register the slash commands: globally, or to DISCORD_GUILD_IDS (instant)."""
        assert self.tree is not None
        try:
            if self.config.guild_ids:
                for guild_id in self.config.guild_ids:
                    guild = discord.Object(id=guild_id)
                    self.tree.copy_global_to(guild=guild)
                    self.synced_commands = len(await self.tree.sync(guild=guild))
                logger.info(
                    "synced %d slash commands to %d servers", self.synced_commands, len(self.config.guild_ids)
                )
            else:
                self.synced_commands = len(await self.tree.sync())
                logger.info("synced %d slash commands globally", self.synced_commands)
        except discord.HTTPException as exc:
            logger.error("could not register slash commands: %s", exc)

    async def _on_ready(self) -> None:
        user = self.client.user
        logger.info(
            "Discord: logged in as %s (%s) in %d servers",
            user,
            user.id if user else "?",
            len(self.client.guilds),
        )
        self.guard.connection_changed(True)
        self._ready.set()

    # --- incoming messages ----------------------------------------------------------------

    def dispatch(self, message: discord.Message) -> None:
        """Answer ``message`` in a task of its own, if it is for us."""
        me = self.client.user
        if self._closing or me is None or message.author.id == me.id:
            return
        if message.author.bot and self.config.ignore_bots:
            return
        if message.type not in ANSWERED_TYPES:
            return
        # taken now, in arrival order: the channel's messages reach the engine in that order
        ticket = self._arrival.ticket(message.channel.id)
        task = asyncio.create_task(self._guarded(message, ticket), name=f"discord-message-{message.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, message: discord.Message, ticket: Ticket) -> None:
        """The error boundary of one message: log, and apologise rather than stay silent."""
        progress = _Progress()
        try:
            await self._handle(message, progress, ticket)
        except asyncio.CancelledError:
            raise
        except discord.Forbidden as exc:
            logger.warning("not allowed to answer in channel %s: %s", message.channel.id, exc)
        except PLATFORM_ERRORS as exc:
            logger.error(
                "Discord is unreachable: message %s in channel %s was not answered%s; the user's message "
                "%s (%s)",
                message.id,
                message.channel.id,
                " in full" if progress.posted else "",
                "is stored" if progress.renderer is not None else "was not stored",
                exc,
            )
        except Exception:
            logger.exception("failed to answer Discord message %s", message.id)
            if not progress.posted:
                with contextlib.suppress(discord.HTTPException, *PLATFORM_ERRORS):
                    await message.channel.send(APOLOGY)
        finally:
            ticket.pass_on()  # answered, dropped or failed: the channel's next message goes on

    async def _should_answer(self, message: discord.Message) -> bool:
        me = self.client.user
        assert me is not None
        if message.guild is None:
            mode = await self.settings.channel_mode(message.channel.id)
            return mode is not ChannelMode.OFF
        channel = message.channel
        parent_id = channel.parent_id if isinstance(channel, discord.Thread) else None
        mode = await self.settings.channel_mode(channel.id, parent_id)
        if mode is ChannelMode.OFF:
            return False
        direct = mentions_bot(message, me.id, self._bot_role_ids(message)) or self._replies_to_us(message)
        if direct:
            return True
        if message.mention_everyone:
            return False
        if isinstance(channel, discord.Thread) and channel.owner_id == me.id:
            return True
        return mode is ChannelMode.ALWAYS

    def _bot_role_ids(self, message: discord.Message) -> list[int]:
        guild = message.guild
        role = guild.self_role if guild is not None else None
        return [role.id] if role is not None else []

    def _replies_to_us(self, message: discord.Message) -> bool:
        ref = message.reference
        if ref is None or ref.message_id is None:
            return False
        if isinstance(ref.resolved, discord.Message):
            me = self.client.user
            return me is not None and ref.resolved.author.id == me.id
        return ref.message_id in self._our_messages

    def _remember_ours(self, messages: list[discord.Message]) -> None:
        for sent in messages:
            self._remember_id(sent.id)

    def _remember_id(self, message_id: int) -> None:
        self._our_messages[message_id] = None
        while len(self._our_messages) > REMEMBERED_REPLIES:
            self._our_messages.popitem(last=False)

    async def _handle(self, message: discord.Message, progress: _Progress, ticket: Ticket) -> None:
        """Answer one message if it is for us: prepared concurrently with the channel's other
        messages, handed to the engine in arrival order (``adapters/ordering.py``)."""
        if not await self._should_answer(message):
            return
        me = self.client.user
        assert me is not None
        typing = self._typing_in(message.channel)
        typing.start()
        try:
            prepared = await self._prepare(message, me.id)
            if isinstance(prepared, str):
                typing.stop()
                await self._send_notice(message, prepared, progress)
                return
            await ticket.turn()
            limited = await self._guild_rate_limited(message, prepared)
            if limited is not None:
                typing.stop()
                await self._send_notice(message, limited, progress)
                return
            await self._answer(message, prepared, typing, progress, ticket)
        finally:
            typing.stop()

    def _typing_in(self, channel: discord.abc.Messageable) -> ActivityHold:
        """This reply's share of the channel's one "typing…" indicator."""
        key = getattr(channel, "id", id(channel))
        return self._typing.hold(key, lambda: Typing(channel))

    async def _prepare(self, message: discord.Message, bot_id: int) -> UniversalMessage | str:
        """The engine's message, or a notice to post instead (voice disabled, too long...)."""
        text = readable_content(message, bot_id, self._bot_role_ids(message))
        notes: list[str] = []
        attachments: list[Attachment] = []
        heard: list[str] = []
        for item in message.attachments:
            attachment = to_attachment(item, message)
            attachments.append(attachment)
            if not is_audio(item, message):
                notes.append(attachment_note(attachment))
                continue
            try:
                if self.stt is None:
                    raise _Unheard(VOICE_DISABLED)
                heard.append(await self._transcribe(item, attachment))
            except _Unheard as unheard:
                if attachment.is_voice_message or not text:
                    # Nothing else to answer: say why instead of guessing.
                    return unheard.notice
                why = "not transcribed" if self.stt is not None else "speech-to-text is off"
                notes.append(f"{attachment_note(attachment)[:-1]}; {why}]")
        if heard and not any(heard):
            return VOICE_EMPTY
        content = "\n".join(part for part in (text, *heard, *notes) if part)
        if not content:
            content = "(an empty message)"
        if len(content) > self.config.max_message_chars:
            return TOO_LONG.format(length=len(content), limit=self.config.max_message_chars)
        metadata = {"input": "voice"} if heard else {}
        return to_universal(
            message, content=content, bot_id=bot_id, attachments=attachments, metadata=metadata
        )

    async def _transcribe(self, item: discord.Attachment, attachment: Attachment) -> str:
        """The transcript; raises _Unheard with a notice fit for the user when there is none."""
        assert self.stt is not None
        if item.size > self.config.max_audio_bytes:
            logger.warning("voice attachment %s is too large (%d bytes)", item.filename, item.size)
            raise _Unheard(VOICE_TOO_LARGE.format(mb=self.config.max_audio_bytes // (1024 * 1024)))
        try:
            audio = await item.read()
            transcript = await self.stt.transcribe(audio, content_type=attachment.content_type)
        except discord.HTTPException as exc:
            logger.warning("could not download voice attachment %s: %s", item.filename, exc)
            raise _Unheard(VOICE_FAILED) from exc
        except InputError as exc:
            logger.info("unusable audio in %s: %s", item.filename, exc)
            raise _Unheard(f"Sorry, I couldn't use that audio: {exc}") from exc
        except WhisperEngineError as exc:
            logger.error("speech-to-text failed for %s: %s", item.filename, exc)
            raise _Unheard(VOICE_FAILED) from exc
        return transcript.text.strip()

    async def _guild_rate_limited(self, message: discord.Message, universal: UniversalMessage) -> str | None:
        """The server's own limit (``/config rate-limit``), on top of the bot-wide one."""
        if message.guild is None:
            return None
        limit: GuildRateLimit | None = (await self.settings.guild_config(message.guild.id)).rate_limit
        if limit is None or limit.messages <= 0:
            return None
        window = int(time.time() // limit.window_s)
        key = f"rl:{universal.user_key}:guild:{message.guild.id}:{window}"
        if await self.engine.cache.incr(key, limit.window_s) <= limit.messages:
            return None
        wait = max(1, math.ceil((window + 1) * limit.window_s - time.time()))
        return (
            f"You're sending messages faster than this server allows, {universal.user_name}. "
            f"Give me about {wait} seconds and try again."
        )

    async def _thread_mode(self, message: discord.Message) -> ThreadMode:
        if message.guild is None or not isinstance(message.channel, discord.TextChannel):
            return ThreadMode.OFF
        configured = (await self.settings.guild_config(message.guild.id)).thread_mode
        return configured or self.config.thread_mode

    async def _answer(
        self,
        message: discord.Message,
        universal: UniversalMessage,
        typing: ActivityHold,
        progress: _Progress,
        ticket: Ticket,
    ) -> None:
        mode = await self._thread_mode(message)
        target: discord.abc.Messageable = message.channel
        reference: discord.Message | None = message if message.guild is not None else None
        if mode is ThreadMode.ALWAYS:
            thread = await self._open_thread(message, universal)
            if thread is not None:
                typing.stop()
                typing = self._typing_in(thread)
                typing.start()
                target, reference = thread, None
                universal = dataclasses.replace(universal, thread_id=str(thread.id))
        continuation = self._auto_thread(universal) if mode is ThreadMode.AUTO else None
        renderer = ReplyRenderer(
            target,
            reference=reference,
            edit_interval_s=self.config.edit_interval_s,
            continuation=continuation,
            typing=typing,
        )
        progress.renderer = renderer
        stream = self.engine.handle(universal, on_placed=ticket.pass_on)
        try:
            await renderer.render(stream)
        finally:
            self._remember_ours(renderer.messages)
        response = stream.response
        self.answered += 1
        if response.kind is ReplyKind.APOLOGY:
            logger.warning("answered %s with an apology: %s", universal.user_key, response.error)
        if not renderer.messages and response.kind is not ReplyKind.IGNORED:
            # Nothing printable came back (only whitespace): never leave the user in silence.
            await target.send(APOLOGY)
        elif renderer.messages and response.kind is ReplyKind.ANSWER:
            await self._speak(response, renderer.messages[0], reference)

    async def _speak(
        self, response: AIResponse, first: discord.Message, reference: discord.Message | None
    ) -> None:
        """Follow the text reply with a voice message when its persona asks for one."""
        persona = self.engine.personas.library.get(response.persona) if response.persona else None
        if self.tts is None or persona is None or not persona.voice_replies:
            return
        from voice.audio import to_voice_note

        try:
            speech = await self.tts.synthesize(response.content, voice=persona.voice)
            note = await to_voice_note(speech)
        except WhisperEngineError as exc:
            logger.warning("no voice reply for persona %s: %s", persona.name, exc)
            return
        channel = first.channel
        sent = await send_spoken_reply(self.client, channel, channel.id, note, reference=reference)
        if sent is not None:
            self.spoken += 1
            self._remember_id(sent)

    async def _open_thread(
        self, message: discord.Message, universal: UniversalMessage
    ) -> discord.Thread | None:
        name = _thread_name(universal)
        try:
            return await message.create_thread(name=name)
        except discord.HTTPException as exc:
            logger.warning("could not open a thread in channel %s: %s", message.channel.id, exc)
            return None

    def _auto_thread(
        self, universal: UniversalMessage
    ) -> Callable[[discord.Message], Awaitable[discord.abc.Messageable]]:
        opened: list[discord.abc.Messageable] = []

        async def continuation(first: discord.Message) -> discord.abc.Messageable:
            if not opened:
                try:
                    opened.append(await first.create_thread(name=_thread_name(universal)))
                except discord.HTTPException as exc:
                    logger.warning("could not open a thread for a long reply: %s", exc)
                    opened.append(first.channel)
            return opened[0]

        return continuation

    async def _send_notice(self, message: discord.Message, text: str, progress: _Progress) -> None:
        if message.guild is not None:
            sent = await message.channel.send(text, reference=message, mention_author=False)
        else:
            sent = await message.channel.send(text)
        progress.notice = sent
        self._remember_ours([sent])

    # --- writing first (check-ins) -----------------------------------------------------------

    async def _dm(self, user_id: str) -> discord.DMChannel:
        try:
            return await self.client.create_dm(discord.Object(id=int(user_id)))
        except ValueError as exc:
            raise InputError(f"not a Discord user id: {user_id!r}") from exc
        except discord.HTTPException as exc:
            raise InputError(f"Discord would not open a DM with user {user_id}: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable("Discord", str(exc), variable="DISCORD_API_BASE_URL") from exc

    async def direct_channel(self, user_id: str) -> str:
        """The id of the DM channel with the user (opened, and cached by discord.py, if need be)."""
        return str((await self._dm(user_id)).id)

    async def send_direct(self, user_id: str, text: str) -> DirectMessageSent:
        """Send ``text`` to the user's DMs, split at Discord's 2000 characters."""
        channel = await self._dm(user_id)
        sent: list[discord.Message] = []
        try:
            for part in split_message(text, DISCORD_LIMIT):
                sent.append(await channel.send(part))
        except discord.Forbidden as exc:
            raise InputError(f"user {user_id} does not accept DMs from the bot: {exc}") from exc
        except discord.DiscordServerError as exc:
            raise BackendUnavailable("Discord", str(exc), variable="DISCORD_API_BASE_URL") from exc
        except discord.HTTPException as exc:
            raise InputError(f"Discord refused a DM to user {user_id}: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendUnavailable("Discord", str(exc), variable="DISCORD_API_BASE_URL") from exc
        finally:
            self._remember_ours(sent)
        if not sent:
            raise InputError("nothing to send")
        return DirectMessageSent(channel_id=str(channel.id), message_id=str(sent[0].id))

    # --- status -----------------------------------------------------------------------------

    async def status_text(self) -> str:
        health = await self._health()
        lines = [f"**WhisperEngine status: {overall(health)}**"]
        for item in health.values():
            latency = f" · {item.latency_ms:.1f} ms" if item.latency_ms is not None else ""
            detail = f" — {item.detail}" if item.detail else ""
            lines.append(f"`{item.name:<8}` **{item.status}** · {item.backend}{latency}{detail}")
        if "llm" in self._choices:
            lines.append(f"LLM chain: {self._choices['llm']}")
        lines.append(
            f"Memory writes queued: {self.engine.writer.depth} · replies in progress: {self.engine.in_flight}"
        )
        client = self.client
        gateway_latency = client.latency
        gateway = f"{gateway_latency * 1000:.0f} ms" if math.isfinite(gateway_latency) else "n/a"
        shards = ""
        if isinstance(client, discord.AutoShardedClient):
            shards = f" · shards {sorted(client.shards)} of {client.shard_count}"
        uptime = int(time.monotonic() - self._started_at)
        lines.append(
            f"Discord: gateway latency {gateway} · {len(client.guilds)} servers{shards} · "
            f"up {uptime // 3600}h{uptime // 60 % 60:02d}m"
        )
        degraded = [h.name for h in health.values() if h.status != "ok"]
        lines.append(f"Degraded: {', '.join(degraded) if degraded else 'none'}")
        return "\n".join(lines)


async def _stop_ready_timers(client: discord.Client) -> None:
    """Cancel discord.py's READY timers, which ``Client.close()`` leaves running.

    After IDENTIFY, discord.py waits ``guild_ready_timeout`` past the last GUILD_CREATE in a
    task of its own (one per shard, and one over them when sharded) before it dispatches
    ``on_ready``; a client closed during that wait would otherwise keep the task alive and
    then call ``on_ready`` on a closed client. (Private attributes: discord.py 2.7.)
    """
    state = getattr(client, "_connection", None)
    timers = [getattr(state, "_ready_task", None), *getattr(state, "_ready_tasks", {}).values()]
    running = [task for task in timers if isinstance(task, asyncio.Task) and not task.done()]
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def _thread_name(universal: UniversalMessage) -> str:
    words = " ".join(universal.content.split())
    if not words or words.startswith("["):
        return f"Chat with {universal.user_name}"[:100]
    return words if len(words) <= THREAD_NAME_CHARS else words[: THREAD_NAME_CHARS - 1] + "…"
