"""Slack's circuit breaker, retries and timeout: the real slack-bolt / slack-sdk client, in
``whisperengine run``'s code path, against the fake Slack whose Web API fails (503), hangs, and
recovers; health is read through the real ``GET /api/health``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from adapters.slack.adapter import SlackAdapter
from engine.breaker import BreakerState
from tests.fakes.health import QUICK_BREAKER_SETTINGS, LogWatch, api_health, wait_health
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.slack_server import FakeSlack, running_slack

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPLY = "Hello! Nice to hear from you."


@dataclass
class Bot:
    slack: FakeSlack
    app: Any
    adapter: SlackAdapter

    async def deliver(self, event: dict[str, Any]) -> None:
        url = f"http://127.0.0.1:{self.adapter.events_port}/slack/events"
        status, _ = await self.slack.post_event(url, self.slack.event_body(event))
        assert status == 200


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bot(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bot]:
    async with FakeSlack() as slack, FakeLLMServer(reply=REPLY) as llm:
        data_dir: Path = tmp_path_factory.mktemp("slack-breaker")
        async with running_slack(
            slack,
            llm.openai_base_url,
            data_dir,
            **QUICK_BREAKER_SETTINGS,
        ) as (app, adapter):
            yield Bot(slack, app, adapter)


def dm_channel() -> str:
    return "D" + uuid.uuid4().hex[:8].upper()


async def test_health_reports_the_events_endpoint_and_a_closed_circuit(bot: Bot) -> None:
    body = await wait_health(bot.app, "slack", "ok")
    assert body["components"]["slack"]["detail"] == "events API connected"


async def test_a_single_server_error_is_retried_and_the_reply_arrives(bot: Bot) -> None:
    slack = bot.slack
    alice = slack.add_user("alice")
    channel = dm_channel()
    slack.fail_calls(503, times=1, only=("chat.postMessage",))

    await bot.deliver(slack.direct_message(channel, alice, "hello there"))
    await slack.wait_for(lambda: slack.bot_texts(channel) == [REPLY])

    assert slack.faulted == ["chat.postMessage"]
    assert bot.adapter.guard.breaker.state is BreakerState.CLOSED
    assert (await api_health(bot.app))["components"]["slack"]["status"] == "ok"


async def test_a_hanging_call_times_out_and_is_retried(bot: Bot) -> None:
    slack = bot.slack
    bob = slack.add_user("bob")
    channel = dm_channel()
    slack.hang_calls(5.0, times=1, only=("chat.postMessage",))  # longer than PLATFORM_TIMEOUT_S=1

    await bot.deliver(slack.direct_message(channel, bob, "are you there"))
    await slack.wait_for(lambda: slack.bot_texts(channel) == [REPLY])
    assert bot.adapter.guard.breaker.state is BreakerState.CLOSED


async def test_a_failing_api_opens_the_circuit_and_a_trial_closes_it(bot: Bot) -> None:
    slack, app, adapter = bot.slack, bot.app, bot.adapter
    dora = slack.add_user("dora")
    channel = dm_channel()
    slack.fail_calls(503)

    with LogWatch("adapters.slack.adapter") as log:
        first = slack.direct_message(channel, dora, "the first message while Slack fails")
        await bot.deliver(first)
        body = await wait_health(app, "slack", "down")
        await log.wait_for(f"message {first['ts']} in {channel} was not answered")
    assert "circuit open" in body["components"]["slack"]["detail"]
    assert body["status"] == "degraded"  # not a core component: the API still answers 200
    assert "the user's message is stored" in log.text
    stored = await app.store.user_messages(f"slack:{dora}")
    assert "the first message while Slack fails" in [m.content for m in stored if m.role == "user"]

    # While the circuit is open, calls fail at once: nothing more reaches the API.
    await asyncio.sleep(0.3)  # the first message's apology attempt is done
    asked = len(slack.faulted)
    with LogWatch("adapters.slack.adapter") as log:
        second = slack.direct_message(channel, dora, "the second message while Slack fails")
        await bot.deliver(second)
        await log.wait_for(f"message {second['ts']} in {channel} was not answered")
    assert "circuit open" in log.text
    assert len(slack.faulted) == asked

    # The API answers again: after BREAKER_RESET_S one trial goes through and closes the circuit.
    slack.recover()
    await asyncio.sleep(adapter.guard.breaker.reset_timeout_s)
    await bot.deliver(slack.direct_message(channel, dora, "Slack is back"))
    await slack.wait_for(lambda: REPLY in slack.bot_texts(channel))
    await wait_health(app, "slack", "ok")
    assert adapter.guard.breaker.state is BreakerState.CLOSED
