"""One-off reachability checks of the configured chat platforms, for ``whisperengine doctor``.

``doctor`` does not connect the bots (a running ``whisperengine run`` reports its platforms'
live health on ``/api/health`` and ``/status``); it asks each platform whose token is set one
cheap authenticated question with a timeout — Discord ``GET /users/@me``, Telegram ``getMe``,
Slack ``auth.test`` — and reports ``ok``, or ``down`` with the reason (unreachable, 5xx, or the
token refused). Tokens never appear in the reasons.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any

import aiohttp

from engine.health import ComponentHealth

if TYPE_CHECKING:
    from config.settings import Settings


class _Refused(Exception):
    pass


async def _ask(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str]
) -> tuple[int, Any]:
    async with session.request(method, url, headers=headers) as response:
        try:
            body = await response.json(content_type=None)
        except ValueError:
            body = None
        return response.status, body


async def _check(name: str, backend: str, secret: str, question: Any, *, timeout_s: float) -> ComponentHealth:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            await question()
    except TimeoutError:
        return ComponentHealth(name, "down", backend, f"no answer within {timeout_s:g}s")
    except _Refused as exc:
        return ComponentHealth(name, "down", backend, str(exc).replace(secret, "***"))
    except aiohttp.ClientError as exc:
        reason = f"unreachable: {type(exc).__name__}: {exc}".replace(secret, "***")
        return ComponentHealth(name, "down", backend, reason)
    latency = (time.perf_counter() - started) * 1000
    return ComponentHealth(name, "ok", backend, "API reachable, token accepted", latency_ms=latency)


def _judge(status: int, body: Any, *, token_variable: str) -> None:
    if status in (401, 403):
        raise _Refused(f"the token was refused (HTTP {status}; check {token_variable})")
    if status >= 400:
        raise _Refused(f"HTTP {status}")
    if isinstance(body, dict) and body.get("ok") is False:
        raise _Refused(f"the API answered {body.get('error') or body.get('description') or 'not ok'}")


async def _question(
    session: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], variable: str
) -> None:
    status, body = await _ask(session, method, url, headers)
    _judge(status, body, token_variable=variable)


async def probe_platforms(settings: Settings) -> dict[str, ComponentHealth]:
    """The health of each platform whose token is set."""
    # name, token, its variable, method, url, headers
    questions: list[tuple[str, str, str, str, str, dict[str, str]]] = []
    if settings.discord_token is not None:
        token = settings.discord_token.get_secret_value()
        url = settings.discord_api_base_url.rstrip("/") + "/users/@me"
        questions.append(("discord", token, "DISCORD_TOKEN", "GET", url, {"Authorization": f"Bot {token}"}))
    if settings.telegram_token is not None:
        token = settings.telegram_token.get_secret_value()
        url = f"{settings.telegram_api_base_url}{token}/getMe"
        questions.append(("telegram", token, "TELEGRAM_TOKEN", "GET", url, {}))
    if settings.slack_bot_token is not None:
        token = settings.slack_bot_token.get_secret_value()
        url = settings.slack_api_base_url.rstrip("/") + "/auth.test"
        questions.append(
            ("slack", token, "SLACK_BOT_TOKEN", "POST", url, {"Authorization": f"Bearer {token}"})
        )
    results: dict[str, ComponentHealth] = {}
    async with aiohttp.ClientSession() as session:
        for name, token, variable, method, url, headers in questions:
            ask = functools.partial(_question, session, method, url, headers, variable)
            results[name] = await _check(
                name, f"{name} api", token, ask, timeout_s=settings.platform_timeout_s
            )
    return results
