"""The Telegram adapter: python-telegram-bot in front of the engine.

What it does
    * Private chats: every text message is answered. Groups: only messages that mention
      the bot (``@username``) or reply to one of its messages.
    * Replies stream: "typing…" while the engine works, the first part posted as soon as
      text exists, then paced edits; Telegram's 4096-character limit is honoured by
      splitting (never truncating) with :func:`adapters.textsplit.split_text`.
    * Voice notes are downloaded, transcribed (``SpeechToText`` port) and answered with a
      voice note (``TextToSpeech`` port, then ``voice_encoder`` — by default
      :func:`voice.audio.to_voice_note` — to OGG/Opus) captioned with the transcript and the
      reply; without the ports it says so in text.
    * Commands: ``/start``, ``/help``, ``/persona`` (show, list, set NAME, reset — changes
      only by group admins or in private chats), ``/forget_me`` (asks for confirmation
      with buttons that only the asking user can press), ``/link`` and ``/link CODE`` (link the
      user's accounts on several platforms into one identity; private chats only),
      ``/checkin HH:MM ZONE`` | ``off`` | (none: show) — daily check-ins in the private chat.
    * Updates come by long polling, or, when a webhook URL is configured, on an aiohttp
      route that checks ``X-Telegram-Bot-Api-Secret-Token`` (wrong or missing: 403 and
      nothing is processed).

Everything platform-specific stays here: the engine sees :class:`UniversalMessage`s only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hmac
import logging
import math
import warnings
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from aiohttp import web
from telegram import (
    Bot,
    BotCommand,
    CallbackQuery,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
    Update,
    User,
)
from telegram.constants import ChatAction, ChatMemberStatus
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.request import HTTPXRequest
from telegram.warnings import PTBDeprecationWarning

from adapters.guard import PlatformGuard
from adapters.ordering import ArrivalOrder, Ticket
from adapters.streaming import ActivityIndicator, StreamRenderer
from adapters.textsplit import split_text, utf16_len
from engine.checkins import CheckinScheduler
from engine.errors import BackendUnavailable, ConfigError, InputError, WhisperEngineError
from engine.events import AIResponse, Attachment, UniversalMessage
from engine.identity import link_instructions, linked_message
from engine.persona import channel_scope
from engine.pipeline import Engine
from engine.ports import DirectMessageSent, SpeechAudio, SpeechToText, TextToSpeech

from .config import TelegramConfig
from .translate import PLATFORM, is_addressed, is_private, strip_mention, thread_id, to_universal
from .transport import GuardedRequest, WatchedRequest

logger = logging.getLogger(__name__)

TELEGRAM_LIMIT = 4096
CAPTION_LIMIT = 1024
MAX_VOICE_BYTES = 20 * 1024 * 1024
"""Bots can download files up to 20 MB."""
CHAT_ACTION_REPEAT_S = 4.0
"""Telegram shows a chat action for 5 seconds."""
MAX_RETRY_AFTER_S = 30.0
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
ALLOWED_UPDATES = ["message", "callback_query"]
FORGET_PREFIX = "forget"


class EncodedVoice(Protocol):
    """A voice note ready to upload (``voice.audio.VoiceNote`` is one)."""

    @property
    def data(self) -> bytes: ...

    @property
    def duration_s(self) -> float: ...


VoiceEncoder = Callable[[SpeechAudio], Awaitable[EncodedVoice]]
"""Turns the TextToSpeech port's WAV into an OGG/Opus voice note."""

HELP = (
    "Talk to me like you would to a friend: I remember what you tell me.\n\n"
    "In groups, mention me or reply to one of my messages.\n"
    "Voice notes work too{voice}.\n\n"
    "/persona — show who I am; /persona list — the personas I can be;\n"
    "/persona set NAME — change it for this chat (group admins only);\n"
    "/persona reset — back to the default\n"
    "/forget_me — erase everything I know about you\n"
    "/link — talk to me on another platform too: link your accounts so I know it's you\n"
    "/checkin 08:00 Europe/Berlin — I write to you first each day at that time; "
    "/checkin — show it; /checkin off — stop\n"
    "/help — this message"
)
SOMETHING_WRONG = "Sorry, something went wrong on my side. Please try again in a moment."
VOICE_NOT_SET_UP = (
    "Voice messages aren't set up on this bot, so I can't listen to them. Please write to me instead."
)
VOICE_TTS_NOT_SET_UP = "(Voice replies aren't set up on this bot, so here is my answer in text.)"
VOICE_TOO_BIG = "That voice message is too long for me to download. Could you send a shorter one?"
VOICE_TOO_LONG = (
    "That voice message is {seconds:g} seconds long; I can listen to at most {limit:g} seconds. "
    "Could you send a shorter one?"
)
VOICE_DOWNLOAD_FAILED = "I couldn't download that voice message from Telegram. Please try again."
VOICE_UNREADABLE = (
    "I couldn't listen to that voice message: the audio seems damaged or is in a format I can't read. "
    "Could you record it again, or type it?"
)
VOICE_STT_DOWN = "Speech recognition isn't available right now. Please type your message instead."
VOICE_EMPTY = "I couldn't hear any words in that voice message."
FORGET_QUESTION = (
    "This erases everything I know about you on Telegram (and on any account you linked with /link): "
    "our messages, your memories and your profile. It cannot be undone. Are you sure?"
)
LINK_PRIVATE_ONLY = "For your privacy, send /link to me in a private chat."
LINK_CODE_VOIDED = (
    "For your privacy, link codes only work in a private chat with me. That code was visible here, "
    "so it no longer works: send /link on your other account for a new one, then send it to me privately."
)
FORGET_DONE = "Done. I've forgotten everything about you ({count} records erased)."
CHECKINS_OFF = "Check-ins aren't enabled on this bot."
CHECKIN_NONE = "You have no check-ins. /checkin 08:00 Europe/Berlin makes me write to you each day at 08:00."
CHECKIN_USAGE = (
    "Usage: /checkin HH:MM TIME_ZONE (e.g. /checkin 08:00 Europe/Berlin), /checkin off, or /checkin "
    "to see yours."
)
CHECKIN_START_PRIVATE = "I'll write in our private chat: open it and press Start if you haven't yet."
FORGET_CANCELLED = "Okay, I kept everything."
NOT_YOUR_BUTTON = "Only the person who asked can answer this."
ADMINS_ONLY = "Only group admins can change my persona here."

T = TypeVar("T")


def split_for_telegram(text: str) -> list[str]:
    return split_text(text, TELEGRAM_LIMIT, measure=utf16_len)


def _retry_after_s(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PTBDeprecationWarning)
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


async def telegram_call(call: Callable[[], Awaitable[T]]) -> T:
    """Run one Bot API call, waiting out one flood-control pause; converts PTB's errors.

    NetworkError → BackendUnavailable; any other refusal → InputError.
    """
    for attempt in range(2):
        try:
            return await call()
        except RetryAfter as exc:
            wait = _retry_after_s(exc)
            if attempt or wait > MAX_RETRY_AFTER_S:
                raise InputError(f"Telegram flood control: retry in {wait:.0f} s") from exc
            await asyncio.sleep(wait)
        except (InvalidToken, Forbidden, BadRequest) as exc:
            raise InputError(f"Telegram refused the request: {exc}") from exc
        except NetworkError as exc:
            raise BackendUnavailable("Telegram Bot API", str(exc), variable="TELEGRAM_API_BASE_URL") from exc
        except TelegramError as exc:
            raise InputError(f"Telegram refused the request: {exc}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


class ChatActionLoop(ActivityIndicator):
    """Shows a chat action ("typing…", "recording voice…") until ``stop()``."""

    def __init__(self, bot: Bot, chat_id: int, thread: int | None, action: str) -> None:
        super().__init__(
            functools.partial(bot.send_chat_action, chat_id, action, message_thread_id=thread),
            every_s=CHAT_ACTION_REPEAT_S,
            errors=(TelegramError,),
            name=f"telegram-chat-action in {chat_id}",
        )


class TelegramSink:
    """Posts and edits the messages of one reply; the first part quotes the user's message."""

    def __init__(
        self,
        bot: Bot,
        chat_id: int,
        *,
        thread: int | None,
        quote: int | None,
        on_post: Callable[[], None] = lambda: None,
    ) -> None:
        self._bot = bot
        self._chat_id = chat_id
        self._thread = thread
        self._quote = quote
        self._on_post = on_post

    async def post(self, text: str) -> Message:
        reply = (
            ReplyParameters(message_id=self._quote, allow_sending_without_reply=True) if self._quote else None
        )
        sent = await telegram_call(
            lambda: self._bot.send_message(
                self._chat_id, text, message_thread_id=self._thread, reply_parameters=reply
            )
        )
        self._quote = None
        self._on_post()
        return sent

    async def edit(self, handle: Message, text: str) -> None:
        try:
            await telegram_call(
                lambda: self._bot.edit_message_text(text, chat_id=self._chat_id, message_id=handle.message_id)
            )
        except InputError as exc:
            if "not modified" not in str(exc).lower():
                raise


class TelegramAdapter:
    """python-telegram-bot's ``Application``, translating updates for one :class:`Engine`."""

    def __init__(
        self,
        engine: Engine,
        config: TelegramConfig,
        *,
        stt: SpeechToText | None = None,
        tts: TextToSpeech | None = None,
        voice_encoder: VoiceEncoder | None = None,
        guard: PlatformGuard | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.guard = guard or PlatformGuard(
            "telegram", service="Telegram Bot API", variable="TELEGRAM_API_BASE_URL"
        )
        """Timeout, retries and circuit breaker of every Bot API call; the ``telegram`` health line."""
        self.guard.mode = self.mode
        self.stt = stt
        self.tts = tts
        self.voice_encoder = voice_encoder
        self._application: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._runner: web.AppRunner | None = None
        self.webhook_port: int | None = None
        """The port the webhook route listens on (known after ``start()``), None when polling."""
        self._me: User | None = None
        self._arrival = ArrivalOrder()
        """A chat's messages reach the engine in the order they came (voice notes are transcribed first)."""
        self.checkins: CheckinScheduler | None = None
        """The check-in scheduler (``/checkin``), when check-ins are on."""

    # --- lifecycle --------------------------------------------------------------------------

    @property
    def me(self) -> User:
        if self._me is None:
            raise RuntimeError("the Telegram adapter is not started")
        return self._me

    @property
    def bot(self) -> Bot:
        if self._application is None:
            raise RuntimeError("the Telegram adapter is not started")
        return self._application.bot

    @property
    def mode(self) -> str:
        return "webhook" if self.config.webhook_url else "polling"

    def _build(self) -> Application[Any, Any, Any, Any, Any, Any]:
        builder = (
            Application.builder()
            .token(self.config.token)
            .base_url(self.config.api_base_url)
            .base_file_url(self.config.file_base_url)
            .concurrent_updates(True)
            .request(GuardedRequest(self._http(connection_pool_size=64, pool_timeout=10.0), self.guard))
        )
        if self.config.webhook_url:
            builder = builder.updater(None)
        else:
            polling = self._http(connection_pool_size=1, read_timeout=self.config.poll_timeout_s + 10.0)
            builder = builder.get_updates_request(WatchedRequest(polling, self.guard))
        application = builder.build()
        application.add_handler(CommandHandler("start", self._on_start))
        application.add_handler(CommandHandler("help", self._on_help))
        application.add_handler(CommandHandler("persona", self._on_persona))
        application.add_handler(CommandHandler("forget_me", self._on_forget_me))
        application.add_handler(CommandHandler("link", self._on_link))
        application.add_handler(CommandHandler("checkin", self._on_checkin))
        application.add_handler(CallbackQueryHandler(self._on_forget_button, pattern=rf"^{FORGET_PREFIX}:"))
        new_messages = filters.UpdateType.MESSAGE
        application.add_handler(MessageHandler(new_messages & filters.VOICE, self._on_voice))
        application.add_handler(MessageHandler(new_messages & filters.TEXT & ~filters.COMMAND, self._on_text))
        application.add_error_handler(self._on_error)
        return application

    def _http(
        self, *, connection_pool_size: int, pool_timeout: float = 1.0, read_timeout: float = 5.0
    ) -> HTTPXRequest:
        timeout = self.guard.timeout_s
        return HTTPXRequest(
            connection_pool_size=connection_pool_size,
            pool_timeout=pool_timeout,
            read_timeout=max(read_timeout, timeout),
            write_timeout=timeout,
            connect_timeout=min(5.0, timeout),
            media_write_timeout=max(20.0, timeout),
        )

    async def start(self) -> None:
        if self._application is not None:
            return
        application = self._build()
        try:
            await application.initialize()
        except InvalidToken as exc:
            await _close_requests(application.bot)
            raise ConfigError("Telegram rejected the bot token", variable="TELEGRAM_TOKEN") from exc
        except TelegramError as exc:
            await _close_requests(application.bot)
            raise BackendUnavailable("Telegram Bot API", str(exc), variable="TELEGRAM_API_BASE_URL") from exc
        self._application = application
        self._me = application.bot.bot
        try:
            await self._register_commands()
            await application.start()
            if self.config.webhook_url:
                await self._start_webhook()
                self.guard.connection_changed(True)
            else:
                assert application.updater is not None
                await application.updater.start_polling(
                    poll_interval=0.0,
                    timeout=dt.timedelta(seconds=self.config.poll_timeout_s),
                    allowed_updates=ALLOWED_UPDATES,
                    error_callback=self._on_polling_error,
                )
                self.guard.connection_changed(True)  # then as each long poll ends
        except BaseException:
            await self.aclose()
            raise
        logger.info("Telegram connected as @%s (%s)", self.me.username, self.mode)

    async def aclose(self) -> None:
        application, self._application = self._application, None
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if application is None:
            return
        if application.updater is not None and application.updater.running:
            await application.updater.stop()
        if application.running:
            await application.stop()
        await application.shutdown()

    async def _register_commands(self) -> None:
        commands = [
            BotCommand("help", "what I can do"),
            BotCommand("persona", "show, list or change my persona"),
            BotCommand("forget_me", "erase everything I know about you"),
            BotCommand("link", "link your accounts on other platforms"),
            BotCommand("checkin", "let me check in on you daily: /checkin 08:00 Europe/Berlin"),
        ]
        try:
            await telegram_call(lambda: self.bot.set_my_commands(commands))
        except WhisperEngineError as exc:
            logger.warning("could not register the Telegram command menu: %s", exc)

    def _on_polling_error(self, exc: TelegramError) -> None:
        logger.warning("Telegram polling failed, retrying: %s", exc)

    # --- webhook ------------------------------------------------------------------------

    async def _start_webhook(self) -> None:
        app = web.Application()
        app.router.add_post(self.config.webhook_path, self._webhook)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.config.webhook_host, self.config.webhook_port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            where = f"{self.config.webhook_host}:{self.config.webhook_port}"
            raise BackendUnavailable(
                "Telegram webhook server",
                f"cannot listen on {where}: {exc.strerror or exc}",
                variable="TELEGRAM_WEBHOOK_PORT",
            ) from exc
        self._runner = runner
        self.webhook_port = int(runner.addresses[0][1])
        url = self.config.webhook_url
        assert url is not None
        await telegram_call(
            lambda: self.bot.set_webhook(
                url, secret_token=self.config.webhook_secret, allowed_updates=ALLOWED_UPDATES
            )
        )
        logger.info(
            "Telegram webhook listening on %s:%d%s",
            self.config.webhook_host,
            self.webhook_port,
            self.config.webhook_path,
        )

    async def _webhook(self, request: web.Request) -> web.Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self.config.webhook_secret.encode()):
            logger.warning("Telegram webhook request from %s without the right secret", request.remote)
            return web.Response(status=403, text="forbidden")
        application = self._application
        if application is None:
            return web.Response(status=503, text="shutting down")
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise TypeError(f"an update is a JSON object, not {type(data).__name__}")
            update = Update.de_json(data, application.bot)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            logger.warning("malformed Telegram webhook update: %s", exc)
            return web.Response(status=400, text="malformed update")
        await application.update_queue.put(update)
        return web.Response(text="ok")

    # --- messages ----------------------------------------------------------------------

    async def _on_text(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.from_user is None or message.text is None:
            return
        if not is_addressed(message, self.me):
            return
        ticket = self._arrival.ticket(message.chat_id)  # before any await: in arrival order
        try:
            content = strip_mention(message.text, self.me) or message.text
            await self._answer_in_text(message, to_universal(message, self.me, content=content), ticket)
        finally:
            ticket.pass_on()

    async def _answer_in_text(self, message: Message, universal: UniversalMessage, ticket: Ticket) -> None:
        thread = thread_id(message)
        typing = ChatActionLoop(self.bot, message.chat_id, thread, ChatAction.TYPING)
        sink = TelegramSink(
            self.bot,
            message.chat_id,
            thread=thread,
            quote=None if is_private(message) else message.message_id,
            on_post=typing.stop,
        )
        renderer = StreamRenderer(sink, split=split_for_telegram, edit_interval_s=self.config.edit_interval_s)
        typing.start()
        try:
            await ticket.turn()
            await renderer.render(self.engine.handle(universal, on_placed=ticket.pass_on))
        except WhisperEngineError as exc:
            if isinstance(exc, BackendUnavailable) and exc.service == self.guard.service:
                logger.error(
                    "Telegram is unreachable: message %s in chat %s was not answered; the user's "
                    "message is stored (%s)",
                    universal.message_id,
                    message.chat_id,
                    exc,
                )
            else:
                logger.error("could not answer Telegram message %s: %s", universal.message_id, exc)
            if not renderer.handles:
                await self._say(message, SOMETHING_WRONG, quiet=True)
        finally:
            typing.stop()

    async def _say(self, message: Message, text: str, *, quiet: bool = False) -> list[Message]:
        """Send ``text`` (split as needed) in reply to ``message``; ``quiet`` only logs failures."""
        sink = TelegramSink(
            self.bot,
            message.chat_id,
            thread=thread_id(message),
            quote=None if is_private(message) else message.message_id,
        )
        sent = []
        try:
            for part in split_for_telegram(text):
                if part.strip():
                    sent.append(await sink.post(part))
        except WhisperEngineError as exc:
            if not quiet:
                raise
            logger.warning("could not send a Telegram message to %s: %s", message.chat_id, exc)
        return sent

    # --- voice -----------------------------------------------------------------------------

    async def _on_voice(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.from_user is None or message.voice is None:
            return
        if not is_addressed(message, self.me):
            return
        ticket = self._arrival.ticket(message.chat_id)  # transcribed meanwhile, answered in turn
        try:
            await self._on_addressed_voice(message, ticket)
        finally:
            ticket.pass_on()

    async def _on_addressed_voice(self, message: Message, ticket: Ticket) -> None:
        if self.stt is None:
            await self._say(message, VOICE_NOT_SET_UP, quiet=True)
            return
        voice = message.voice
        if voice.file_size and voice.file_size > min(MAX_VOICE_BYTES, self.config.voice_max_bytes):
            await self._say(message, VOICE_TOO_BIG, quiet=True)
            return
        seconds = voice.to_dict().get("duration")  # seconds, without PTB's int/timedelta switch
        if isinstance(seconds, int | float) and seconds > self.config.voice_max_seconds:
            too_long = VOICE_TOO_LONG.format(seconds=seconds, limit=self.config.voice_max_seconds)
            await self._say(message, too_long, quiet=True)
            return
        action = ChatAction.RECORD_VOICE if self.tts is not None else ChatAction.TYPING
        indicator = ChatActionLoop(self.bot, message.chat_id, thread_id(message), action)
        indicator.start()
        try:
            await self._answer_voice(message, indicator, ticket)
        finally:
            indicator.stop()

    async def _answer_voice(self, message: Message, indicator: ChatActionLoop, ticket: Ticket) -> None:
        voice = message.voice
        assert voice is not None and self.stt is not None
        content_type = voice.mime_type or "audio/ogg"
        try:
            file = await telegram_call(lambda: self.bot.get_file(voice.file_id))
            audio = bytes(await telegram_call(file.download_as_bytearray))
        except WhisperEngineError as exc:
            logger.warning("could not download Telegram voice note %s: %s", voice.file_unique_id, exc)
            await self._say(message, VOICE_DOWNLOAD_FAILED, quiet=True)
            return
        try:
            transcript = (await self.stt.transcribe(audio, content_type=content_type)).text.strip()
        except BackendUnavailable as exc:
            logger.warning("speech-to-text unavailable: %s", exc)
            await self._say(message, VOICE_STT_DOWN, quiet=True)
            return
        except WhisperEngineError as exc:
            logger.info("unreadable Telegram voice note %s: %s", voice.file_unique_id, exc)
            await self._say(message, VOICE_UNREADABLE, quiet=True)
            return
        if not transcript:
            await self._say(message, VOICE_EMPTY, quiet=True)
            return
        duration = voice.to_dict().get("duration")
        attachment = Attachment(
            filename=f"voice-{voice.file_unique_id}.ogg",
            content_type=content_type,
            url=f"telegram-file:{voice.file_id}",
            size=voice.file_size or len(audio),
            duration_secs=float(duration) if isinstance(duration, int | float) else None,
            is_voice_message=True,
        )
        universal = to_universal(
            message, self.me, content=transcript, attachments=(attachment,), metadata={"voice": "true"}
        )
        await ticket.turn()
        try:
            response = await self.engine.handle(universal, on_placed=ticket.pass_on).collect()
        except WhisperEngineError as exc:
            logger.error("could not answer Telegram voice note %s: %s", universal.message_id, exc)
            await self._say(message, SOMETHING_WRONG, quiet=True)
            return
        if response.content:
            await self._send_voice_reply(message, transcript, response, indicator)

    async def _send_voice_reply(
        self, message: Message, transcript: str, response: AIResponse, indicator: ChatActionLoop
    ) -> None:
        heard = f"🎤 “{transcript}”"
        text = f"{heard}\n\n{response.content}"
        if self.tts is None:
            indicator.stop()
            await self._say(message, f"{text}\n\n{VOICE_TTS_NOT_SET_UP}", quiet=True)
            return
        persona = self.engine.personas.library.get(response.persona) if response.persona else None
        try:
            speech = await self.tts.synthesize(response.content, voice=persona.voice if persona else None)
            note = await self._encode(speech)
        except WhisperEngineError as exc:
            logger.warning("text-to-speech failed; answering in text: %s", exc)
            indicator.stop()
            await self._say(message, text, quiet=True)
            return
        caption_fits = utf16_len(text) <= CAPTION_LIMIT
        quote = None if is_private(message) else message.message_id
        try:
            await telegram_call(
                lambda: self.bot.send_voice(
                    message.chat_id,
                    note.data,
                    caption=text if caption_fits else None,
                    duration=dt.timedelta(seconds=max(1, math.ceil(note.duration_s))),
                    filename="reply.ogg",
                    message_thread_id=thread_id(message),
                    reply_parameters=(
                        ReplyParameters(message_id=quote, allow_sending_without_reply=True) if quote else None
                    ),
                )
            )
        except WhisperEngineError as exc:
            logger.warning("could not send a Telegram voice note; answering in text: %s", exc)
            caption_fits = False
        indicator.stop()
        if not caption_fits:
            await self._say(message, text, quiet=True)

    async def _encode(self, speech: SpeechAudio) -> EncodedVoice:
        if self.voice_encoder is None:
            from voice.audio import to_voice_note

            self.voice_encoder = to_voice_note
        return await self.voice_encoder(speech)

    # --- commands ----------------------------------------------------------------------

    async def _on_start(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None:
            return
        name = message.from_user.first_name if message.from_user else "there"
        hello = f"Hi {name}! I'm {self.config.bot_name}."
        await self._say(message, f"{hello}\n\n{self._help_text()}", quiet=True)

    async def _on_help(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if update.message is not None:
            await self._say(update.message, self._help_text(), quiet=True)

    def _help_text(self) -> str:
        voice = "" if self.stt is not None else " once voice is set up on this bot"
        return HELP.format(voice=voice)

    async def _on_persona(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.from_user is None:
            return
        args = list(context.args or [])
        personas = self.engine.personas
        library = personas.library
        scope = channel_scope(PLATFORM, str(message.chat_id))
        verb = args[0].lower() if args else ""
        if verb in ("", "show"):
            current = await personas.for_message(to_universal(message, self.me, content=""))
            lines = [f"I'm {current.name} here." + (f" {current.description}" if current.description else "")]
            lines.append(f"Available: {', '.join(library.names())}. Change with /persona set NAME.")
            await self._say(message, "\n".join(lines), quiet=True)
            return
        if verb == "list":
            lines = []
            for name in library.names():
                persona = library.get(name)
                description = f" — {persona.description}" if persona and persona.description else ""
                lines.append(f"• {name}{description}")
            await self._say(message, "Personas:\n" + "\n".join(lines), quiet=True)
            return
        if verb not in ("set", "reset"):
            await self._say(message, "Usage: /persona [list | set NAME | reset]", quiet=True)
            return
        if not await self._may_configure(message):
            await self._say(message, ADMINS_ONLY, quiet=True)
            return
        if verb == "reset":
            await personas.set(scope, None)
            await self._say(message, f"Back to the default persona, {library.default.name}.", quiet=True)
            return
        if len(args) < 2:
            await self._say(message, f"Which one? Available: {', '.join(library.names())}.", quiet=True)
            return
        try:
            persona = await personas.set(scope, args[1])
        except ConfigError as exc:
            await self._say(message, str(exc), quiet=True)
            return
        assert persona is not None
        await self._say(message, f"From now on I'm {persona.name} in this chat.", quiet=True)

    async def _may_configure(self, message: Message) -> bool:
        """Private chats: yes. Groups: the chat's admins (and its anonymous admins)."""
        if is_private(message):
            return True
        if message.sender_chat is not None and message.sender_chat.id == message.chat_id:
            return True  # an anonymous group admin
        if message.from_user is None:
            return False
        user_id = message.from_user.id
        try:
            member = await telegram_call(lambda: self.bot.get_chat_member(message.chat_id, user_id))
        except WhisperEngineError as exc:
            logger.warning("could not check the admin status of %s: %s", user_id, exc)
            return False
        return member.status in (ChatMemberStatus.ADMINISTRATOR, ChatMemberStatus.OWNER)

    async def _on_forget_me(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        if message is None or message.from_user is None:
            return
        user_id = message.from_user.id
        keyboard = InlineKeyboardMarkup(
            [
                [
                    InlineKeyboardButton("Yes, forget me", callback_data=f"{FORGET_PREFIX}:{user_id}:yes"),
                    InlineKeyboardButton("Cancel", callback_data=f"{FORGET_PREFIX}:{user_id}:no"),
                ]
            ]
        )
        try:
            await telegram_call(
                lambda: self.bot.send_message(
                    message.chat_id,
                    FORGET_QUESTION,
                    message_thread_id=thread_id(message),
                    reply_markup=keyboard,
                    reply_parameters=ReplyParameters(
                        message_id=message.message_id, allow_sending_without_reply=True
                    ),
                )
            )
        except WhisperEngineError as exc:
            logger.warning("could not ask %s to confirm /forget_me: %s", user_id, exc)

    async def _on_link(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/link``: a one-time code for the user's other account; ``/link CODE``: redeem one.
        Codes are secrets, so both work in private chats only."""
        message = update.message
        if message is None or message.from_user is None:
            return
        code = "".join(context.args or [])
        if not is_private(message):
            voided = bool(code) and self.engine.identity is not None and await self._void_code(code)
            await self._say(message, LINK_CODE_VOIDED if voided else LINK_PRIVATE_ONLY, quiet=True)
            return
        user_key = f"{PLATFORM}:{message.from_user.id}"
        try:
            if not code:
                text = link_instructions(await self.engine.start_link(user_key))
            else:
                text = linked_message(await self.engine.link_accounts(user_key, code), user_key)
        except InputError as exc:  # a refused code, or linking not available: the reason
            text = str(exc)
        except WhisperEngineError as exc:
            logger.error("/link failed for %s: %s", user_key, exc)
            text = SOMETHING_WRONG
        await self._say(message, text, quiet=True)

    async def _void_code(self, code: str) -> bool:
        assert self.engine.identity is not None
        try:
            return await self.engine.identity.void_code(code)
        except WhisperEngineError as exc:
            logger.warning("could not void a link code shown in a group: %s", exc)
            return False

    async def _on_checkin(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        """``/checkin HH:MM ZONE``: daily check-ins in the private chat; ``/checkin off``: stop;
        ``/checkin``: show."""
        message = update.message
        if message is None or message.from_user is None:
            return
        user = message.from_user
        args = list(context.args or [])
        try:
            text = await self._checkin(f"{PLATFORM}:{user.id}", str(user.id), user.full_name, args)
        except InputError as exc:
            text = str(exc)
        except WhisperEngineError as exc:
            logger.error("/checkin failed for %s: %s", user.id, exc)
            text = SOMETHING_WRONG
        if args and args[0].lower() != "off" and not is_private(message) and text.startswith("Done"):
            text += f" {CHECKIN_START_PRIVATE}"
        await self._say(message, text, quiet=True)

    async def _checkin(self, account: str, user_id: str, name: str, args: list[str]) -> str:
        scheduler = self.checkins
        if scheduler is None:
            return CHECKINS_OFF
        user_key = await self.engine.resolve_user_key(account)
        if not args:
            schedule = await scheduler.schedule_of(user_key)
            return scheduler.describe(schedule) if schedule is not None else CHECKIN_NONE
        if args[0].lower() == "off":
            stopped = await scheduler.turn_off(user_key)
            return "Check-ins are off: I won't write first." if stopped else CHECKIN_NONE
        if len(args) != 2:
            raise InputError(CHECKIN_USAGE)
        schedule = await scheduler.set_schedule(
            user_key, platform=PLATFORM, user_id=user_id, user_name=name, at=args[0], timezone=args[1]
        )
        return f"Done. {scheduler.describe(schedule)} /checkin off stops them."

    # --- writing first (check-ins) ------------------------------------------------------

    async def direct_channel(self, user_id: str) -> str:
        """A user's private chat with the bot has the user's own id."""
        return user_id

    async def send_direct(self, user_id: str, text: str) -> DirectMessageSent:
        """Send ``text`` to the user's private chat; InputError when they never opened it or
        blocked the bot."""
        sink = TelegramSink(self.bot, int(user_id), thread=None, quote=None)
        sent = [await sink.post(part) for part in split_for_telegram(text) if part.strip()]
        if not sent:
            raise InputError("nothing to send")
        return DirectMessageSent(channel_id=str(sent[0].chat_id), message_id=str(sent[0].message_id))

    async def _on_forget_button(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        query = update.callback_query
        if query is None or query.data is None:
            return
        _, owner, answer = [*query.data.split(":"), "", ""][:3]
        if owner != str(query.from_user.id):
            await _answer_query(query, NOT_YOUR_BUTTON, alert=True)
            return
        if answer != "yes":
            await _answer_query(query, None)
            await _edit_query(query, FORGET_CANCELLED)
            return
        count = await self.engine.forget_user(f"{PLATFORM}:{owner}")
        logger.info("forgot Telegram user %s (%d records)", owner, count)
        await _answer_query(query, None)
        await _edit_query(query, FORGET_DONE.format(count=count))

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        """The error boundary of every update's task."""
        error = context.error
        logger.error("Telegram update failed: %r", error, exc_info=error)


async def _answer_query(query: CallbackQuery, text: str | None, *, alert: bool = False) -> None:
    try:
        await telegram_call(lambda: query.answer(text, show_alert=alert))
    except WhisperEngineError as exc:
        logger.debug("could not answer a Telegram button press: %s", exc)


async def _edit_query(query: CallbackQuery, text: str) -> None:
    try:
        await telegram_call(lambda: query.edit_message_text(text))
    except WhisperEngineError as exc:
        logger.warning("could not update the /forget_me question: %s", exc)


async def _close_requests(bot: Bot) -> None:
    """Close the HTTP clients of a bot whose ``initialize()`` failed half-way."""
    with contextlib.suppress(TelegramError, RuntimeError):
        await bot.shutdown()
    for request in (bot.request, getattr(bot, "_request", (None, None))[0]):
        if request is not None:
            with contextlib.suppress(TelegramError, RuntimeError):
                await request.shutdown()
