"""A local fake of Slack: the Web API, Socket Mode, and a signing Events API sender.

Usage::

    async with FakeSlack() as slack:
        client = AsyncWebClient(token=slack.bot_token, base_url=slack.api_base)
        alice = slack.add_user("alice")
        body = slack.event_body(slack.mention("C1", alice, "hello"))
        status, _ = await slack.post_event(events_url, body)          # HTTP Events API
        await slack.send_socket_event(body)                          # or over Socket Mode
        await slack.wait_for(lambda: slack.bot_messages("C1"))

Web API (``POST|GET /api/<method>``; JSON, form or query parameters; the token in
``Authorization: Bearer``): auth.test, apps.connections.open (needs the app token; returns
this server's ``ws://`` Socket Mode URL), chat.postMessage, chat.update, users.info.
Answers ``{"ok": true, ...}`` or ``{"ok": false, "error": ...}`` like Slack.

Socket Mode (``/socket``): sends ``hello`` on connect, then the envelopes of
``send_socket_event``; the acks the app sends back are recorded in ``acks``.

Events API: ``event_body`` wraps an event like Slack's ``event_callback``; ``post_event``
signs it (``v0=HMAC_SHA256(secret, "v0:{ts}:{body}")``) and POSTs it, optionally forged,
stale or marked as a retry (``X-Slack-Retry-Num``).

Recorded: ``calls`` (method, params), ``messages`` (what the bot posted, with the text after
edits and the ``edits`` history).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes.faults import Fault, Faults
from tests.fakes.local_server import LocalServer

Json = dict[str, Any]


@dataclass(slots=True)
class Posted:
    """One message the bot posted."""

    channel: str
    ts: str
    thread_ts: str | None
    text: str
    edits: list[str] = field(default_factory=list)


class FakeSlack(LocalServer):
    """An aiohttp server on 127.0.0.1 playing Slack."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-fake-bot-token-1234",
        app_token: str = "xapp-1-fake-app-token-5678",
        signing_secret: str = "fake-signing-secret-9abc",
        team_id: str = "T0FAKE",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.signing_secret = signing_secret
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.api_app_id = "A0FAKE"
        self.users: dict[str, Json] = {}
        self.calls: list[tuple[str, Json]] = []
        self.messages: list[Posted] = []
        self.acks: list[Json] = []
        self.sockets: list[web.WebSocketResponse] = []
        self._ts = itertools.count(1)
        self._ids = itertools.count(1)
        self._faults = Faults()
        self.faulted: list[str] = []
        """Methods answered by a fault of :meth:`fail_calls` / :meth:`hang_calls`."""
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        app = web.Application()
        app.router.add_get("/socket", self._socket)
        app.router.add_route("*", "/api/{method}", self._api)
        super().__init__(app)

    # --- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        self._session = aiohttp.ClientSession()

    async def aclose(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self._session is not None:
            await self._session.close()
        await super().aclose()

    @property
    def api_base(self) -> str:
        """For ``SLACK_API_BASE_URL`` / ``AsyncWebClient(base_url=...)`` (trailing slash included)."""
        return f"{self.url}/api/"

    # --- the world ----------------------------------------------------------------------

    def add_user(self, name: str, *, display_name: str | None = None) -> str:
        user_id = f"U{next(self._ids):05d}{name.upper()[:4]}"
        self.users[user_id] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name.lower(),
            "real_name": name.title(),
            "is_bot": False,
            "profile": {"display_name": display_name or name.title(), "real_name": name.title()},
        }
        return user_id

    def next_ts(self) -> str:
        n = next(self._ts)
        return f"{1_700_000_000 + n}.{n:06d}"

    def mention(self, channel: str, user: str, text: str, *, thread_ts: str | None = None) -> Json:
        """An ``app_mention`` event: ``text`` after the bot's ``<@U…>`` mention."""
        ts = self.next_ts()
        event: Json = {
            "type": "app_mention",
            "user": user,
            "text": f"<@{self.bot_user_id}> {text}",
            "ts": ts,
            "channel": channel,
            "event_ts": ts,
            "team": self.team_id,
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        return event

    def direct_message(self, channel: str, user: str | None, text: str, **extra: Any) -> Json:
        """A ``message`` event in a DM (``channel_type`` "im"); ``extra`` adds subtype, bot_id..."""
        ts = self.next_ts()
        event: Json = {
            "type": "message",
            "channel": channel,
            "channel_type": "im",
            "text": text,
            "ts": ts,
            "event_ts": ts,
            "team": self.team_id,
            **extra,
        }
        if user is not None:
            event["user"] = user
        return event

    def event_body(self, event: Json, *, event_id: str | None = None) -> Json:
        return {
            "token": "deprecated-verification-token",
            "team_id": self.team_id,
            "api_app_id": self.api_app_id,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }

    # --- delivering events --------------------------------------------------------------

    def signature_headers(
        self, body: str, *, timestamp: int | None = None, secret: str | None = None
    ) -> Json:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        key = (self.signing_secret if secret is None else secret).encode()
        digest = hmac.new(key, f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
        return {
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": f"v0={digest}",
            "Content-Type": "application/json",
        }

    async def post_event(
        self,
        url: str,
        body: Json,
        *,
        timestamp: int | None = None,
        secret: str | None = None,
        retry_num: int | None = None,
        headers: Json | None = None,
    ) -> tuple[int, str]:
        """Sign and POST ``body`` to an Events API URL; returns (status, response text)."""
        raw = json.dumps(body)
        sent = self.signature_headers(raw, timestamp=timestamp, secret=secret)
        if retry_num is not None:
            sent["X-Slack-Retry-Num"] = str(retry_num)
            sent["X-Slack-Retry-Reason"] = "http_timeout"
        sent.update(headers or {})
        assert self._session is not None
        async with self._session.post(url, data=raw.encode(), headers=sent) as response:
            return response.status, await response.text()

    async def send_socket_event(self, body: Json, *, retry_attempt: int = 0) -> str:
        """Send an ``events_api`` envelope to the connected app; returns its envelope id."""
        await self.wait_for(lambda: bool(self.sockets))
        envelope_id = str(uuid.uuid4())
        envelope = {
            "envelope_id": envelope_id,
            "type": "events_api",
            "accepts_response_payload": False,
            "retry_attempt": retry_attempt,
            "retry_reason": "timeout" if retry_attempt else "",
            "payload": body,
        }
        await self.sockets[-1].send_str(json.dumps(envelope))
        return envelope_id

    # --- what the bot did -------------------------------------------------------------

    def bot_messages(self, channel: str, *, thread_ts: str | None = None) -> list[Posted]:
        return [
            m
            for m in self.messages
            if m.channel == channel and (thread_ts is None or m.thread_ts == thread_ts)
        ]

    def bot_texts(self, channel: str, *, thread_ts: str | None = None) -> list[str]:
        return [m.text for m in self.bot_messages(channel, thread_ts=thread_ts)]

    def calls_of(self, method: str) -> list[Json]:
        return [params for name, params in self.calls if name == method]

    async def wait_for(self, predicate: Callable[[], bool], within_s: float = 20.0) -> None:
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(predicate)

    async def settle(self) -> None:
        """Let in-flight work finish (a short real pause)."""
        await asyncio.sleep(0.3)

    # --- plumbing ---------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def fail_calls(self, status: int = 503, *, times: int | None = None, only: tuple[str, ...] = ()) -> None:
        """The next ``times`` Web API calls (of the methods ``only``, e.g. ``chat.postMessage``;
        default: all) answer ``status``; ``times=None``: every one until :meth:`recover`."""
        self._faults.add(Fault(status, 0.0, _methods(only)), times)

    def hang_calls(self, seconds: float, *, times: int | None = None, only: tuple[str, ...] = ()) -> None:
        """Like :meth:`fail_calls`, but the calls hang ``seconds`` and then answer 504 (nothing
        is done with them, as when a proxy in front of the API timed out)."""
        self._faults.add(Fault(504, seconds, _methods(only)), times)

    def recover(self) -> None:
        """Undo :meth:`fail_calls` and :meth:`hang_calls`."""
        self._faults.clear()

    async def _params(self, request: web.Request) -> Json:
        params: Json = dict(request.query)
        if request.can_read_body:
            if request.content_type == "application/json":
                params.update(await request.json())
            else:
                params.update(dict(await request.post()))
        return params

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params = await self._params(request)
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else str(params.get("token", ""))
        fault = self._faults.take(method)
        if fault is not None:
            self.faulted.append(method)
            await self._notify()
            if fault.hang_s:
                await asyncio.sleep(fault.hang_s)
            return web.json_response({"ok": False, "error": "fatal_error"}, status=fault.status)
        self.calls.append((method, params))
        handler = getattr(self, "_m_" + method.replace(".", "_"), None)
        if handler is None:
            result: Json = {"ok": False, "error": "unknown_method"}
        else:
            result = await handler(token, params)
        await self._notify()
        return web.json_response(result)

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self.sockets),
                    "debug_info": {"host": "fake-slack", "approximate_connection_time": 3600},
                    "connection_info": {"app_id": self.api_app_id},
                }
            )
        )
        await self._notify()
        try:
            async for frame in ws:
                if frame.type == aiohttp.WSMsgType.TEXT:
                    self.acks.append(json.loads(frame.data))
                    await self._notify()
        finally:
            self.sockets.remove(ws)
        return ws

    def _find(self, channel: str, ts: str) -> Posted | None:
        return next((m for m in self.messages if m.channel == channel and m.ts == ts), None)

    # --- methods ----------------------------------------------------------------------

    async def _m_auth_test(self, token: str, params: Json) -> Json:
        if token != self.bot_token:
            return {"ok": False, "error": "invalid_auth"}
        return {
            "ok": True,
            "url": "https://fake.slack.test/",
            "team": "Fake Team",
            "user": "whisperengine",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    async def _m_apps_connections_open(self, token: str, params: Json) -> Json:
        if token != self.app_token:
            return {"ok": False, "error": "invalid_auth"}
        return {"ok": True, "url": f"ws://127.0.0.1:{self.port}/socket?ticket={uuid.uuid4()}"}

    async def _m_chat_postMessage(self, token: str, params: Json) -> Json:
        if token != self.bot_token:
            return {"ok": False, "error": "invalid_auth"}
        text = str(params.get("text") or "")
        if not text:
            return {"ok": False, "error": "no_text"}
        if len(text) > 40_000:
            return {"ok": False, "error": "msg_too_long"}
        channel = str(params.get("channel"))
        posted = Posted(channel, self.next_ts(), params.get("thread_ts") or None, text)
        self.messages.append(posted)
        return {
            "ok": True,
            "channel": channel,
            "ts": posted.ts,
            "message": {"type": "message", "user": self.bot_user_id, "bot_id": self.bot_id, "text": text},
        }

    async def _m_chat_update(self, token: str, params: Json) -> Json:
        if token != self.bot_token:
            return {"ok": False, "error": "invalid_auth"}
        posted = self._find(str(params.get("channel")), str(params.get("ts")))
        if posted is None:
            return {"ok": False, "error": "message_not_found"}
        text = str(params.get("text") or "")
        if len(text) > 40_000:
            return {"ok": False, "error": "msg_too_long"}
        posted.text = text
        posted.edits.append(text)
        return {"ok": True, "channel": posted.channel, "ts": posted.ts, "text": text}

    async def _m_users_info(self, token: str, params: Json) -> Json:
        if token != self.bot_token:
            return {"ok": False, "error": "invalid_auth"}
        user = self.users.get(str(params.get("user")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user}


def _methods(only: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a fault applies to a method: one of ``only``, or any when ``only`` is empty."""
    return lambda method: not only or method in only


def slack_settings(slack: FakeSlack, *, socket_mode: bool = False) -> dict[str, Any]:
    values: dict[str, Any] = {
        "slack_bot_token": slack.bot_token,
        "slack_signing_secret": slack.signing_secret,
        "slack_api_base_url": slack.api_base,
        "slack_events_port": 0,
        "slack_edit_interval_s": 0.2,
    }
    if socket_mode:
        values["slack_app_token"] = slack.app_token
    return values


@contextlib.asynccontextmanager
async def running_slack(
    slack: FakeSlack, llm_base_url: str, data_dir: Path, *, socket_mode: bool = False, **settings: Any
) -> AsyncIterator[tuple[Any, Any]]:
    """``whisperengine run``'s code path (``build_app`` + ``start_slack``) against the fakes.

    Yields ``(app, adapter)`` once the Events API listens (or the Socket Mode socket is open).
    """
    from bot.app import build_app
    from bot.platforms import start_slack
    from config.settings import Settings
    from tests.fakes.telegram_server import llm_settings

    values = {
        **llm_settings(llm_base_url, data_dir),
        **slack_settings(slack, socket_mode=socket_mode),
        **settings,
    }
    config = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    async with build_app(config) as app, contextlib.AsyncExitStack() as stack:
        adapter = await start_slack(app, stack)
        assert adapter is not None
        if socket_mode:
            await slack.wait_for(lambda: bool(slack.sockets))
        yield app, adapter
