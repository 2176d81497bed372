"""Fuzzing the Slack Events API endpoint of the real bolt app, with correctly signed bodies.

Malformed JSON and fields get an answer (never a 500) and break nothing; every valid
mention, whatever its text, is answered and stored; an over-long one is refused with the limit.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.slack.adapter import SlackAdapter
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.slack_server import FakeSlack, running_slack

pytestmark = pytest.mark.asyncio(loop_scope="module")

REPLY = "Fuzzy hello."
LIMIT = 3000
FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class World:
    slack: FakeSlack
    app: Any
    adapter: SlackAdapter

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.adapter.events_port}/slack/events"

    async def post_raw(self, raw: str) -> int:
        headers = self.slack.signature_headers(raw)
        assert self.slack._session is not None
        async with self.slack._session.post(self.url, data=raw.encode(), headers=headers) as response:
            await response.read()
            return response.status

    async def still_answers(self) -> None:
        """A valid mention after the fuzzing is still answered."""
        user = self.slack.add_user("canary")
        channel = new_channel()
        status, _ = await self.slack.post_event(
            self.url, self.slack.event_body(self.slack.mention(channel, user, "ping"))
        )
        assert status == 200
        await self.slack.wait_for(lambda: self.slack.bot_texts(channel) == [REPLY])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with FakeSlack() as slack, FakeLLMServer(reply=REPLY) as llm:
        data_dir: Path = tmp_path_factory.mktemp("fuzz-slack")
        async with running_slack(
            slack, llm.openai_base_url, data_dir, max_message_chars=LIMIT, rate_limit_messages=0
        ) as (app, adapter):
            yield World(slack, app, adapter)


def new_channel() -> str:
    return "C" + uuid.uuid4().hex[:10].upper()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8,
)


@FUZZ
@given(
    text=st.text(max_size=LIMIT + 300)
    | st.sampled_from(["", "   ", "<@UBOT>", "&lt;&amp;&gt;", "x" * (LIMIT + 1)])
)
async def test_every_mention_is_answered_and_stored_or_refused_as_too_long(world: World, text: str) -> None:
    slack = world.slack
    user, channel = slack.add_user("fuzzer"), new_channel()
    event = slack.mention(channel, user, text)
    status, _ = await slack.post_event(world.url, slack.event_body(event))
    assert status == 200
    # the reply streams (posted, then edited): wait for its final text
    await slack.wait_for(lambda: any(t == REPLY or "too long" in t for t in slack.bot_texts(channel)))
    [reply] = slack.bot_texts(channel)
    await world.app.engine.writer.drain()  # the reply is stored in the background
    stored = await world.app.store.recent_messages(f"slack:{channel}:{event['ts']}", 10)
    if reply == REPLY:
        assert [m.role for m in stored] == ["user", "assistant"]
    else:
        assert "too long" in reply and f"the limit is {LIMIT}" in reply
        assert stored == []


event_fields = st.fixed_dictionaries(
    {"type": st.sampled_from(["app_mention", "message"]) | json_values},
    optional={
        "user": st.text(max_size=12) | json_values,
        "text": st.text(max_size=80) | json_values,
        "channel": st.text(max_size=12) | json_values,
        "channel_type": st.sampled_from(["im", "channel"]) | json_values,
        "ts": st.text(max_size=20) | json_values,
        "thread_ts": json_values,
        "subtype": json_values,
        "bot_id": json_values,
        "team": json_values,
    },
)


@FUZZ
@given(
    event=event_fields,
    body_extra=st.dictionaries(st.sampled_from(["event_id", "team_id", "type"]), json_values),
)
async def test_malformed_event_fields_break_nothing(
    world: World, event: dict[str, Any], body_extra: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    body = {**world.slack.event_body(event), **body_extra}
    with caplog.at_level(logging.ERROR):
        status = await world.post_raw(json.dumps(body))
        await world.slack.settle()
    assert status in (200, 400, 404), status
    crashes = [r for r in caplog.records if r.exc_info and r.name.startswith(("adapters", "slack_bolt"))]
    assert not crashes, crashes[0].getMessage()


@FUZZ
@given(
    raw=st.text(max_size=200)
    | st.sampled_from(['{"type": "event_callback"', "[]", "null", '{"event": []}', '{"type": 5}', "{}"])
)
async def test_malformed_json_bodies_get_an_answer(world: World, raw: str) -> None:
    status = await world.post_raw(raw)
    assert status in (200, 400, 404), status


async def test_the_endpoint_still_answers_after_the_fuzzing(world: World) -> None:
    await world.still_answers()


async def test_slack_has_no_admin_commands_a_slash_command_changes_nothing(world: World) -> None:
    """Slack offers no commands: a signed slash-command payload is not handled."""
    channel = new_channel()
    form = f"command=%2Fpersona&text=set+sage&channel_id={channel}&user_id=U1&team_id=T1"
    headers = world.slack.signature_headers(form)
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    assert world.slack._session is not None
    async with world.slack._session.post(world.url, data=form.encode(), headers=headers) as response:
        assert response.status == 404
    assert await world.app.store.get_setting(f"channel:slack:{channel}", "persona") is None
