"""The web chat page and the REST API, served by aiohttp.

Routes::

    GET  /                 the chat page (plus /static/chat.js and /static/chat.css)
    POST /api/chat         one message in, the engine's reply out (JSON, or NDJSON when streaming)
    GET  /api/health       health of the components; 503 when a core one is down
    GET  /api/config       what the page needs to know: {"token_required": bool, ...}
    GET  /metrics          Prometheus metrics (when the app exports them); the API token applies
    /admin/...             the owner's console (when the app gives one): see ``adapters/web/console.py``

The adapter only translates: a validated request becomes a ``UniversalMessage``
(platform ``web``, always a direct conversation) and the ``AIResponse`` becomes JSON.

Errors are always ``{"error": {"code": ..., "message": ...}}``. Requiring a JSON content
type also keeps other web sites out: a cross-origin JSON POST needs a CORS preflight,
which this server never grants.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Protocol

from aiohttp import web
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError, field_validator

from adapters.web.console import AdminConsole, ConsoleSource
from engine.errors import BackendUnavailable, InputError, WhisperEngineError
from engine.events import AIResponse, ReplyKind, UniversalMessage
from engine.health import ComponentHealth, overall
from engine.pipeline import Engine

logger = logging.getLogger(__name__)

PLATFORM = "web"
DEFAULT_USER_ID = "web-user"
DEFAULT_USER_NAME = "User"
CORE_COMPONENTS = ("store", "llm")

# No request headers in the access log: Authorization must never be written anywhere.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tfs'

# Worst case of one character in a JSON string is a 12-byte surrogate-pair escape.
_BYTES_PER_CHAR = 12
_BODY_OVERHEAD = 16 * 1024

_NDJSON = "application/x-ndjson"

_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_STATIC_FILES = {
    "index.html": "text/html",
    "chat.js": "text/javascript",
    "chat.css": "text/css",
    "console.css": "text/css",
}

_STREAM_KEY = web.RequestKey("ndjson_response", web.StreamResponse)

HealthSource = Callable[[], Awaitable[Mapping[str, ComponentHealth]]]


class MetricsSource(Protocol):
    """Metrics in a text exposition format (``bot.metrics.PrometheusMetrics``)."""

    content_type: str

    def render(self) -> bytes: ...


Identifier = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
DisplayName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class ChatRequest(BaseModel):
    """The body of ``POST /api/chat``; anything else is rejected."""

    model_config = ConfigDict(extra="forbid", strict=True)

    message: str
    user_id: Identifier | None = None
    user_name: DisplayName | None = None
    conversation_id: Identifier | None = None
    stream: bool = False

    @field_validator("message")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        text = value.strip()
        if not text:
            raise ValueError("must not be empty")
        return text

    @field_validator("message", "user_name")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        # JSON may escape a lone surrogate (no database stores one) or NUL (PostgreSQL text cannot hold it).
        if value is not None:
            if "\x00" in value:
                raise ValueError("must not contain NUL characters")
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text (it contains a lone surrogate)") from None
        return value


@dataclass(slots=True)
class ApiError(Exception):
    """An error answer of the API: its status, a stable code and a message safe to show."""

    status: int
    code: str
    message: str
    field: str | None = None

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return web.json_response({"error": body}, status=self.status, headers=headers)


def response_json(response: AIResponse) -> dict[str, Any]:
    """The engine's reply as the API shows it (never the internal error text)."""
    return {
        "reply": response.content,
        "kind": str(response.kind),
        "persona": response.persona,
        "emotion": response.emotion,
        "memories_used": [
            {
                "id": hit.memory_id,
                "text": hit.text,
                "score": round(hit.score, 4),
                "created_at": hit.created_at.isoformat(),
                "platform": hit.platform,
                "channel_id": hit.channel_id,
                "source_message_ids": list(hit.source_message_ids),
            }
            for hit in response.memories_used
        ],
        "timings": {
            "context_ms": round(response.timings.context_ms, 2),
            "first_token_ms": round(response.timings.first_token_ms, 2),
            "llm_ms": round(response.timings.llm_ms, 2),
            "total_ms": round(response.timings.total_ms, 2),
        },
        "llm_backend": response.llm_backend,
    }


def _status_of(kind: ReplyKind) -> int:
    return 429 if kind is ReplyKind.RATE_LIMITED else 200


def _ndjson(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _validation_error(exc: ValidationError) -> ApiError:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in first["loc"]) or "body"
    if first["type"] == "extra_forbidden":
        text = f"unknown field {field!r}"
    elif first["type"] == "missing":
        text = f"{field} is required"
    elif field in ("user_id", "conversation_id") and first["type"] == "string_pattern_mismatch":
        text = f"{field} must be 1-128 characters of letters, digits and _ . : -"
    elif field == "body":
        text = "the body must be a JSON object"
    else:
        text = f"{field}: {first['msg']}"
    return ApiError(400, "invalid_request", text, field=field)


def _read_static(name: str) -> bytes:
    return (resources.files("adapters.web") / "static" / name).read_bytes()


class WebAdapter:
    """The local web chat and REST API in front of an :class:`Engine`."""

    def __init__(
        self,
        engine: Engine,
        *,
        host: str,
        port: int,
        api_token: str | None,
        health: HealthSource,
        max_message_chars: int = 8000,
        core_components: Collection[str] = CORE_COMPONENTS,
        shutdown_timeout_s: float = 10.0,
        metrics: MetricsSource | None = None,
        console: ConsoleSource | None = None,
    ) -> None:
        self._engine = engine
        self._metrics = metrics
        self._console = (
            None
            if console is None
            else AdminConsole(
                engine,
                console,
                health=health,
                token=api_token.encode() if api_token else None,
                bound_host=host,
                core_components=core_components,
            )
        )
        self.host = host
        self.port = port
        self._token = api_token.encode() if api_token else None
        self._health = health
        self.max_message_chars = max_message_chars
        self._core = frozenset(core_components)
        self._shutdown_timeout_s = shutdown_timeout_s
        self._client_max_size = max_message_chars * _BYTES_PER_CHAR + _BODY_OVERHEAD
        self._runner: web.AppRunner | None = None
        self._static: dict[str, bytes] = {}

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the page is served, e.g. ``http://127.0.0.1:8080/``."""
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        if ":" in host:
            host = "[::1]" if host == "::" else f"[{host}]"
        return f"http://{host}:{self.port}/"

    def build_app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._error_boundary],
            client_max_size=self._client_max_size,
        )
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_post("/api/chat", self._chat)
        app.router.add_get("/api/health", self._health_route)
        app.router.add_get("/api/config", self._config)
        if self._metrics is not None:
            app.router.add_get("/metrics", self._metrics_route)
        if self._console is not None:
            self._console.add_routes(app.router)
        return app

    async def start(self) -> None:
        if self._runner is not None:
            return
        self._static = {name: _read_static(name) for name in _STATIC_FILES}
        runner = web.AppRunner(
            self.build_app(),
            access_log_format=ACCESS_LOG_FORMAT,
            shutdown_timeout=self._shutdown_timeout_s,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise BackendUnavailable(
                "web server",
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}",
                variable="WEB_PORT",
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        logger.info(
            "web chat listening on %s (API token %s)", self.url, "required" if self._token else "not set"
        )

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    # --- the error boundary -------------------------------------------------------------------

    @web.middleware
    async def _error_boundary(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status == 404:
                return ApiError(404, "not_found", "no such page or endpoint").response()
            if exc.status == 405:
                return ApiError(405, "method_not_allowed", f"{request.method} is not allowed here").response()
            if exc.status == 413:
                return self._too_large().response()
            raise
        except Exception as exc:
            stream: web.StreamResponse | None = request.get(_STREAM_KEY)
            logger.exception("error answering %s %s", request.method, request.path)
            if stream is not None and stream.prepared:
                # Headers are gone already: end the stream with an error line.
                await _write_quietly(stream, _ndjson({"type": "error", "error": _public_error(exc)}))
                return stream
            status = 503 if isinstance(exc, BackendUnavailable) else 500
            return web.json_response({"error": _public_error(exc)}, status=status)

    def _too_large(self) -> ApiError:
        return ApiError(
            413,
            "body_too_large",
            f"the request body is too large; a message may have at most {self.max_message_chars} characters",
        )

    # --- page ----------------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        return self._static_response("index.html")

    async def _static_file(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html" or name not in self._static:
            raise ApiError(404, "not_found", "no such page or endpoint")
        return self._static_response(name)

    def _static_response(self, name: str) -> web.Response:
        return web.Response(
            body=self._static[name], content_type=_STATIC_FILES[name], charset="utf-8", headers=_PAGE_HEADERS
        )

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"token_required": self._token is not None, "max_message_chars": self.max_message_chars}
        )

    # --- health ----------------------------------------------------------------------------------

    async def _health_route(self, request: web.Request) -> web.Response:
        components = await self._health()
        core_down = any(name in self._core and c.status == "down" for name, c in components.items())
        body = {
            "status": "down" if core_down else overall(components),
            "components": {
                name: {
                    "status": c.status,
                    "backend": c.backend,
                    "detail": c.detail,
                    "latency_ms": None if c.latency_ms is None else round(c.latency_ms, 2),
                }
                for name, c in components.items()
            },
        }
        return web.json_response(
            body, status=503 if core_down else 200, headers={"Cache-Control": "no-store"}
        )

    # --- metrics ----------------------------------------------------------------------------------

    async def _metrics_route(self, request: web.Request) -> web.Response:
        assert self._metrics is not None  # the route exists only with metrics
        self._check_token(request)
        return web.Response(
            body=self._metrics.render(),
            headers={"Content-Type": self._metrics.content_type, "Cache-Control": "no-store"},
        )

    # --- chat -------------------------------------------------------------------------------------

    def _check_token(self, request: web.Request) -> None:
        if self._token is None:
            return
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(
                401, "unauthorized", "this API needs a bearer token (Authorization: Bearer <token>)"
            )
        if not hmac.compare_digest(given.strip().encode(), self._token):
            raise ApiError(401, "unauthorized", "the bearer token is not valid")

    async def _parse(self, request: web.Request) -> ChatRequest:
        if request.content_type != "application/json":
            raise ApiError(
                415, "unsupported_media_type", "send the request as Content-Type: application/json"
            )
        if request.content_length is not None and request.content_length > self._client_max_size:
            raise self._too_large()
        raw = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, "invalid_json", "the body is not valid JSON") from exc
        except RecursionError as exc:
            raise ApiError(400, "invalid_json", "the body's JSON is nested too deeply") from exc
        try:
            body = ChatRequest.model_validate(data)
        except ValidationError as exc:
            raise _validation_error(exc) from exc
        if len(body.message) > self.max_message_chars:
            raise ApiError(
                413,
                "message_too_long",
                f"message has {len(body.message)} characters; the limit is {self.max_message_chars}",
                field="message",
            )
        return body

    def _to_message(self, body: ChatRequest) -> UniversalMessage:
        user_id = body.user_id or DEFAULT_USER_ID
        return UniversalMessage(
            content=body.message,
            user_id=user_id,
            user_name=body.user_name or DEFAULT_USER_NAME,
            platform=PLATFORM,
            # A conversation belongs to its user: another caller naming the same id gets a different one.
            channel_id=f"{user_id}.{body.conversation_id}" if body.conversation_id else user_id,
            is_direct=True,
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self._check_token(request)
        body = await self._parse(request)
        message = self._to_message(body)
        if body.stream:
            return await self._stream_reply(request, message)
        try:
            response = await self._engine.handle(message).collect()
        except InputError as exc:
            raise ApiError(400, "invalid_input", str(exc)) from exc
        return web.json_response(response_json(response), status=_status_of(response.kind))

    async def _stream_reply(self, request: web.Request, message: UniversalMessage) -> web.StreamResponse:
        stream = self._engine.handle(message)
        chunks = aiter(stream)
        # Hold the first chunks until two have arrived or the reply is complete: a refused
        # message (rate limit) is one chunk, and its status must go out with the headers.
        early: list[str] = []
        complete = False
        while len(early) < 2 and not complete:
            try:
                early.append(await anext(chunks))
            except StopAsyncIteration:
                complete = True
            except InputError as exc:
                raise ApiError(400, "invalid_input", str(exc)) from exc
        status = _status_of(stream.response.kind) if complete else 200

        resp = web.StreamResponse(
            status=status, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        resp.content_type = _NDJSON
        resp.charset = "utf-8"
        request[_STREAM_KEY] = resp
        await resp.prepare(request)

        connected = True
        rest = _empty() if complete else chunks
        async for chunk in _chain(early, rest):
            if connected:
                connected = await _write_quietly(resp, _ndjson({"type": "chunk", "text": chunk}))
            # After a disconnect the reply is still finished, so the engine stores it.
        if connected:
            await _write_quietly(resp, _ndjson({"type": "done", **response_json(stream.response)}))
            await resp.write_eof()
        else:
            logger.info("web client went away during the reply to %s", message.user_key)
        return resp


async def _write_quietly(resp: web.StreamResponse, data: bytes) -> bool:
    """Write one line; False when the client has gone away."""
    try:
        await resp.write(data)
    except ConnectionError:
        return False
    return True


async def _empty() -> AsyncIterator[str]:
    return
    yield  # pragma: no cover


async def _chain(first: list[str], rest: AsyncIterator[str]) -> AsyncIterator[str]:
    for chunk in first:
        yield chunk
    async for chunk in rest:
        yield chunk


def _public_error(exc: BaseException) -> dict[str, str]:
    """An error as the client sees it: a code and a fixed message, never internals."""
    if isinstance(exc, BackendUnavailable):
        return {"code": "unavailable", "message": "a service the bot needs is unavailable; try again later"}
    if isinstance(exc, WhisperEngineError):
        return {"code": "engine_error", "message": "the bot could not answer this message"}
    return {"code": "internal_error", "message": "internal server error"}
