"""The owner's console (``/admin``): a real aiohttp server and client in front of a real Engine.

Who gets in (token, session cookie, loopback without a token), the CSRF defence of every
state-changing form, and what the pages do: export, forget (really gone from the store and the
vectors), switching the default persona (the next reply's prompt has it).
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from adapters.web import WebAdapter
from adapters.web.console import (
    COOKIE,
    AdminConsole,
    LoggedProblem,
    MetricsPoint,
    PlatformState,
    admin_routes,
)
from engine.events import UniversalMessage
from engine.health import ComponentHealth
from engine.persona import DEFAULT_SCOPE, PERSONA_SETTING
from tests.fakes.ports import FakeLLM

if TYPE_CHECKING:
    from tests.integration.conftest import EngineKit, MakeEngine

TOKEN = "console-test-token-0123456789"
USER_ID = "123456789012345678"
USER_KEY = f"discord:{USER_ID}"
FACT = "My tortoise is called Bartholomew and he loves strawberries"
_CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


@dataclass
class StubSource:
    points: list[MetricsPoint] = field(default_factory=list)
    problems: list[LoggedProblem] = field(default_factory=list)

    def platforms(self) -> Sequence[PlatformState]:
        return [
            PlatformState("web", True, "serving the test"),
            PlatformState("discord", True),
            PlatformState("telegram", False, "TELEGRAM_TOKEN is not set"),
        ]

    def metrics_history(self) -> Sequence[MetricsPoint]:
        return self.points

    def recent_problems(self) -> Sequence[LoggedProblem]:
        return self.problems


async def _health() -> dict[str, ComponentHealth]:
    return {
        "store": ComponentHealth("store", "ok", "sqlite", latency_ms=1.5),
        "llm": ComponentHealth("llm", "degraded", "fake", "openai: circuit open (boom)"),
        "discord": ComponentHealth("discord", "down", "discord", "gateway unreachable"),
    }


class Console:
    """A started WebAdapter with the console, and a browser-like session (cookie jar)."""

    def __init__(self, web: WebAdapter, session: aiohttp.ClientSession, kit: EngineKit) -> None:
        self.web = web
        self.session = session
        self.kit = kit

    def url(self, path: str) -> str:
        return self.web.url.rstrip("/") + path

    async def login(self, token: str = TOKEN) -> int:
        async with self.session.post(
            self.url("/admin/login"), data={"token": token}, allow_redirects=False
        ) as resp:
            return resp.status

    async def get(self, path: str, **kwargs: object) -> tuple[int, str]:
        async with self.session.get(self.url(path), **kwargs) as resp:  # type: ignore[arg-type]
            return resp.status, await resp.text()

    async def csrf(self, path: str = "/admin/personas") -> str:
        status, page = await self.get(path)
        assert status == 200, page
        found = _CSRF.search(page)
        assert found, page
        return found.group(1)

    async def post(self, path: str, data: dict[str, str], **kwargs: object) -> tuple[int, str, str]:
        async with self.session.post(
            self.url(path),
            data=data,
            allow_redirects=False,
            **kwargs,  # type: ignore[arg-type]
        ) as resp:
            return resp.status, resp.headers.get("Location", ""), await resp.text()


Connect = Callable[..., Awaitable[Console]]


@pytest.fixture
async def connect(make_engine: MakeEngine) -> AsyncIterator[Connect]:
    async with AsyncExitStack() as stack:

        async def start(
            *, api_token: str | None = TOKEN, host: str = "127.0.0.1", source: StubSource | None = None
        ) -> Console:
            kit = await make_engine(llm=FakeLLM("Lovely to hear about him!"))
            web = WebAdapter(
                kit.engine,
                host=host,
                port=0,
                api_token=api_token,
                health=_health,
                console=source or StubSource(),
            )
            await web.start()
            stack.push_async_callback(web.aclose)
            session = await stack.enter_async_context(
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
            )
            return Console(web, session, kit)

        yield start


async def _tell(kit: EngineKit, text: str = FACT) -> None:
    message = UniversalMessage(
        content=text,
        user_id=USER_ID,
        user_name="Robin",
        platform="discord",
        channel_id="dm-1",
        is_direct=True,
    )
    await kit.engine.handle(message).collect()
    await kit.engine.writer.drain()
    await kit.engine.relationships.drain()


def _paths(console: Console) -> list[tuple[str, str]]:
    routes = sorted(set(admin_routes(console.web.build_app())))
    return [(method, path.replace("{name}", "ember")) for method, path in routes]


# --- who gets in ------------------------------------------------------------------------------


async def test_every_admin_route_answers_401_without_the_token(connect: Connect) -> None:
    console = await connect()
    routes = _paths(console)
    # the enumeration finds them all (a new route is checked without being listed here)
    assert len(routes) >= 13
    assert ("POST", "/admin/users/forget") in routes and ("GET", "/admin/api/metrics") in routes
    forged = "v1.9999999999.00112233445566778899aabbccddeeff." + "0" * 64
    async with aiohttp.ClientSession() as bare:
        for method, path in routes:
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token"},
                {"Authorization": f"Basic {TOKEN}"},
                {"Cookie": f"{COOKIE}={forged}"},
                {"Cookie": f"{COOKIE}={TOKEN}"},
            ):
                async with bare.request(
                    method, console.url(path), headers=headers, data={"token": "nope"}, allow_redirects=False
                ) as resp:
                    assert resp.status == 401, (method, path, headers)
                    assert "Set-Cookie" not in resp.headers
            # a browser asking for a page gets the login form, an API client a JSON error
            async with bare.request(method, console.url(path), headers={"Accept": "text/html"}) as resp:
                assert resp.status == 401
                if not path.startswith("/admin/api/"):
                    assert 'name="token"' in await resp.text()
            async with bare.request(
                method, console.url(path), headers={"Accept": "application/json"}
            ) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] == "unauthorized"
    # ... and every one answers with the token
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as owner:
        for method, path in routes:
            if method == "GET":
                async with owner.get(console.url(path), params={"user": USER_KEY}) as resp:
                    assert resp.status == 200, (path, await resp.text())


async def test_logging_in_sets_a_signed_strict_httponly_cookie_that_is_not_the_token(
    connect: Connect,
) -> None:
    console = await connect()
    assert await console.login("not-the-token") == 401
    assert not console.session.cookie_jar.filter_cookies(URL(console.url("/admin")))

    async with console.session.post(
        console.url("/admin/login"), data={"token": TOKEN}, allow_redirects=False
    ) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/admin"
        set_cookie = resp.headers["Set-Cookie"]
    assert f"{COOKIE}=" in set_cookie
    for attribute in ("HttpOnly", "SameSite=Strict", "Path=/admin", "Max-Age="):
        assert attribute in set_cookie
    assert TOKEN not in set_cookie

    status, page = await console.get("/admin")
    assert status == 200 and "Overview" in page

    # a cookie changed by one character is refused
    value = console.session.cookie_jar.filter_cookies(URL(console.url("/admin")))[COOKIE].value
    tampered = value[:-1] + ("0" if value[-1] != "0" else "1")
    headers = {"Cookie": f"{COOKIE}={tampered}"}
    async with aiohttp.ClientSession() as other, other.get(console.url("/admin"), headers=headers) as resp:
        assert resp.status == 401

    # logging out drops the cookie
    status, _, _ = await console.post("/admin/logout", {"csrf": await console.csrf("/admin")})
    assert status == 303
    assert (await console.get("/admin"))[0] == 401


async def test_a_state_changing_form_needs_its_sessions_csrf_token(connect: Connect) -> None:
    console = await connect()
    assert await console.login() == 303
    csrf = await console.csrf()

    assert (await console.post("/admin/personas/default", {"persona": "sage"}))[0] == 403
    assert (await console.post("/admin/personas/default", {"persona": "sage", "csrf": "0" * 64}))[0] == 403
    # another session's token does not do
    other = await connect()
    assert await other.login() == 303
    other_csrf = await other.csrf()
    assert other_csrf != csrf
    assert (await console.post("/admin/personas/default", {"persona": "sage", "csrf": other_csrf}))[0] == 403
    # nor a form sent from another site
    for origin in ("https://evil.example", "null", f"http://evil.example:{console.web.port}"):
        status, _, _ = await console.post(
            "/admin/personas/default", {"persona": "sage", "csrf": csrf}, headers={"Origin": origin}
        )
        assert status == 403, origin
    assert await console.kit.store.get_setting(DEFAULT_SCOPE, PERSONA_SETTING) is None

    own = {"Origin": f"https://127.0.0.1:{console.web.port}"}  # https: a proxy ended TLS
    status, location, _ = await console.post(
        "/admin/personas/default", {"persona": "sage", "csrf": csrf}, headers=own
    )
    assert status == 303 and location.startswith("/admin/personas")
    assert await console.kit.store.get_setting(DEFAULT_SCOPE, PERSONA_SETTING) == "sage"
    # a bearer-token caller needs no CSRF token (no browser sends that header by itself)
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as owner,
        owner.post(console.url("/admin/personas/default"), json={"persona": "ember"}) as resp,
    ):
        assert resp.status == 200 and (await resp.json()) == {"default": "ember"}


async def test_without_a_token_the_console_is_open_on_loopback_only(connect: Connect) -> None:
    console = await connect(api_token=None)
    status, page = await console.get("/admin")
    assert status == 200 and "Overview" in page
    # still a session cookie, for the CSRF check: a form without its token is refused
    assert (await console.post("/admin/personas/default", {"persona": "sage"}))[0] == 403
    assert (await console.post("/admin/personas/default", {"persona": "sage", "csrf": await console.csrf()}))[
        0
    ] == 303

    for headers in (
        {"X-Forwarded-For": "203.0.113.9"},
        {"Forwarded": "for=203.0.113.9"},
        {"Host": "evil.example"},
    ):
        status, page = await console.get("/admin", headers=headers)
        assert status == 403, headers
        assert "API_TOKEN" in page

    # a server listening beyond loopback never opens it without a token
    wide = await connect(api_token=None, host="0.0.0.0")
    status, page = await wide.get("/admin")
    assert status == 403 and "API_TOKEN" in page and "0.0.0.0" in page
    async with wide.session.get(wide.url("/admin/api/overview")) as resp:
        assert resp.status == 403
        assert "API_TOKEN" in (await resp.json())["error"]["message"]


def _outside_address() -> str | None:
    """This machine's address on its network interface (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


async def test_without_a_token_a_request_from_another_address_is_refused(make_engine: MakeEngine) -> None:
    """The peer check on its own: a console that believes it listens on loopback, reached from
    the machine's network address (the socket's peer, not a header, says where it came from)."""
    address = _outside_address()
    if address is None:
        pytest.skip("this machine has no network address besides loopback")
    kit = await make_engine()
    console = AdminConsole(kit.engine, StubSource(), health=_health, token=None, bound_host="127.0.0.1")
    app = web.Application()
    console.add_routes(app.router)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, address, 0)
        await site.start()
        port = runner.addresses[0][1]
        url = f"http://{address}:{port}/admin"
        async with (
            aiohttp.ClientSession() as session,
            session.get(url, headers={"Host": "localhost"}) as resp,
        ):
            assert resp.status == 403
            assert f"comes from {address}" in await resp.text()
    finally:
        await runner.cleanup()


# --- the pages ---------------------------------------------------------------------------------


async def test_the_overview_shows_each_component_with_its_reason_platforms_and_problems(
    connect: Connect,
) -> None:
    source = StubSource(problems=[LoggedProblem(1_700_000_000.0, "ERROR", "bot.x", "it broke <badly>")])
    console = await connect(source=source)
    assert await console.login() == 303
    status, page = await console.get("/admin")
    assert status == 200
    assert "openai: circuit open (boom)" in page and "gateway unreachable" in page
    assert "TELEGRAM_TOKEN is not set" in page
    assert "it broke &lt;badly&gt;" in page and "<badly>" not in page  # escaped
    async with console.session.get(console.url("/admin/api/overview")) as resp:
        body = await resp.json()
    assert body["status"] == "degraded"
    assert body["components"]["llm"]["detail"] == "openai: circuit open (boom)"
    assert {p["name"]: p["status"] for p in body["platforms"]} == {
        "web": "ok",  # no health component of its own: it is serving the page
        "discord": "down",
        "telegram": "off",
    }
    assert body["recent_problems"][0]["message"] == "it broke <badly>"


async def test_the_metrics_page_draws_a_chart_of_each_figure(connect: Connect) -> None:
    points = [
        MetricsPoint(1_700_000_000.0 + 5 * i, 2.0 * i, 0.2, 0.9 if i else None, 0.0, i, {"memory_writer": i})
        for i in range(6)
    ]
    console = await connect(source=StubSource(points=points))
    assert await console.login() == 303
    status, page = await console.get("/admin/metrics")
    assert status == 200
    for chart in ("messages", "latency-p50", "latency-p95", "llm-errors", "queue-depth"):
        assert f'id="chart-{chart}"' in page
    assert page.count("<svg") == 5 and page.count("<path") >= 5
    assert "900 ms" in page and "memory_writer" in page
    async with console.session.get(console.url("/admin/api/metrics")) as resp:
        body = await resp.json()
    assert [p["messages_per_min"] for p in body["points"]] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert body["points"][0]["reply_p95_s"] is None


async def test_a_persona_can_be_viewed_and_made_the_default_for_the_next_reply(connect: Connect) -> None:
    console = await connect()
    assert await console.login() == 303
    status, page = await console.get("/admin/personas/sage")
    assert status == 200 and "System prompt" in page
    sage = console.kit.engine.personas.library.get("sage")
    assert sage is not None
    assert sage.system_prompt.strip().splitlines()[0].replace("'", "&#x27;") in page
    assert (await console.get("/admin/personas/nobody"))[0] == 404

    csrf = await console.csrf()
    status, location, _ = await console.post("/admin/personas/default", {"persona": "sage", "csrf": csrf})
    assert status == 303
    status, page = await console.get(location)
    assert "sage is now the default" in page
    assert re.search(r'data-persona="sage">.*?<strong>default</strong>', page)

    await _tell(console.kit, "Hello again!")
    system = console.kit.llm.prompts[-1][0].content
    assert sage.system_prompt.strip()[:60] in system

    status, _, page = await console.post("/admin/personas/default", {"persona": "nobody", "csrf": csrf})
    assert status == 400 and "unknown persona" in page


async def test_a_users_memories_are_shown_exported_and_forgotten_each_logged(
    connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    console = await connect()
    kit = console.kit
    await _tell(kit)
    assert await kit.store.count_memories(USER_KEY) > 0
    assert await kit.vectors.count(USER_KEY) > 0
    assert await console.login() == 303
    caplog.set_level(logging.INFO, logger="adapters.web.console")

    status, page = await console.get("/admin/users", params={"user": USER_KEY})
    assert status == 200 and "Bartholomew" in page and "Robin" in page
    assert (await console.get("/admin/users", params={"user": "<script>"}))[0] == 400
    status, page = await console.get("/admin/users", params={"user": "discord:1"})
    assert status == 200 and "Nothing is held" in page

    async with console.session.get(console.url("/admin/users/export"), params={"user": USER_KEY}) as resp:
        assert resp.status == 200
        assert (
            resp.headers["Content-Disposition"]
            == 'attachment; filename="whisperengine-discord_123456789012345678.json"'
        )
        document = await resp.json()
    assert document["user_key"] == USER_KEY
    assert any("Bartholomew" in m["text"] for m in document["memories"])
    assert [m["content"] for m in document["messages"] if m["role"] == "user"] == [FACT]

    status, page = await console.get("/admin/users/forget", params={"user": USER_KEY})
    assert status == 200 and "cannot be undone" in page
    assert await kit.store.count_memories(USER_KEY) > 0  # asking is not forgetting
    csrf = _CSRF.search(page)
    assert csrf
    assert (await console.post("/admin/users/forget", {"user": USER_KEY}))[0] == 403
    status, location, _ = await console.post("/admin/users/forget", {"user": USER_KEY, "csrf": csrf.group(1)})
    assert status == 303
    assert "Forgot discord:123456789012345678" in (await console.get(location))[1]

    assert await kit.store.count_memories(USER_KEY) == 0
    assert await kit.store.get_user(USER_KEY) is None
    assert await kit.store.user_messages(USER_KEY) == []
    assert await kit.vectors.count(USER_KEY) == 0

    logged = [r.getMessage() for r in caplog.records if r.name == "adapters.web.console"]
    assert [m.split(" ", 2)[1] for m in logged] == ["looked", "looked", "exported", "forgot"]
    assert [USER_KEY in m for m in logged] == [True, False, True, True]
    assert not any("Bartholomew" in r.getMessage() for r in caplog.records)


async def test_guessing_the_token_is_slowed_down(connect: Connect) -> None:
    console = await connect()
    for _ in range(20):
        assert await console.login("a-guess") == 401
    assert await console.login("another-guess") == 429
    assert await console.login() == 429  # even the right one, until the minute is over
    async with console.session.get(
        console.url("/admin"), headers={"Authorization": f"Bearer {TOKEN}"}
    ) as resp:
        assert resp.status == 200  # the owner's scripts are not locked out
