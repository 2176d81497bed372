"""The owner's console: server-rendered admin pages under ``/admin``, served by the web adapter.

Routes (every one answers 401 without a valid session or bearer token when ``API_TOKEN`` is set)::

    GET  /admin                       overview: health of every component, platforms, recent problems
    POST /admin/login                 the token from the login form -> a session cookie
    POST /admin/logout                ends the session (drops the cookie)
    GET  /admin/metrics               messages/min, reply latency p50/p95, LLM errors, queue depth
    GET  /admin/personas              the personas; which one is the default
    GET  /admin/personas/{name}       one persona's text
    POST /admin/personas/default      make one the default (stored), or back to DEFAULT_PERSONA
    GET  /admin/users?user=KEY        what is held about a user: profile, memories
    GET  /admin/users/export?user=KEY that user's data as a JSON download
    GET  /admin/users/forget?user=KEY asks for confirmation
    POST /admin/users/forget          erases the user's data
    GET  /admin/api/overview          the overview as JSON
    GET  /admin/api/metrics           the metrics history as JSON

Who gets in:

- ``API_TOKEN`` set: a request with ``Authorization: Bearer <token>``, or a browser holding the
  session cookie that ``POST /admin/login`` sets after comparing the token (``hmac.compare_digest``).
  The cookie is ``HttpOnly``, ``SameSite=Strict``, ``Path=/admin`` (``Secure`` over HTTPS) and holds
  an expiry and a random nonce signed with HMAC-SHA256 under a key drawn from the token — never the
  token itself. Changing the token ends every session. After ``FAILED_LOGINS_PER_MIN`` wrong
  tokens within a minute, every login is refused (429) until the minute is over. An
  unauthenticated page request gets the login form with status 401; a JSON one the API's 401 error.
- ``API_TOKEN`` unset: only when the server listens on a loopback address *and* the request comes
  from a loopback peer (the socket's address, not a header) *and* names a loopback host
  (``localhost``, ``127.x.x.x``, ``[::1]``: a DNS-rebinding page names its own) *and* carries no
  ``Forwarded`` / ``X-Forwarded-For`` header (a proxy on this machine would make every visitor
  look local). Anything else is 403, saying to set ``API_TOKEN``. The browser still gets a
  session cookie (under a key drawn at random when the process starts), for the CSRF check.

Every state-changing route is a POST that needs, with a cookie session, the session's CSRF
token in the form (an HMAC of the session's nonce) and, when the browser sends one, an
``Origin`` naming the page's own host; a bearer-token request needs neither (browsers never add
that header by themselves). Each look at a user's data, export, forget and persona switch is
logged at INFO with the user key or persona name, never a memory's content.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote, urlencode, urlsplit

from aiohttp import web

from engine.errors import ConfigError
from engine.health import ComponentHealth, overall
from engine.pipeline import Engine

logger = logging.getLogger(__name__)

DASH = "&ndash;"
COOKIE = "we_console"
SESSION_S = 12 * 3600
MEMORIES_SHOWN = 200
FAILED_LOGINS_PER_MIN = 20
"""Past this many wrong tokens in a minute (from anyone), logins wait: guessing stays slow."""
_KEY_LABEL = b"whisperengine owner's console session v1"
_USER_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-")

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on its own forms
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# --- what the process tells the console (implemented in bot/console.py) ------------------------


@dataclass(frozen=True, slots=True)
class MetricsPoint:
    """One sample of the live figures, each over the minute before ``at``."""

    at: float
    """Unix time of the sample."""
    messages_per_min: float
    reply_p50_s: float | None
    """None when no reply finished in that minute."""
    reply_p95_s: float | None
    llm_errors_per_min: float
    queue_depth: int
    """Every background queue together; ``queues`` has each."""
    queues: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class LoggedProblem:
    """A WARNING-or-worse log record, its secrets already redacted."""

    at: float
    level: str
    logger: str
    message: str


@dataclass(frozen=True, slots=True)
class PlatformState:
    name: str
    configured: bool
    detail: str = ""
    """Why it is not configured, e.g. ``DISCORD_TOKEN is not set``."""


class ConsoleSource(Protocol):
    """What only the process knows: its platforms, its metrics history, its recent problems."""

    def platforms(self) -> Sequence[PlatformState]: ...

    def metrics_history(self) -> Sequence[MetricsPoint]: ...

    def recent_problems(self) -> Sequence[LoggedProblem]: ...


HealthSource = Callable[[], Awaitable[Mapping[str, ComponentHealth]]]


# --- sessions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Session:
    nonce: str | None
    """None: a bearer-token request (no cookie, no CSRF token)."""
    csrf: str = ""
    new_cookie: str | None = None
    """A cookie to set on the answer (a first visit without a token)."""


class Denied(Exception):
    """The request may not see the console: 401 (no valid credentials) or 403 (never here)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback_host(host: str) -> bool:
    host = host.strip().lower().removeprefix("[").removesuffix("]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(request: web.Request) -> str:
    """The Host header without its port (``[::1]:8080`` -> ``::1``)."""
    host = request.host
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Gate:
    """Decides who may see the console, issues and checks sessions and CSRF tokens."""

    def __init__(self, token: bytes | None, *, bound_host: str) -> None:
        self.token = token
        self.bound_host = bound_host
        secret = token if token is not None else secrets.token_bytes(32)
        self._key = hmac.new(secret, _KEY_LABEL, hashlib.sha256).digest()

    # sessions: "v1.<expires>.<nonce>.<signature>"

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def csrf_for(self, nonce: str) -> str:
        return self._sign(f"csrf.{nonce}")

    def new_session(self) -> tuple[str, Session]:
        nonce = secrets.token_hex(16)
        body = f"v1.{int(time.time()) + SESSION_S}.{nonce}"
        cookie = f"{body}.{self._sign(body)}"
        return cookie, Session(nonce, self.csrf_for(nonce))

    def session_of(self, cookie: str | None) -> Session | None:
        if not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) != 4 or parts[0] != "v1" or not parts[1].isdigit():
            return None
        body = ".".join(parts[:3])
        if not hmac.compare_digest(parts[3].encode(), self._sign(body).encode()):
            return None
        if int(parts[1]) < time.time():
            return None
        return Session(parts[2], self.csrf_for(parts[2]))

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token)

    def admit(self, request: web.Request) -> Session:
        """The request's session, or Denied."""
        cookie = self.session_of(request.cookies.get(COOKIE))
        if self.token is None:
            self._local_only(request)
            if cookie is not None:
                return cookie
            value, session = self.new_session()
            return Session(session.nonce, session.csrf, new_cookie=value)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and given.strip():
            if self.token_matches(given.strip()):
                return Session(None)
            raise Denied(401, "the bearer token is not valid")
        if cookie is not None:
            return cookie
        raise Denied(
            401, "the owner's console needs the API token: log in with it, or send it as a bearer token"
        )

    def _local_only(self, request: web.Request) -> None:
        why = None
        if not is_loopback_host(self.bound_host):
            why = f"the server listens on {self.bound_host}, beyond this machine"
        elif request.remote is None or not is_loopback_host(request.remote):
            why = f"the request comes from {request.remote}, not from this machine"
        elif "Forwarded" in request.headers or "X-Forwarded-For" in request.headers:
            why = "the request came through a proxy"
        elif not is_loopback_host(_host_name(request)):
            why = f"the request names the host {_host_name(request)!r}, not a loopback one"
        if why is not None:
            raise Denied(
                403,
                f"The owner's console without API_TOKEN is only open on this machine, and {why}. "
                "Set API_TOKEN to use it from elsewhere.",
            )

    def check_post(self, request: web.Request, session: Session, form: Mapping[str, str]) -> None:
        """CSRF defence of a state-changing request made with a cookie session."""
        if session.nonce is None:
            return  # a bearer token: no browser sends one by itself
        origin = request.headers.get("Origin")
        # the host only: behind a proxy that ends TLS the browser's https is plain http here
        if origin is not None and urlsplit(origin).netloc.lower() != request.host.lower():
            raise Denied(403, "this form was sent from another site")
        given = form.get("csrf", "")
        if session.new_cookie is not None or not hmac.compare_digest(given.encode(), session.csrf.encode()):
            raise Denied(403, "the form's CSRF token is missing or wrong: reload the page and try again")


# --- HTML ---------------------------------------------------------------------------------------


def e(value: object) -> str:
    return html.escape(str(value), quote=True)


_NAV = (
    ("/admin", "Overview"),
    ("/admin/metrics", "Metrics"),
    ("/admin/personas", "Personas"),
    ("/admin/users", "Users"),
)


def _layout(
    title: str, body: str, *, session: Session | None, active: str = "", refresh_s: int | None = None
) -> str:
    nav = ""
    if session is not None:
        current = ' aria-current="page"'
        links = "".join(
            f'<a href="{href}"{current if href == active else ""}>{e(label)}</a>' for href, label in _NAV
        )
        logout = ""
        if session.nonce is not None:
            logout = (
                '<form method="post" action="/admin/logout" class="logout">'
                f'<input type="hidden" name="csrf" value="{e(session.csrf)}">'
                '<button type="submit">Log out</button></form>'
            )
        nav = f'<nav aria-label="Console">{links}{logout}</nav>'
    meta = f'<meta http-equiv="refresh" content="{refresh_s}">' if refresh_s else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"{meta}<title>{e(title)} · WhisperEngine console</title>"
        '<link rel="stylesheet" href="/static/console.css"></head>'
        f'<body><header><span class="brand">WhisperEngine · owner\'s console</span>{nav}</header>'
        f"<main><h1>{e(title)}</h1>{body}</main></body></html>"
    )


def _csrf_field(session: Session) -> str:
    return f'<input type="hidden" name="csrf" value="{e(session.csrf)}">' if session.nonce else ""


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _status_badge(status: str) -> str:
    return f'<span class="status {e(status)}">{e(status)}</span>'


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    return f"{value:.1f}" if value % 1 else f"{value:.0f}"


def sparkline(values: Sequence[float | None], *, label: str, width: int = 320, height: int = 60) -> str:
    """A small inline SVG line chart of ``values`` (None: a gap), scaled from zero to the maximum."""
    known = [v for v in values if v is not None]
    top = max(known, default=0.0) or 1.0
    step = width / max(len(values) - 1, 1)
    paths: list[str] = []
    run: list[str] = []
    for i, value in enumerate(values):
        if value is None:
            if run:
                paths.append(" ".join(run))
            run = []
            continue
        x = i * step
        y = height - 2 - (value / top) * (height - 4)
        run.append(f"{'M' if not run else 'L'}{x:.1f},{y:.1f}")
    if run:
        paths.append(" ".join(run))
    lines = "".join(f'<path d="{d}" fill="none" stroke="#2b6cb0" stroke-width="2"/>' for d in paths)
    dots = ""
    if len(known) == 1 and len(values) >= 1:  # a single point is no line: show it
        i = next(i for i, v in enumerate(values) if v is not None)
        y = height - 2 - (known[0] / top) * (height - 4)
        dots = f'<circle cx="{i * step:.1f}" cy="{y:.1f}" r="3" fill="#2b6cb0"/>'
    return (
        f'<svg class="spark" role="img" aria-label="{e(label)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f7fafc" stroke="#cbd5e0"/>'
        f"{lines}{dots}</svg>"
    )


# --- the console ----------------------------------------------------------------------------------


Form = Mapping[str, str]
Handler = Callable[[web.Request, Session, Form], Awaitable[web.StreamResponse]]


class AdminConsole:
    """The ``/admin`` routes in front of an :class:`Engine` and a :class:`ConsoleSource`."""

    def __init__(
        self,
        engine: Engine,
        source: ConsoleSource,
        *,
        health: HealthSource,
        token: bytes | None,
        bound_host: str,
        core_components: Collection[str] = ("store", "llm"),
    ) -> None:
        self._engine = engine
        self._source = source
        self._health = health
        self._core = frozenset(core_components)
        self.gate = Gate(token, bound_host=bound_host)
        self.failed_logins_per_min = FAILED_LOGINS_PER_MIN
        self._failed_logins: deque[float] = deque()

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/admin", self._guard(self._overview))
        router.add_post("/admin/login", self._login)
        router.add_post("/admin/logout", self._guard(self._logout))
        router.add_get("/admin/metrics", self._guard(self._metrics))
        router.add_get("/admin/personas", self._guard(self._personas))
        router.add_get("/admin/personas/{name}", self._guard(self._persona))
        router.add_post("/admin/personas/default", self._guard(self._switch_default))
        router.add_get("/admin/users", self._guard(self._users))
        router.add_get("/admin/users/export", self._guard(self._export))
        router.add_get("/admin/users/forget", self._guard(self._confirm_forget))
        router.add_post("/admin/users/forget", self._guard(self._forget))
        router.add_get("/admin/api/overview", self._guard(self._overview_json))
        router.add_get("/admin/api/metrics", self._guard(self._metrics_json))

    # --- the gate -----------------------------------------------------------------------------

    def _guard(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                session = self.gate.admit(request)
                form: Form = {}
                if request.method == "POST":
                    form = await _form(request)
                    self.gate.check_post(request, session, form)
                response = await handler(request, session, form)
            except Denied as denied:
                return self._denied(request, denied)
            if session.new_cookie is not None:
                self._set_cookie(request, response, session.new_cookie)
            return response

        return guarded

    def _denied(self, request: web.Request, denied: Denied, *, failed_login: bool = False) -> web.Response:
        if request.path.startswith("/admin/api/") or "text/html" not in request.headers.get(
            "Accept", "text/html"
        ):
            code = "unauthorized" if denied.status == 401 else "forbidden"
            headers = {"WWW-Authenticate": "Bearer"} if denied.status == 401 else {}
            return web.json_response(
                {"error": {"code": code, "message": denied.message}},
                status=denied.status,
                headers={**HEADERS, **headers},
            )
        if denied.status == 401:
            return self._html(self._login_page(failed=failed_login), status=401)
        body = f'<p class="error" role="alert">{e(denied.message)}</p>'
        return self._html(_layout("Not here", body, session=None), status=403)

    def _login_page(self, *, failed: bool) -> str:
        error = '<p class="error" role="alert">That token is not the API token.</p>' if failed else ""
        body = (
            f"{error}<p>Log in with the bot's <code>API_TOKEN</code>.</p>"
            '<form method="post" action="/admin/login" class="login">'
            '<label for="token">API token</label> '
            '<input id="token" name="token" type="password" autocomplete="current-password" required> '
            '<button type="submit">Log in</button></form>'
        )
        return _layout("Log in", body, session=None)

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if self.gate.token is None:
            try:
                self.gate.admit(request)  # 403 unless local
            except Denied as denied:
                return self._denied(request, denied)
            return _see_other("/admin")
        now = time.monotonic()
        while self._failed_logins and self._failed_logins[0] < now - 60.0:
            self._failed_logins.popleft()
        if len(self._failed_logins) >= self.failed_logins_per_min:
            logger.warning(
                "console: login from %s refused: too many wrong tokens this minute", request.remote
            )
            return web.json_response(
                {"error": {"code": "too_many_logins", "message": "too many wrong tokens: wait a minute"}},
                status=429,
                headers={**HEADERS, "Retry-After": "60"},
            )
        form = await _form(request)
        if not self.gate.token_matches(form.get("token", "")):
            self._failed_logins.append(now)
            logger.warning("console: a login with a wrong token from %s", request.remote)
            return self._denied(request, Denied(401, "the token is not valid"), failed_login=True)
        cookie, _ = self.gate.new_session()
        logger.info("console: owner logged in from %s", request.remote)
        response = _see_other("/admin")
        self._set_cookie(request, response, cookie)
        return response

    async def _logout(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        response = _see_other("/admin")
        response.del_cookie(COOKIE, path="/admin")
        return response

    @staticmethod
    def _set_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(
            COOKIE,
            value,
            max_age=SESSION_S,
            path="/admin",
            httponly=True,
            samesite="Strict",
            secure=request.secure,
        )

    @staticmethod
    def _html(text: str, *, status: int = 200) -> web.Response:
        return web.Response(
            text=text, status=status, content_type="text/html", charset="utf-8", headers=HEADERS
        )

    # --- overview -------------------------------------------------------------------------------

    async def _components(self) -> tuple[str, Mapping[str, ComponentHealth]]:
        components = await self._health()
        core_down = any(name in self._core and c.status == "down" for name, c in components.items())
        return ("down" if core_down else overall(components)), components

    def _platforms(self, components: Mapping[str, ComponentHealth]) -> list[dict[str, str]]:
        rows = []
        for platform in self._source.platforms():
            health = components.get(platform.name)
            if not platform.configured:
                rows.append({"name": platform.name, "status": "off", "detail": platform.detail})
            elif health is None:
                # the web adapter has no health of its own: it is serving this page
                state = "ok" if platform.name == "web" else "starting"
                rows.append({"name": platform.name, "status": state, "detail": platform.detail})
            else:
                rows.append({"name": platform.name, "status": health.status, "detail": health.detail})
        return rows

    async def _overview(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        status, components = await self._components()
        rows = "".join(
            f'<tr><th scope="row">{e(name)}</th><td>{_status_badge(c.status)}</td><td>{e(c.backend)}</td>'
            f"<td>{e(c.detail) or DASH}</td>"
            f"<td>{'' if c.latency_ms is None else f'{c.latency_ms:.1f} ms'}</td></tr>"
            for name, c in components.items()
        )
        platforms = "".join(
            f'<tr><th scope="row">{e(p["name"])}</th><td>{_status_badge(p["status"])}</td>'
            f"<td>{e(p['detail']) or DASH}</td></tr>"
            for p in self._platforms(components)
        )
        problems = self._source.recent_problems()
        problem_rows = "".join(
            f"<tr><td>{e(_when(p.at))}</td><td>{_status_badge(p.level.lower())}</td><td>{e(p.logger)}</td>"
            f"<td><pre>{e(p.message)}</pre></td></tr>"
            for p in reversed(problems)
        )
        body = (
            f"<p>Overall: {_status_badge(status)}</p>"
            '<section><h2>Components</h2><table id="components"><thead><tr><th>Component</th><th>Status</th>'
            f"<th>Backend</th><th>Why</th><th>Latency</th></tr></thead><tbody>{rows}</tbody></table></section>"
            '<section><h2>Platforms</h2><table id="platforms"><thead><tr><th>Platform</th><th>State</th>'
            f"<th>Detail</th></tr></thead><tbody>{platforms}</tbody></table></section>"
            "<section><h2>Recent problems</h2>"
            + (
                '<table id="problems"><thead><tr><th>When</th><th>Level</th><th>Where</th>'
                "<th>Message</th></tr>"
                f"</thead><tbody>{problem_rows}</tbody></table>"
                if problems
                else '<p id="problems">No warnings or errors logged since the start.</p>'
            )
            + "</section>"
        )
        return self._html(_layout("Overview", body, session=session, active="/admin"))

    async def _overview_json(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        status, components = await self._components()
        return web.json_response(
            {
                "status": status,
                "components": {
                    name: {"status": c.status, "backend": c.backend, "detail": c.detail}
                    for name, c in components.items()
                },
                "platforms": self._platforms(components),
                "recent_problems": [
                    {"at": p.at, "level": p.level, "logger": p.logger, "message": p.message}
                    for p in self._source.recent_problems()
                ],
            },
            headers=HEADERS,
        )

    # --- metrics ---------------------------------------------------------------------------------

    async def _metrics(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        points = list(self._source.metrics_history())
        last = points[-1] if points else None
        charts: list[tuple[str, str, list[float | None], str]] = [
            (
                "Messages per minute",
                "messages",
                [float(p.messages_per_min) for p in points],
                _fmt(last.messages_per_min if last else None),
            ),
            (
                "Reply latency p50",
                "latency-p50",
                [p.reply_p50_s for p in points],
                _fmt(last.reply_p50_s if last else None, "ms"),
            ),
            (
                "Reply latency p95",
                "latency-p95",
                [p.reply_p95_s for p in points],
                _fmt(last.reply_p95_s if last else None, "ms"),
            ),
            (
                "LLM errors per minute",
                "llm-errors",
                [p.llm_errors_per_min for p in points],
                _fmt(last.llm_errors_per_min if last else None),
            ),
            (
                "Queue depth",
                "queue-depth",
                [float(p.queue_depth) for p in points],
                _fmt(last.queue_depth if last else None),
            ),
        ]
        cards = "".join(
            f'<figure class="chart" id="chart-{ident}">'
            f"<figcaption>{e(title)}: <strong>{e(now)}</strong></figcaption>"
            f"{sparkline(values, label=title)}</figure>"
            for title, ident, values, now in charts
        )
        queues = "".join(
            f'<tr><th scope="row">{e(name)}</th><td>{depth}</td></tr>'
            for name, depth in (last.queues.items() if last else ())
        )
        span = f"{_when(points[0].at)} to {_when(points[-1].at)}" if points else "no samples yet"
        body = (
            f"<p>Each figure is over the minute before its sample; {len(points)} samples ({e(span)}). "
            "The page reloads every 10 seconds.</p>"
            f'<div class="charts">{cards}</div>'
            f'<section><h2>Queues now</h2><table id="queues"><tbody>{queues}</tbody></table></section>'
        )
        return self._html(_layout("Metrics", body, session=session, active="/admin/metrics", refresh_s=10))

    async def _metrics_json(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        return web.json_response(
            {
                "points": [
                    {
                        "at": p.at,
                        "messages_per_min": p.messages_per_min,
                        "reply_p50_s": p.reply_p50_s,
                        "reply_p95_s": p.reply_p95_s,
                        "llm_errors_per_min": p.llm_errors_per_min,
                        "queue_depth": p.queue_depth,
                        "queues": dict(p.queues),
                    }
                    for p in self._source.metrics_history()
                ]
            },
            headers=HEADERS,
        )

    # --- personas --------------------------------------------------------------------------------

    async def _personas(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        selector = self._engine.personas
        default = await selector.default()
        rows = []
        for name in selector.library.names():
            persona = selector.library.get(name)
            assert persona is not None
            if persona.name == default.name:
                action = "<strong>default</strong>"
            else:
                action = (
                    '<form method="post" action="/admin/personas/default">'
                    f'{_csrf_field(session)}<input type="hidden" name="persona" value="{e(name)}">'
                    f'<button type="submit" aria-label="Make {e(name)} the default">'
                    "Make default</button></form>"
                )
            rows.append(
                f'<tr data-persona="{e(name)}"><th scope="row">'
                f'<a href="/admin/personas/{quote(name)}">{e(name)}</a></th>'
                f"<td>{e(persona.description) or DASH}</td><td>{action}</td></tr>"
            )
        configured = selector.configured_default.name
        reset = ""
        if default.name != configured:
            reset = (
                '<form method="post" action="/admin/personas/default">'
                f'{_csrf_field(session)}<input type="hidden" name="persona" value="">'
                f'<button type="submit">Back to DEFAULT_PERSONA ({e(configured)})</button></form>'
            )
        notice = _notice(request)
        body = (
            f"{notice}<p>The default answers wherever no channel or server chose a persona. It is stored in "
            "the database and outlives a restart; "
            f"<code>DEFAULT_PERSONA</code> is <code>{e(configured)}</code>.</p>"
            '<table id="personas"><thead><tr><th>Persona</th><th>Description</th><th></th></tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>{reset}"
        )
        return self._html(_layout("Personas", body, session=session, active="/admin/personas"))

    async def _persona(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        persona = self._engine.personas.library.get(request.match_info["name"])
        if persona is None:
            body = '<p class="error" role="alert">No such persona.</p>'
            return self._html(_layout("Persona", body, session=session, active="/admin/personas"), status=404)
        fields = [
            ("Description", persona.description),
            ("Style", persona.style),
            ("Voice", persona.voice or ""),
            ("Short prompt (small models)", persona.compact_text()),
        ]
        listed = "".join(f"<dt>{e(k)}</dt><dd>{e(v) or DASH}</dd>" for k, v in fields)
        examples = "".join(
            f"<li><p><b>User:</b> {e(user)}</p><p><b>{e(persona.name)}:</b> {e(reply)}</p></li>"
            for user, reply in persona.examples
        )
        body = (
            f'<dl>{listed}</dl><h2>System prompt</h2><pre id="system-prompt">{e(persona.system_prompt)}</pre>'
            + (f"<h2>Examples</h2><ul>{examples}</ul>" if examples else "")
            + '<p><a href="/admin/personas">All personas</a></p>'
        )
        return self._html(_layout(persona.name, body, session=session, active="/admin/personas"))

    async def _switch_default(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        name = form.get("persona", "").strip()
        try:
            persona = await self._engine.personas.set_default(name or None)
        except ConfigError as exc:
            body = f'<p class="error" role="alert">{e(exc)}</p><p><a href="/admin/personas">Back</a></p>'
            return self._html(
                _layout("Personas", body, session=session, active="/admin/personas"), status=400
            )
        logger.info("console: the default persona is now %s", persona.name)
        if session.nonce is None:
            return web.json_response({"default": persona.name}, headers=HEADERS)
        return _see_other("/admin/personas?" + urlencode({"done": f"{persona.name} is now the default"}))

    # --- users ------------------------------------------------------------------------------------

    async def _users(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        user_key = request.query.get("user", "").strip()
        lookup = (
            '<form method="get" action="/admin/users" class="lookup">'
            '<label for="user">User key</label> '
            f'<input id="user" name="user" value="{e(user_key)}" '
            'placeholder="discord:123456789012345678" required> '
            '<button type="submit">Look up</button></form>'
            "<p>A user key is the platform and the user's id on it: <code>discord:…</code>, "
            "<code>telegram:…</code>, <code>slack:…</code>, <code>web:…</code>.</p>"
        )
        details = ""
        status = 200
        if user_key:
            error = _bad_user_key(user_key)
            if error:
                details, status = f'<p class="error" role="alert">{e(error)}</p>', 400
            else:
                logger.info("console: looked at the data of %s", user_key)
                details = await self._user_details(user_key, session)
        body = _notice(request) + lookup + details
        return self._html(_layout("Users", body, session=session, active="/admin/users"), status=status)

    async def _user_details(self, user_key: str, session: Session) -> str:
        engine = self._engine
        accounts = await engine.linked_accounts(user_key)
        canonical = accounts[0]
        profile = await engine.store.get_user(canonical)
        memories = await engine.store.list_memories(canonical, limit=MEMORIES_SHOWN)
        total = await engine.store.count_memories(canonical)
        if profile is None and not memories:
            return f'<p id="no-user">Nothing is held about <code>{e(user_key)}</code>.</p>'
        about = ""
        if profile is not None:
            about = (
                "<dl>"
                f"<dt>Name</dt><dd>{e(profile.preferred_name or profile.display_name)}</dd>"
                f"<dt>First seen</dt><dd>{e(profile.first_seen.isoformat(timespec='seconds'))}</dd>"
                f"<dt>Last seen</dt><dd>{e(profile.last_seen.isoformat(timespec='seconds'))}</dd>"
                f"<dt>Messages</dt><dd>{profile.message_count}</dd>"
                f"<dt>Linked accounts</dt><dd>{e(', '.join(accounts[1:])) or DASH}</dd>"
                "</dl>"
            )
        rows = "".join(
            f"<tr><td>{e(m.created_at.isoformat(timespec='seconds'))}</td><td>{e(m.kind)}</td>"
            f"<td>{e(m.platform)}</td><td>{e(m.text)}</td></tr>"
            for m in memories
        )
        shown = f" (the newest {len(memories)} shown)" if total > len(memories) else ""
        query = urlencode({"user": canonical})
        return (
            f'<section id="user-details"><h2>{e(canonical)}</h2>{about}'
            f'<p><a class="button" href="/admin/users/export?{e(query)}" download>Export as JSON</a> '
            f'<a class="button danger" href="/admin/users/forget?{e(query)}">Forget this user…</a></p>'
            f"<h3>What is remembered: {total} {'memory' if total == 1 else 'memories'}{shown}</h3>"
            '<table id="memories"><thead><tr><th>When</th><th>Kind</th><th>Platform</th><th>Memory</th></tr>'
            f"</thead><tbody>{rows}</tbody></table></section>"
        )

    def _user_key_or_400(self, value: str, session: Session) -> str | web.Response:
        error = _bad_user_key(value.strip()) if value.strip() else "say which user: ?user=platform:id"
        if error:
            body = f'<p class="error" role="alert">{e(error)}</p>'
            return self._html(_layout("Users", body, session=session, active="/admin/users"), status=400)
        return value.strip()

    async def _export(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        user_key = self._user_key_or_400(request.query.get("user", ""), session)
        if isinstance(user_key, web.Response):
            return user_key
        document = await self._engine.export_user(user_key)
        logger.info("console: exported the data of %s", user_key)
        filename = (
            "whisperengine-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in user_key) + ".json"
        )
        return web.Response(
            body=json.dumps(document, ensure_ascii=False, indent=2).encode(),
            content_type="application/json",
            charset="utf-8",
            headers={**HEADERS, "Content-Disposition": f'attachment; filename="{filename}"'},
        )

    async def _confirm_forget(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        user_key = self._user_key_or_400(request.query.get("user", ""), session)
        if isinstance(user_key, web.Response):
            return user_key
        accounts = await self._engine.linked_accounts(user_key)
        linked = (
            f"<p>Linked accounts forgotten with it: {e(', '.join(accounts[1:]))}.</p>"
            if len(accounts) > 1
            else ""
        )
        body = (
            f"<p>Erase everything held about <code>{e(user_key)}</code>: profile, messages, memories, "
            f"settings, vectors and cached turns. This cannot be undone.</p>{linked}"
            '<form method="post" action="/admin/users/forget">'
            f'{_csrf_field(session)}<input type="hidden" name="user" value="{e(user_key)}">'
            '<button type="submit" class="danger">Forget this user</button> '
            f'<a href="/admin/users?{e(urlencode({"user": user_key}))}">Cancel</a></form>'
        )
        return self._html(_layout("Forget a user?", body, session=session, active="/admin/users"))

    async def _forget(self, request: web.Request, session: Session, form: Form) -> web.StreamResponse:
        user_key = self._user_key_or_400(form.get("user", ""), session)
        if isinstance(user_key, web.Response):
            return user_key
        removed = await self._engine.forget_user(user_key)
        logger.info("console: forgot %s (%d rows removed)", user_key, removed)
        if session.nonce is None:
            return web.json_response({"forgotten": user_key, "rows_removed": removed}, headers=HEADERS)
        done = f"Forgot {user_key}: {removed} rows removed."
        return _see_other("/admin/users?" + urlencode({"done": done}))


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={**HEADERS, "Location": location})


def _notice(request: web.Request) -> str:
    done = request.query.get("done", "")
    return f'<p class="notice" role="status">{e(done[:300])}</p>' if done else ""


def _bad_user_key(value: str) -> str | None:
    if len(value) > 300 or ":" not in value or not set(value) <= _USER_KEY_CHARS:
        return "a user key is platform:id, e.g. discord:123456789012345678"
    return None


async def _form(request: web.Request) -> dict[str, str]:
    """A POST's fields: a form's, or a JSON object's string values (bearer-token callers)."""
    if request.content_type == "application/json":
        try:
            data = json.loads(await request.read())
        except ValueError:
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return {}
    posted = await request.post()
    return {k: v for k, v in posted.items() if isinstance(v, str)}


def admin_routes(app: web.Application) -> Iterable[tuple[str, str]]:
    """(method, path) of every ``/admin`` route registered on ``app`` (HEAD excluded)."""
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/admin") and route.method != "HEAD":
            yield route.method, path
