"""The Slack adapter: slack-bolt (async) in front of the engine.

What it does
    * ``app_mention`` events in channels and ``message`` events in direct messages
      (``channel_type`` "im") are answered; a mention is answered in its thread (the
      event's ``thread_ts``, else its ``ts``), a DM inline unless it was in a thread.
    * Replies stream: posted with ``chat.postMessage`` at the first text, then edited with
      ``chat.update`` at most once per ``edit_interval_s``; split at 4000 characters (of
      escaped text), never truncated. Model output is escaped, so it cannot ping anyone.
    * Events arrive over Socket Mode when an app token is set, else on an aiohttp route
      (the HTTP Events API) where bolt verifies signatures: a forged or stale (> 5 min)
      request gets 401 and nothing else happens; ``url_verification`` is answered.
    * Slack retries (``X-Slack-Retry-Num``, a Socket Mode ``retry_attempt``) are answered
      once: each event id (and each message) is claimed in the Cache port with a TTL, so
      this holds across processes sharing Redis.
    * User names come from ``users.info``, cached in the Cache port.

Everything platform-specific stays here: the engine sees :class:`UniversalMessage`s only.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from adapters.guard import PlatformGuard
from adapters.streaming import StreamRenderer
from adapters.textsplit import split_text
from engine.errors import BackendUnavailable, ConfigError, InputError, StorageError, WhisperEngineError
from engine.pipeline import Engine
from engine.ports import Cache

from .config import SlackConfig
from .translate import escape, is_well_formed, readable_text, reply_thread, to_universal

logger = logging.getLogger(__name__)

SLACK_LIMIT = 4000
DEDUPE_TTL_S = 3600.0
"""Slack retries for up to about an hour."""
USER_NAME_TTL_S = 3600.0
CONNECT_TIMEOUT_S = 30.0
AUTH_ERRORS = {"invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired"}
SOMETHING_WRONG = "Sorry, something went wrong on my side. Please try again in a moment."

T = TypeVar("T")


def split_for_slack(text: str) -> list[str]:
    """Parts whose escaped text is at most 4000 characters."""
    return split_text(text, SLACK_LIMIT, measure=lambda part: len(escape(part)))


class _ServerError(Exception):
    """A 5xx answer of the Web API: retried, then reported as BackendUnavailable."""

    def __init__(self, error: SlackApiError) -> None:
        super().__init__(f"HTTP {error.response.status_code}: {error.response.get('error', error)}")
        self.error = error


TRANSIENT_ERRORS = (_ServerError, aiohttp.ClientError)


async def slack_call(call: Callable[[], Awaitable[T]], guard: PlatformGuard | None = None) -> T:
    """Run one Web API call (through ``guard``: timeout, retries, circuit breaker); converts
    slack_sdk's errors.

    An API refusal (``ok: false``) → InputError; the API unreachable or answering 5xx →
    BackendUnavailable (``CircuitOpen`` while the guard's circuit is open). Rate limits are
    waited out once by the client's retry handler.
    """

    async def attempt() -> T:
        try:
            return await call()
        except SlackApiError as exc:
            if exc.response.status_code >= 500:
                raise _ServerError(exc) from exc
            raise

    try:
        return await (attempt() if guard is None else guard.call(attempt, transient=TRANSIENT_ERRORS))
    except _ServerError as exc:
        raise BackendUnavailable("Slack Web API", str(exc), variable="SLACK_API_BASE_URL") from exc
    except SlackApiError as exc:
        raise InputError(f"Slack refused the request: {exc.response.get('error', exc)}") from exc
    except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
        raise BackendUnavailable(
            "Slack Web API", str(exc) or type(exc).__name__, variable="SLACK_API_BASE_URL"
        ) from exc


class SlackSink:
    """Posts and edits the messages of one reply in a channel (and thread)."""

    def __init__(
        self, client: AsyncWebClient, channel: str, thread_ts: str | None, guard: PlatformGuard | None = None
    ) -> None:
        self._client = client
        self._channel = channel
        self._thread = thread_ts
        self._guard = guard

    async def post(self, text: str) -> str:
        response = await slack_call(
            lambda: self._client.chat_postMessage(
                channel=self._channel,
                thread_ts=self._thread,
                text=escape(text),
                unfurl_links=False,
                unfurl_media=False,
            ),
            self._guard,
        )
        return str(response["ts"])

    async def edit(self, handle: str, text: str) -> None:
        await slack_call(
            lambda: self._client.chat_update(channel=self._channel, ts=handle, text=escape(text)),
            self._guard,
        )


class SlackAdapter:
    """A bolt ``AsyncApp`` translating Slack events for one :class:`Engine`."""

    def __init__(
        self, engine: Engine, config: SlackConfig, *, cache: Cache, guard: PlatformGuard | None = None
    ) -> None:
        self.engine = engine
        self.config = config
        self.cache = cache
        self.guard = guard or PlatformGuard("slack", service="Slack Web API", variable="SLACK_API_BASE_URL")
        """Timeout, retries and circuit breaker of every Web API call; the ``slack`` health line."""
        self.guard.mode = "socket mode" if config.socket_mode else "events API"
        self.bot_user_id: str | None = None
        self.team_id: str | None = None
        self.events_port: int | None = None
        """The port of the Events API route (known after ``start()``); None in Socket Mode."""
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None
        self._bolt: AsyncApp | None = None
        self._socket: AsyncSocketModeHandler | None = None
        self._runner: web.AppRunner | None = None

    @property
    def mode(self) -> str:
        return "socket" if self.config.socket_mode else "events"

    @property
    def client(self) -> AsyncWebClient:
        if self._client is None:
            raise RuntimeError("the Slack adapter is not started")
        return self._client

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        self._session = aiohttp.ClientSession()
        client = AsyncWebClient(
            token=self.config.bot_token,
            base_url=self.config.api_base_url,
            session=self._session,
            timeout=max(1, math.ceil(self.guard.timeout_s)),
        )
        client.retry_handlers.append(AsyncRateLimitErrorRetryHandler(max_retry_count=1))
        self._client = client
        try:
            auth = await self._auth_test(client)
            self.bot_user_id = auth.get("user_id")
            self.team_id = auth.get("team_id")
            self._bolt = self._build_bolt(client)
            if self.config.socket_mode:
                await self._start_socket_mode(self._bolt)
            else:
                await self._start_events_api(self._bolt)
        except BaseException:
            await self.aclose()
            raise
        logger.info("Slack connected as %s in team %s (%s)", self.bot_user_id, self.team_id, self.mode)

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        socket, self._socket = self._socket, None
        if socket is not None:
            await socket.close_async()
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self._client = None
        self._bolt = None

    async def _auth_test(self, client: AsyncWebClient) -> Mapping[str, Any]:
        try:
            response = await client.auth_test()
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in AUTH_ERRORS:
                raise ConfigError(
                    f"Slack rejected the bot token ({error})", variable="SLACK_BOT_TOKEN"
                ) from exc
            raise BackendUnavailable("Slack Web API", str(error), variable="SLACK_API_BASE_URL") from exc
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise BackendUnavailable(
                "Slack Web API", str(exc) or type(exc).__name__, variable="SLACK_API_BASE_URL"
            ) from exc
        return response.data if isinstance(response.data, dict) else {}

    def _build_bolt(self, client: AsyncWebClient) -> AsyncApp:
        bolt = AsyncApp(
            name="whisperengine",
            client=client,
            signing_secret=self.config.signing_secret,
            logger=logging.getLogger(f"{__name__}.bolt"),
        )
        bolt.event("app_mention")(self._on_mention)
        bolt.event("message")(self._on_message)
        bolt.error(self._on_error)
        return bolt

    async def _start_socket_mode(self, bolt: AsyncApp) -> None:
        assert self.config.app_token is not None
        app_token = self.config.app_token
        try:
            opened = await self.client.apps_connections_open(app_token=app_token)
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in AUTH_ERRORS:
                raise ConfigError(
                    f"Slack rejected the app token ({error})", variable="SLACK_APP_TOKEN"
                ) from exc
            raise BackendUnavailable("Slack Socket Mode", str(error), variable="SLACK_APP_TOKEN") from exc
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as exc:
            raise BackendUnavailable(
                "Slack Web API", str(exc) or type(exc).__name__, variable="SLACK_API_BASE_URL"
            ) from exc
        socket = AsyncSocketModeHandler(bolt, app_token=app_token, web_client=self.client)
        socket.client.wss_uri = str(opened["url"])
        self._socket = socket
        client = socket.client
        self.guard.connection_check = lambda: (
            not client.closed and not (client.current_session is None or client.current_session.closed)
        )
        try:
            await asyncio.wait_for(socket.connect_async(), CONNECT_TIMEOUT_S)
        except TimeoutError as exc:
            raise BackendUnavailable(
                "Slack Socket Mode", "the websocket did not connect in time", variable="SLACK_APP_TOKEN"
            ) from exc

    async def _start_events_api(self, bolt: AsyncApp) -> None:
        app = web.Application()
        app.router.add_post(self.config.events_path, self._events)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = self.config.events_host, self.config.events_port
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise BackendUnavailable(
                "Slack events endpoint",
                f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                variable="SLACK_EVENTS_PORT",
            ) from exc
        self._runner = runner
        self.events_port = int(runner.addresses[0][1])
        self.guard.connection_changed(True)
        logger.info("Slack Events API listening on %s:%d%s", host, self.events_port, self.config.events_path)

    async def _events(self, request: web.Request) -> web.Response:
        """The Events API route: bolt verifies the signature, answers url_verification, acks."""
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if not timestamp.isdigit():
            return web.json_response({"error": "invalid request"}, status=401)
        bolt = self._bolt
        if bolt is None:
            return web.Response(status=503, text="shutting down")
        try:
            bolt_request = await to_bolt_request(request)
        except (TypeError, KeyError, AttributeError, ValueError, IndexError) as exc:
            # bolt reads the body's fields before it checks the signature: a malformed body
            # (a field of the wrong type) is refused here rather than ending as a 500.
            logger.warning("refused a malformed Slack request from %s: %r", request.remote, exc)
            return web.json_response({"error": "malformed request"}, status=400)
        body = bolt_request.body
        if not isinstance(body, dict) or not isinstance(body.get("event", {}), dict):
            logger.warning("refused a Slack request with a malformed body or event (%s)", request.remote)
            return web.json_response({"error": "malformed request"}, status=400)
        response = await bolt.async_dispatch(bolt_request)
        if response.status == 401:
            logger.warning("rejected a Slack request with a bad or stale signature from %s", request.remote)
        return await to_aiohttp_response(response)

    # --- events -----------------------------------------------------------------------------

    async def _on_mention(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        await self._answer(body, event)

    async def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        if event.get("channel_type") != "im" or event.get("subtype") or event.get("bot_id"):
            return
        await self._answer(body, event)

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        """The error boundary of every Slack listener."""
        logger.error("Slack event %s failed: %r", body.get("event_id"), error, exc_info=error)

    async def _answer(self, body: Mapping[str, Any], event: Mapping[str, Any]) -> None:
        if not is_well_formed(event):
            logger.warning("ignoring a malformed Slack event %s", body.get("event_id"))
            return
        user, channel, ts = event["user"], event["channel"], event["ts"]
        if user == self.bot_user_id:
            return
        if not await self._first_delivery(body, event):
            logger.info("Slack event %s was already handled; ignoring the retry", body.get("event_id"))
            return
        team = str(body.get("team_id") or event.get("team") or self.team_id or "") or None
        content = await readable_text(
            str(event.get("text") or ""),
            bot_user_id=self.bot_user_id,
            user_name=lambda uid: self._user_name(team, uid),
        )
        name = await self._user_name(team, str(user))
        message = to_universal(event, content=content, user_name=name, team_id=team)
        sink = SlackSink(self.client, str(channel), reply_thread(event), self.guard)
        renderer = StreamRenderer(sink, split=split_for_slack, edit_interval_s=self.config.edit_interval_s)
        try:
            await renderer.render(self.engine.handle(message))
        except WhisperEngineError as exc:
            if isinstance(exc, BackendUnavailable) and exc.service == self.guard.service:
                logger.error(
                    "Slack is unreachable: message %s in %s was not answered; the user's message is "
                    "stored (%s)",
                    ts,
                    channel,
                    exc,
                )
            else:
                logger.error("could not answer Slack message %s in %s: %s", ts, channel, exc)
            if not renderer.handles:
                try:
                    await sink.post(SOMETHING_WRONG)
                except WhisperEngineError as again:
                    logger.warning("could not tell %s that something went wrong: %s", channel, again)

    async def _first_delivery(self, body: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
        """Claim the event (and its message) in the cache; False when already claimed."""
        keys = [f"slack:seen:msg:{event.get('channel')}:{event.get('ts')}"]
        if body.get("event_id"):
            keys.insert(0, f"slack:seen:event:{body['event_id']}")
        try:
            for key in keys:
                if await self.cache.incr(key, DEDUPE_TTL_S) > 1:
                    return False
        except (StorageError, BackendUnavailable) as exc:
            logger.warning("cannot check Slack retries in the cache; answering anyway: %s", exc)
        return True

    async def _user_name(self, team: str | None, user_id: str) -> str:
        key = f"slack:user:{team or '-'}:{user_id}"
        try:
            cached = await self.cache.get(key)
        except (StorageError, BackendUnavailable) as exc:
            logger.debug("user name cache unavailable: %s", exc)
            cached = None
        if cached:
            return cached
        try:
            response = await slack_call(lambda: self.client.users_info(user=user_id), self.guard)
        except WhisperEngineError as exc:
            logger.warning("could not look up Slack user %s: %s", user_id, exc)
            return user_id
        info = response.get("user") or {}
        profile = info.get("profile") or {}
        name = str(
            profile.get("display_name")
            or profile.get("real_name")
            or info.get("real_name")
            or info.get("name")
        )
        name = name if name and name != "None" else user_id
        try:
            await self.cache.set(key, name, ttl_s=USER_NAME_TTL_S)
        except (StorageError, BackendUnavailable) as exc:
            logger.debug("could not cache a Slack user name: %s", exc)
        return name
