"""A local fake of the Telegram Bot API, for the real python-telegram-bot client.

Usage::

    async with FakeTelegram() as tg:
        application = Application.builder().token(tg.token).base_url(tg.api_base)
            .base_file_url(tg.file_base).build()
        alice = tg.user("Alice")
        chat = tg.private_chat(alice)
        tg.send_text(chat, alice, "hello")
        await tg.wait_for(lambda: tg.bot_messages(chat))

What it serves
    ``POST|GET /bot<token>/<method>`` with JSON, form or multipart bodies (what PTB sends),
    answering ``{"ok": true, "result": ...}`` or ``{"ok": false, "error_code", "description"}``;
    a wrong token gets 401 (PTB raises ``InvalidToken``). ``GET /file/bot<token>/<path>``
    serves the bytes of files users sent. Methods: getMe, getUpdates (long polling),
    setWebhook, deleteWebhook, getWebhookInfo, setMyCommands, sendMessage, editMessageText,
    sendChatAction, sendVoice, getFile, getChatMember, answerCallbackQuery.

Updates
    ``send_text`` / ``send_voice`` / ``press_button`` queue an update, like a user acting in
    a client. Without a webhook they wait for ``getUpdates``; with one (``setWebhook``) the
    fake POSTs each to the webhook URL with ``X-Telegram-Bot-Api-Secret-Token``, and records
    the HTTP status in ``deliveries`` (getUpdates then answers 409, as Telegram does).

Everything the bot does is recorded: ``calls`` (method, params), ``messages`` (every message
of every chat, with the text after edits and the ``edits`` history), ``chat_actions``,
``callback_answers``. ``wait_for(predicate)`` waits until the predicate holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.faults import Fault, Faults
from tests.fakes.local_server import LocalServer

Json = dict[str, Any]

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
DEFAULT_TOKEN = "123456789:AAFakeTokenForTests_abcdefghijklmnopq"
MAX_POLL_S = 50.0
_STRING_PARAMS = {
    "text",
    "caption",
    "callback_query_id",
    "url",
    "secret_token",
    "file_id",
    "action",
    "parse_mode",
    "inline_message_id",
}


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def _entities(text: str) -> list[Json]:
    """Mention and bot-command entities, with UTF-16 offsets as Telegram sends them."""
    found = []
    for match in re.finditer(r"(?<![\w@])@\w{3,}", text):
        found.append({"type": "mention", "offset": _utf16(text[: match.start()]), "length": _utf16(match[0])})
    command = re.match(r"/\w+(@\w+)?", text)
    if command:
        found.append({"type": "bot_command", "offset": 0, "length": _utf16(command[0])})
    return sorted(found, key=lambda e: e["offset"])


@dataclass(slots=True)
class Sent:
    """One message in a chat (from a user or the bot), as the fake keeps it."""

    chat_id: int
    message_id: int
    from_bot: bool
    payload: Json
    edits: list[str] = field(default_factory=list)
    voice: bytes | None = None

    @property
    def text(self) -> str:
        return str(self.payload.get("text") or self.payload.get("caption") or "")

    @property
    def caption(self) -> str | None:
        return self.payload.get("caption")

    @property
    def reply_to(self) -> int | None:
        replied = self.payload.get("reply_to_message")
        return replied["message_id"] if replied else None

    @property
    def reply_markup(self) -> Json | None:
        return self.payload.get("reply_markup")


class ApiError(Exception):
    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


class FakeTelegram(LocalServer):
    """An aiohttp server on 127.0.0.1 speaking the Bot API."""

    def __init__(
        self, *, token: str = DEFAULT_TOKEN, bot_username: str = "whisper_test_bot", bot_id: int | None = None
    ) -> None:
        self.token = token
        self.bot_user: Json = {
            "id": bot_id or int(token.split(":", maxsplit=1)[0]),
            "is_bot": True,
            "first_name": "Whisper",
            "username": bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }
        self.calls: list[tuple[str, Json]] = []
        self.messages: list[Sent] = []
        self.chat_actions: list[tuple[int, str]] = []
        self.callback_answers: list[Json] = []
        self.deliveries: list[tuple[int, int]] = []
        """(update_id, HTTP status) of each webhook delivery."""
        self.commands: list[Json] = []
        self.admins: dict[int, set[int]] = {}
        self.files: dict[str, bytes] = {}
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self._chats: dict[int, Json] = {}
        self._updates: list[Json] = []
        self._update_ids = itertools.count(1)
        self._user_ids = itertools.count(1001)
        self._group_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count[int]] = {}
        self._file_ids = itertools.count(1)
        self._faults = Faults()
        self.faulted: list[str] = []
        """Methods answered by a fault of :meth:`fail_calls` / :meth:`hang_calls`."""
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._delivery: asyncio.Task[None] | None = None
        self._wake_delivery = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        # A long poll whose client went away (PTB stopping) ends with it, not at its timeout.
        super().__init__(app, handler_cancellation=True)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        self._session = aiohttp.ClientSession()
        self._delivery = asyncio.create_task(self._deliver_forever())

    async def aclose(self) -> None:
        if self._delivery is not None:
            self._delivery.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._delivery
        if self._session is not None:
            await self._session.close()
        await super().aclose()

    @property
    def api_base(self) -> str:
        """For ``TELEGRAM_API_BASE_URL`` / ``ApplicationBuilder.base_url`` (the token is appended)."""
        return f"{self.url}/bot"

    @property
    def file_base(self) -> str:
        return f"{self.url}/file/bot"

    # --- the world: users, chats, what they do ------------------------------------------

    def user(self, first_name: str, *, username: str | None = None, user_id: int | None = None) -> Json:
        uid = user_id or next(self._user_ids)
        return {
            "id": uid,
            "is_bot": False,
            "first_name": first_name,
            "username": username or first_name.lower(),
            "language_code": "en",
        }

    def private_chat(self, user: Json) -> Json:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        self._chats[chat["id"]] = chat
        return chat

    def group_chat(
        self, title: str = "Friends", *, admins: tuple[Json, ...] = (), forum: bool = False
    ) -> Json:
        chat: Json = {"id": -1001000000000 - next(self._group_ids), "type": "supergroup", "title": title}
        if forum:
            chat["is_forum"] = True
        self._chats[chat["id"]] = chat
        self.admins[chat["id"]] = {a["id"] for a in admins}
        return chat

    def send_text(
        self,
        chat: Json,
        user: Json,
        text: str,
        *,
        reply_to: Sent | None = None,
        thread: int | None = None,
    ) -> Sent:
        payload: Json = {"text": text}
        entities = _entities(text)
        if entities:
            payload["entities"] = entities
        return self._user_message(chat, user, payload, reply_to=reply_to, thread=thread)

    def send_voice(
        self,
        chat: Json,
        user: Json,
        audio: bytes,
        *,
        duration: int = 2,
        caption: str | None = None,
        reply_to: Sent | None = None,
        mime_type: str = "audio/ogg",
    ) -> Sent:
        file_id = self._store_file(audio)
        payload: Json = {
            "voice": {
                "file_id": file_id,
                "file_unique_id": f"u{file_id}",
                "duration": duration,
                "mime_type": mime_type,
                "file_size": len(audio),
            }
        }
        if caption:
            payload["caption"] = caption
            payload["caption_entities"] = _entities(caption)
        return self._user_message(chat, user, payload, reply_to=reply_to)

    def press_button(self, user: Json, message: Sent, data: str) -> str:
        """A user presses an inline button of a bot message; returns the callback query id."""
        query_id = f"cbq{next(self._update_ids)}"
        self._queue(
            {
                "callback_query": {
                    "id": query_id,
                    "from": user,
                    "chat_instance": "1",
                    "data": data,
                    "message": self._message_json(message),
                }
            }
        )
        return query_id

    def _user_message(
        self, chat: Json, user: Json, payload: Json, *, reply_to: Sent | None, thread: int | None = None
    ) -> Sent:
        message_id = self._next_message_id(chat["id"])
        body: Json = {**payload}
        if reply_to is not None:
            body["reply_to_message"] = self._message_json(reply_to)
        if thread is not None:
            body["message_thread_id"] = thread
            body["is_topic_message"] = True
        sent = Sent(chat["id"], message_id, False, {**body, "from": user})
        self.messages.append(sent)
        self._queue({"message": self._message_json(sent)})
        return sent

    # --- what the bot did -------------------------------------------------------------

    def fail_calls(self, status: int = 503, *, times: int | None = None, only: tuple[str, ...] = ()) -> None:
        """The next ``times`` Bot API calls (of the methods ``only``; default: all but
        ``getUpdates``) answer ``status``; ``times=None``: every one until :meth:`recover`."""
        self._faults.add(Fault(status, 0.0, _methods(only)), times)

    def hang_calls(self, seconds: float, *, times: int | None = None, only: tuple[str, ...] = ()) -> None:
        """Like :meth:`fail_calls`, but the calls hang ``seconds`` and then answer 504 (nothing
        is done with them, as when a proxy in front of the API timed out)."""
        self._faults.add(Fault(504, seconds, _methods(only)), times)

    def recover(self) -> None:
        """Undo :meth:`fail_calls` and :meth:`hang_calls`."""
        self._faults.clear()

    def bot_messages(self, chat: Json | int) -> list[Sent]:
        chat_id = chat if isinstance(chat, int) else chat["id"]
        return [m for m in self.messages if m.from_bot and m.chat_id == chat_id]

    def bot_texts(self, chat: Json | int) -> list[str]:
        return [m.text for m in self.bot_messages(chat)]

    def calls_of(self, method: str) -> list[Json]:
        return [params for name, params in self.calls if name == method]

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 20.0) -> None:
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(predicate)

    async def settle(self) -> None:
        """Let in-flight requests finish (a few event-loop turns and a short real pause)."""
        await asyncio.sleep(0.2)

    # --- plumbing ---------------------------------------------------------------------

    def _notify(self) -> None:
        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def _queue(self, update: Json) -> None:
        self._updates.append({"update_id": next(self._update_ids), **update})
        self._wake_delivery.set()
        self._notify()

    def _next_message_id(self, chat_id: int) -> int:
        counter = self._message_ids.setdefault(chat_id, itertools.count(1))
        return next(counter)

    def _store_file(self, data: bytes) -> str:
        file_id = f"file{next(self._file_ids)}"
        self.files[file_id] = data
        return file_id

    def _chat(self, chat_id: Any) -> Json:
        try:
            return self._chats[int(chat_id)]
        except (KeyError, ValueError, TypeError):
            raise ApiError(400, "Bad Request: chat not found") from None

    def _message_json(self, sent: Sent) -> Json:
        body = {k: v for k, v in sent.payload.items() if k != "from"}
        return {
            "message_id": sent.message_id,
            "date": int(time.time()),
            "chat": self._chats[sent.chat_id],
            "from": self.bot_user if sent.from_bot else sent.payload["from"],
            **body,
        }

    def _find(self, chat_id: int, message_id: int) -> Sent:
        for sent in self.messages:
            if sent.chat_id == chat_id and sent.message_id == message_id:
                return sent
        raise ApiError(400, "Bad Request: message to edit not found")

    async def _params(self, request: web.Request) -> Json:
        params: Json = dict(request.query)
        if not request.can_read_body:
            return params
        if request.content_type == "application/json":
            params.update(await request.json())
            return params
        form = await request.post()
        for name, value in form.items():
            if isinstance(value, web.FileField):
                params[name] = value.file.read()
            elif name in _STRING_PARAMS:
                params[name] = value
            else:
                try:
                    params[name] = json.loads(value)
                except ValueError:
                    params[name] = value
        return params

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.json_response(
                {"ok": False, "error_code": 401, "description": "Unauthorized"}, status=401
            )
        method = request.match_info["method"]
        params = await self._params(request)
        fault = self._faults.take(method)
        if fault is not None:
            self.faulted.append(method)
            self._notify()
            if fault.hang_s:
                await asyncio.sleep(fault.hang_s)
            return web.json_response(
                {"ok": False, "error_code": fault.status, "description": "the fake Bot API is failing"},
                status=fault.status,
            )
        handler = getattr(self, f"_m_{method}", None)
        self.calls.append((method, params))
        try:
            if handler is None:
                raise ApiError(404, "Not Found: method not found")
            result = await handler(params)
        except ApiError as exc:
            self._notify()
            return web.json_response(
                {"ok": False, "error_code": exc.code, "description": exc.description}, status=exc.code
            )
        self._notify()
        return web.json_response({"ok": True, "result": result})

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return web.Response(status=401)
        file_id = request.match_info["path"].rsplit("/", 1)[-1].split(".")[0]
        data = self.files.get(file_id)
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")

    # --- webhook delivery ---------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        while True:
            await self._wake_delivery.wait()
            self._wake_delivery.clear()
            while self.webhook_url and self._updates:
                update = self._updates.pop(0)
                headers = {SECRET_HEADER: self.webhook_secret} if self.webhook_secret else {}
                assert self._session is not None
                try:
                    async with self._session.post(self.webhook_url, json=update, headers=headers) as response:
                        status = response.status
                except aiohttp.ClientError:
                    status = 0
                self.deliveries.append((update["update_id"], status))
                self._notify()

    # --- methods ----------------------------------------------------------------------

    async def _m_getMe(self, params: Json) -> Json:
        return self.bot_user

    async def _m_getUpdates(self, params: Json) -> list[Json]:
        if self.webhook_url:
            raise ApiError(409, "Conflict: can't use getUpdates method while webhook is active")
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), MAX_POLL_S)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]
        if not self._updates and timeout > 0:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(lambda: bool(self._updates)), timeout)
        limit = int(params.get("limit") or 100)
        return self._updates[:limit]

    async def _m_setWebhook(self, params: Json) -> bool:
        self.webhook_url = params.get("url") or None
        self.webhook_secret = params.get("secret_token")
        self._wake_delivery.set()
        return True

    async def _m_deleteWebhook(self, params: Json) -> bool:
        self.webhook_url = None
        self.webhook_secret = None
        if params.get("drop_pending_updates"):
            self._updates.clear()
        return True

    async def _m_getWebhookInfo(self, params: Json) -> Json:
        return {"url": self.webhook_url or "", "has_custom_certificate": False, "pending_update_count": 0}

    async def _m_setMyCommands(self, params: Json) -> bool:
        self.commands = list(params.get("commands") or [])
        return True

    def _bot_message(self, params: Json, payload: Json, *, voice: bytes | None = None) -> Sent:
        chat_id = int(self._chat(params.get("chat_id"))["id"])
        body: Json = {**payload}
        reply = params.get("reply_parameters") or {}
        if reply.get("message_id"):
            try:
                body["reply_to_message"] = self._message_json(self._find(chat_id, int(reply["message_id"])))
            except ApiError:
                if not reply.get("allow_sending_without_reply"):
                    raise ApiError(400, "Bad Request: message to be replied not found") from None
        if params.get("message_thread_id"):
            body["message_thread_id"] = int(params["message_thread_id"])
            body["is_topic_message"] = True
        if params.get("reply_markup"):
            body["reply_markup"] = params["reply_markup"]
        sent = Sent(chat_id, self._next_message_id(chat_id), True, body, voice=voice)
        self.messages.append(sent)
        return sent

    async def _m_sendMessage(self, params: Json) -> Json:
        text = str(params.get("text") or "")
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if _utf16(text) > 4096:
            raise ApiError(400, "Bad Request: message is too long")
        return self._message_json(self._bot_message(params, {"text": text}))

    async def _m_editMessageText(self, params: Json) -> Json:
        chat_id = int(self._chat(params.get("chat_id"))["id"])
        sent = self._find(chat_id, int(params.get("message_id") or 0))
        text = str(params.get("text") or "")
        if not text.strip():
            raise ApiError(400, "Bad Request: message text is empty")
        if _utf16(text) > 4096:
            raise ApiError(400, "Bad Request: MESSAGE_TOO_LONG")
        if text.strip() == sent.text.strip() and params.get("reply_markup") == sent.reply_markup:
            raise ApiError(
                400,
                "Bad Request: message is not modified: specified new message content and reply markup "
                "are exactly the same as a current content and reply markup of the message",
            )
        sent.edits.append(text)
        sent.payload["text"] = text
        if "reply_markup" in params:
            sent.payload["reply_markup"] = params["reply_markup"]
        else:
            sent.payload.pop("reply_markup", None)
        return self._message_json(sent)

    async def _m_sendChatAction(self, params: Json) -> bool:
        chat_id = int(self._chat(params.get("chat_id"))["id"])
        self.chat_actions.append((chat_id, str(params.get("action"))))
        return True

    async def _m_sendVoice(self, params: Json) -> Json:
        audio = params.get("voice")
        if not isinstance(audio, bytes):
            raise ApiError(400, "Bad Request: there is no voice in the request")
        caption = params.get("caption")
        if caption is not None and _utf16(caption) > 1024:
            raise ApiError(400, "Bad Request: message caption is too long")
        file_id = self._store_file(audio)
        payload: Json = {
            "voice": {
                "file_id": file_id,
                "file_unique_id": f"u{file_id}",
                "duration": 1,
                "mime_type": "audio/ogg",
                "file_size": len(audio),
            }
        }
        if caption:
            payload["caption"] = caption
        return self._message_json(self._bot_message(params, payload, voice=audio))

    async def _m_getFile(self, params: Json) -> Json:
        file_id = str(params.get("file_id"))
        if file_id not in self.files:
            raise ApiError(400, "Bad Request: invalid file_id")
        return {
            "file_id": file_id,
            "file_unique_id": f"u{file_id}",
            "file_size": len(self.files[file_id]),
            "file_path": f"voice/{file_id}.oga",
        }

    async def _m_getChatMember(self, params: Json) -> Json:
        chat_id = int(self._chat(params.get("chat_id"))["id"])
        user_id = int(params.get("user_id") or 0)
        user = {"id": user_id, "is_bot": False, "first_name": f"user{user_id}"}
        if user_id in self.admins.get(chat_id, set()):
            return {
                "status": "administrator",
                "user": user,
                "can_be_edited": False,
                "is_anonymous": False,
                "can_manage_chat": True,
                "can_delete_messages": True,
                "can_manage_video_chats": True,
                "can_restrict_members": True,
                "can_promote_members": False,
                "can_change_info": True,
                "can_invite_users": True,
                "can_post_stories": False,
                "can_edit_stories": False,
                "can_delete_stories": False,
            }
        return {"status": "member", "user": user}

    async def _m_answerCallbackQuery(self, params: Json) -> bool:
        self.callback_answers.append(params)
        return True


def _methods(only: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a fault applies to a method: one of ``only``, or any but ``getUpdates`` (so that
    messages still come in) when ``only`` is empty."""
    return lambda method: method in only if only else method != "getUpdates"


def llm_settings(llm_base_url: str, data_dir: Path) -> dict[str, Any]:
    """The Settings values every adapter test shares: the fake LLM, a fresh data dir, no web."""
    return {
        "llm_backend": "openai",
        "openai_base_url": llm_base_url,
        "openai_api_key": "test",
        "llm_max_retries": 0,
        # Room for the tests' 5000-character replies (about 1,250 tokens) and for their history.
        "llm_max_tokens": 2048,
        "context_token_budget": 8192,
        "data_dir": data_dir,
        "web_enabled": False,
    }


def telegram_settings(tg: FakeTelegram) -> dict[str, Any]:
    return {
        "telegram_token": tg.token,
        "telegram_api_base_url": tg.api_base,
        "telegram_file_base_url": tg.file_base,
        "telegram_edit_interval_s": 0.2,
    }


@contextlib.asynccontextmanager
async def running_telegram(
    tg: FakeTelegram,
    llm_base_url: str,
    data_dir: Path,
    *,
    stt: Any = None,
    tts: Any = None,
    voice_encoder: Any = None,
    **settings: Any,
) -> AsyncIterator[tuple[Any, Any]]:
    """``whisperengine run``'s code path (``build_app`` + ``start_telegram``) against the fakes.

    Yields ``(app, adapter)`` once the bot is polling (or its webhook is set).
    """
    from bot.app import build_app
    from bot.platforms import start_telegram
    from config.settings import Settings

    values = {**llm_settings(llm_base_url, data_dir), **telegram_settings(tg), **settings}
    config = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    async with build_app(config) as app, contextlib.AsyncExitStack() as stack:
        adapter = await start_telegram(app, stack, stt=stt, tts=tts, voice_encoder=voice_encoder)
        assert adapter is not None
        yield app, adapter
