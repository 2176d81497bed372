"""The Slack adapter end to end: the real slack-bolt app and slack-sdk clients, in ``whisperengine
run``'s code path (``build_app`` + ``start_slack``), against the fake Slack and the fake LLM server.

One Events API bot serves most of the module; Socket Mode, Redis-shared deduplication,
start-up failures and the cross-platform test build their own.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from adapters.slack.adapter import SLACK_LIMIT, SlackAdapter, split_for_slack
from adapters.slack.translate import escape
from bot.app import build_app
from bot.platforms import start_slack, start_telegram
from config.settings import Settings
from engine.errors import BackendUnavailable, ConfigError
from tests.conftest import require_redis
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.slack_server import FakeSlack, running_slack, slack_settings
from tests.fakes.telegram_server import FakeTelegram, llm_settings, telegram_settings

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEFAULT_REPLY = "Hello! Nice to hear from you."
SPICY_REPLY = "Careful: <!channel> & <@U00001> are just text here, 1 < 2 > 0."


def long_answer() -> str:
    """About 5000 characters with characters Slack must escape (escaping makes it longer)."""
    sentence = "Tom & Jerry <always> argue about cheese, sentence after sentence. "
    text = "\n\n".join(sentence * 15 for _ in range(6))
    return text[:5000]


class Script:
    def __init__(self) -> None:
        self.replies = {"LONG5000": long_answer(), "SPICY": SPICY_REPLY}

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        last = messages[-1]["content"] if messages else ""
        for marker, reply in self.replies.items():
            if marker in last:
                return reply
        return DEFAULT_REPLY


@dataclass
class World:
    slack: FakeSlack
    llm: FakeLLMServer
    app: Any
    adapter: SlackAdapter

    @property
    def events_url(self) -> str:
        return f"http://127.0.0.1:{self.adapter.events_port}/slack/events"

    def prompts_containing(self, text: str) -> list[list[dict[str, Any]]]:
        return [
            r.messages
            for r in self.llm.requests
            if r.path.endswith("/chat/completions") and r.messages and text in r.messages[-1]["content"]
        ]

    def all_prompt_text(self) -> str:
        return "\n".join(m["content"] for r in self.llm.requests for m in r.messages)

    async def deliver(self, event: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        body = self.slack.event_body(event)
        status, _ = await self.slack.post_event(self.events_url, body, **kwargs)
        assert status == 200
        return body


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with FakeSlack() as slack, FakeLLMServer(reply=Script()) as llm:
        data_dir: Path = tmp_path_factory.mktemp("slack-bot")
        async with running_slack(slack, llm.openai_base_url, data_dir) as (app, adapter):
            yield World(slack, llm, app, adapter)


def channel_id() -> str:
    return "C" + uuid.uuid4().hex[:8].upper()


# --- messages ---------------------------------------------------------------------------------


async def test_mention_is_answered_in_its_thread(world: World) -> None:
    slack = world.slack
    alice = slack.add_user("alice", display_name="Ally")
    channel = channel_id()
    event = slack.mention(channel, alice, "hello there, what's new?")
    await world.deliver(event)

    await slack.wait_for(lambda: slack.bot_texts(channel) == [DEFAULT_REPLY])
    [reply] = slack.bot_messages(channel)
    assert reply.thread_ts == event["ts"]  # a new thread under the mention
    [prompt] = world.prompts_containing("hello there, what's new?")
    assert prompt[-1]["content"] == "Ally: hello there, what's new?"  # mention gone, name resolved
    stored = await world.app.store.recent_messages(f"slack:{channel}:{event['ts']}", 10)
    assert [(m.role, m.user_key) for m in stored] == [
        ("user", f"slack:{alice}"),
        ("assistant", f"slack:{alice}"),
    ]

    # A follow-up mention inside that thread continues the same conversation.
    follow_up = slack.mention(channel, alice, "and then? FOLLOW-UP", thread_ts=event["ts"])
    await world.deliver(follow_up)
    await slack.wait_for(lambda: slack.bot_texts(channel) == [DEFAULT_REPLY, DEFAULT_REPLY])
    assert slack.bot_messages(channel)[1].thread_ts == event["ts"]
    [prompt] = world.prompts_containing("FOLLOW-UP")
    history = "\n".join(m["content"] for m in prompt)
    assert "hello there, what's new?" in history and DEFAULT_REPLY in history


async def test_direct_message_is_answered_inline(world: World) -> None:
    slack = world.slack
    bob = slack.add_user("bob")
    dm = "D" + uuid.uuid4().hex[:8].upper()
    await world.deliver(slack.direct_message(dm, bob, "hi in private"))
    await slack.wait_for(lambda: slack.bot_texts(dm) == [DEFAULT_REPLY])
    assert slack.bot_messages(dm)[0].thread_ts is None
    [prompt] = world.prompts_containing("hi in private")
    assert prompt[-1]["content"] == "hi in private"  # a DM is not a group chat


async def test_bot_posts_edits_and_channel_chatter_are_ignored(world: World) -> None:
    slack = world.slack
    carol = slack.add_user("carol")
    dm = "D" + uuid.uuid4().hex[:8].upper()
    await world.deliver(
        slack.direct_message(dm, None, "from a bot IGNORED-A", bot_id="B999", subtype="bot_message")
    )
    await world.deliver(slack.direct_message(dm, carol, "edited IGNORED-B", subtype="message_changed"))
    await world.deliver(slack.direct_message(dm, slack.bot_user_id, "my own words IGNORED-C"))
    channel_chatter = slack.direct_message(channel_id(), carol, "channel chatter IGNORED-D")
    channel_chatter["channel_type"] = "channel"
    await world.deliver(channel_chatter)
    await world.deliver(slack.direct_message(dm, carol, "a real question"))

    await slack.wait_for(lambda: slack.bot_texts(dm) == [DEFAULT_REPLY])
    await slack.settle()
    assert slack.bot_texts(dm) == [DEFAULT_REPLY]
    assert "IGNORED" not in world.all_prompt_text()


async def test_5000_character_reply_is_split_and_escaped(world: World) -> None:
    slack = world.slack
    dave = slack.add_user("dave")
    channel = channel_id()
    expected = long_answer()
    parts = split_for_slack(expected)
    assert len(parts) >= 2

    await world.deliver(slack.mention(channel, dave, "tell me everything LONG5000"))
    # Whitespace at a part's edges shows as nothing: the renderer spends no edit on it.
    await slack.wait_for(
        lambda: [t.strip() for t in slack.bot_texts(channel)] == [escape(p).strip() for p in parts]
    )
    texts = slack.bot_texts(channel)
    assert all(len(t) <= SLACK_LIMIT for t in texts)
    assert "".join(parts) == expected


async def test_model_output_cannot_ping_anyone(world: World) -> None:
    slack = world.slack
    erin = slack.add_user("erin")
    channel = channel_id()
    await world.deliver(slack.mention(channel, erin, "say something SPICY"))
    await slack.wait_for(
        lambda: len(slack.bot_messages(channel)) == 1 and "1 &lt; 2" in slack.bot_texts(channel)[0]
    )
    assert slack.bot_texts(channel) == [escape(SPICY_REPLY)]
    assert "<!channel>" not in slack.bot_texts(channel)[0]


async def test_a_streamed_reply_is_posted_then_edited(world: World) -> None:
    slack, llm = world.slack, world.llm
    fay = slack.add_user("fay")
    channel = channel_id()
    llm.delay_s, llm.chunk_size = 0.03, 3
    try:
        await world.deliver(slack.mention(channel, fay, "stream it please"))
        await slack.wait_for(lambda: slack.bot_texts(channel) == [DEFAULT_REPLY])
    finally:
        llm.delay_s, llm.chunk_size = 0.0, 4
    [reply] = slack.bot_messages(channel)
    first = next(p["text"] for p in slack.calls_of("chat.postMessage") if p["channel"] == channel)
    assert DEFAULT_REPLY.startswith(first) and len(first) < len(DEFAULT_REPLY)
    assert reply.edits and reply.edits[-1] == DEFAULT_REPLY
    assert all(DEFAULT_REPLY.startswith(e) for e in reply.edits)


async def test_user_names_are_looked_up_once(world: World) -> None:
    slack = world.slack
    gus = slack.add_user("gus", display_name="Gus the Great")
    channel = channel_id()
    for n in range(2):
        await world.deliver(slack.mention(channel, gus, f"question {n} NAMES"))
        await slack.wait_for(lambda n=n: len(slack.bot_messages(channel)) == n + 1)
    lookups = [p for p in slack.calls_of("users.info") if p.get("user") == gus]
    assert len(lookups) == 1
    assert all(p[-1]["content"].startswith("Gus the Great: ") for p in world.prompts_containing("NAMES"))


async def test_slack_markup_reaches_the_engine_as_plain_text(world: World) -> None:
    slack = world.slack
    nina, omar = slack.add_user("nina"), slack.add_user("omar", display_name="Omar K")
    channel = channel_id()
    text = f"ask <@{omar}> about <#C0GEN|general>, <https://example.com|the site> &amp; <!here> MARKUP"
    await world.deliver(slack.mention(channel, nina, text))
    await slack.wait_for(lambda: slack.bot_texts(channel) == [DEFAULT_REPLY])
    [prompt] = world.prompts_containing("MARKUP")
    assert prompt[-1]["content"] == (
        "Nina: ask @Omar K about #general, the site (https://example.com) & @here MARKUP"
    )


# --- the Events API's protections -------------------------------------------------------------


async def test_forged_signature_gets_401_and_no_reply(world: World) -> None:
    slack = world.slack
    mallory = slack.add_user("mallory")
    channel = channel_id()
    body = slack.event_body(slack.mention(channel, mallory, "forged FORGED-1"))
    status, _ = await slack.post_event(world.events_url, body, secret="not-the-secret")
    assert status == 401
    raw = json.dumps(body)
    no_signature = {"X-Slack-Request-Timestamp": str(int(time.time())), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(world.events_url, data=raw, headers=no_signature) as response:
            assert response.status == 401
        async with session.post(
            world.events_url, data=raw, headers={"X-Slack-Request-Timestamp": "soon"}
        ) as r:
            assert r.status == 401
    await slack.settle()
    assert slack.bot_messages(channel) == []
    assert "FORGED" not in world.all_prompt_text()


async def test_stale_timestamp_gets_401_and_no_reply(world: World) -> None:
    slack = world.slack
    trent = slack.add_user("trent")
    channel = channel_id()
    body = slack.event_body(slack.mention(channel, trent, "replayed STALE-1"))
    status, _ = await slack.post_event(world.events_url, body, timestamp=int(time.time()) - 6 * 60)
    assert status == 401
    await slack.settle()
    assert slack.bot_messages(channel) == []
    assert "STALE-1" not in world.all_prompt_text()


async def test_url_verification_is_answered(world: World) -> None:
    body = {
        "token": "x",
        "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",
        "type": "url_verification",
    }
    status, text = await world.slack.post_event(world.events_url, body)
    assert status == 200
    assert json.loads(text) == {"challenge": body["challenge"]}
    status, _ = await world.slack.post_event(world.events_url, body, secret="forged")
    assert status == 401


async def test_a_retry_is_not_answered_twice(world: World) -> None:
    slack = world.slack
    hal = slack.add_user("hal")
    channel = channel_id()
    body = slack.event_body(slack.mention(channel, hal, "only once please RETRY-1"))
    assert (await slack.post_event(world.events_url, body))[0] == 200
    await slack.wait_for(lambda: len(slack.bot_messages(channel)) == 1)
    for attempt in (1, 2):
        assert (await slack.post_event(world.events_url, body, retry_num=attempt))[0] == 200
    await slack.settle()
    assert slack.bot_texts(channel) == [DEFAULT_REPLY]
    assert len(world.prompts_containing("RETRY-1")) == 1


# --- Socket Mode ---------------------------------------------------------------------------


async def test_socket_mode_round_trip_and_retry(tmp_path: Path) -> None:
    async with (
        FakeSlack() as slack,
        FakeLLMServer(reply=Script()) as llm,
        running_slack(slack, llm.openai_base_url, tmp_path, socket_mode=True) as (_, adapter),
    ):
        assert adapter.mode == "socket" and adapter.events_port is None
        assert slack.calls_of("apps.connections.open")
        ivy = slack.add_user("ivy")
        channel = channel_id()
        event = slack.mention(channel, ivy, "hello over the socket")
        body = slack.event_body(event)
        envelope = await slack.send_socket_event(body)
        await slack.wait_for(lambda: slack.bot_texts(channel) == [DEFAULT_REPLY])
        assert slack.bot_messages(channel)[0].thread_ts == event["ts"]
        await slack.wait_for(lambda: any(a.get("envelope_id") == envelope for a in slack.acks))

        retry = await slack.send_socket_event(body, retry_attempt=1)
        await slack.wait_for(lambda: any(a.get("envelope_id") == retry for a in slack.acks))
        await slack.settle()
        assert slack.bot_texts(channel) == [DEFAULT_REPLY]
        assert len([r for r in llm.requests if r.path.endswith("/chat/completions")]) == 1


async def test_retries_are_deduplicated_across_processes_sharing_redis(tmp_path: Path) -> None:
    redis_url = require_redis()
    shared = {"redis_url": redis_url, "redis_prefix": f"test-slack-{uuid.uuid4().hex[:8]}:"}
    async with (
        FakeSlack() as slack,
        FakeLLMServer(reply=Script()) as llm,
        running_slack(slack, llm.openai_base_url, tmp_path / "one", **shared) as (app_one, one),
        running_slack(slack, llm.openai_base_url, tmp_path / "two", **shared) as (_, two),
    ):
        assert "redis" in app_one.choices["cache"]
        jo = slack.add_user("jo")
        channel = channel_id()
        body = slack.event_body(slack.mention(channel, jo, "two processes, one answer"))
        status_one, _ = await slack.post_event(f"http://127.0.0.1:{one.events_port}/slack/events", body)
        await slack.wait_for(lambda: len(slack.bot_messages(channel)) == 1)
        url_two = f"http://127.0.0.1:{two.events_port}/slack/events"
        status_two, _ = await slack.post_event(url_two, body, retry_num=1)
        assert (status_one, status_two) == (200, 200)
        await slack.settle()
        assert slack.bot_texts(channel) == [DEFAULT_REPLY]
        await app_one.cache.delete_prefix("")


# --- start-up ---------------------------------------------------------------------------------


async def test_start_up_problems_are_config_errors(tmp_path: Path) -> None:
    async with FakeSlack() as slack, FakeLLMServer() as llm:
        base = {**llm_settings(llm.openai_base_url, tmp_path), **slack_settings(slack)}
        cases = [
            ({"slack_bot_token": "xoxb-wrong"}, "SLACK_BOT_TOKEN"),
            ({"slack_signing_secret": None}, "SLACK_SIGNING_SECRET"),
            ({"slack_app_token": "xapp-wrong"}, "SLACK_APP_TOKEN"),
        ]
        async with build_app(Settings(_env_file=None, **base)) as app:
            for override, variable in cases:
                app.settings = Settings(_env_file=None, **{**base, **override})
                async with contextlib.AsyncExitStack() as stack:
                    with pytest.raises(ConfigError) as caught:
                        await start_slack(app, stack)
                assert caught.value.variable == variable
                assert "wrong" not in str(caught.value)
            app.settings = Settings(
                _env_file=None, **{**base, "slack_api_base_url": "http://127.0.0.1:9/api/"}
            )
            async with contextlib.AsyncExitStack() as stack:
                with pytest.raises(BackendUnavailable) as down:
                    await start_slack(app, stack)
            assert down.value.variable == "SLACK_API_BASE_URL"
            app.settings = Settings(_env_file=None, **llm_settings(llm.openai_base_url, tmp_path))
            async with contextlib.AsyncExitStack() as stack:
                assert await start_slack(app, stack) is None


# --- every platform at once ---------------------------------------------------------------------


async def test_telegram_slack_and_web_share_one_engine_but_not_memories(tmp_path: Path) -> None:
    """One process, one engine: what a Telegram user said never reaches another user on Slack."""
    async with FakeTelegram() as tg, FakeSlack() as slack, FakeLLMServer(reply=Script()) as llm:
        values = {
            **llm_settings(llm.openai_base_url, tmp_path),
            **telegram_settings(tg),
            **slack_settings(slack),
            "web_enabled": True,
            "web_port": 0,
        }
        async with build_app(Settings(_env_file=None, **values)) as app, contextlib.AsyncExitStack() as stack:
            telegram = await start_telegram(app, stack)
            slack_adapter = await start_slack(app, stack)
            assert telegram is not None and slack_adapter is not None and app.web is not None

            # Telegram: Kate tells the bot a secret in a private chat.
            kate = tg.user("Kate")
            private = tg.private_chat(kate)
            tg.send_text(private, kate, "my secret code word is PINEAPPLE-42, remember it")
            await tg.wait_for(lambda: tg.bot_texts(private) == [DEFAULT_REPLY])

            # Web: someone chats on the local page, served by the same engine.
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    app.web.url + "api/chat", json={"message": "hello from the web page", "user_id": "wendy"}
                ) as response,
            ):
                assert response.status == 200
                assert (await response.json())["reply"] == DEFAULT_REPLY
            await app.engine.writer.drain()

            # Slack: Leo asks for "his" secret: Kate's memory must not be in his prompt.
            leo = slack.add_user("leo")
            channel = channel_id()
            body = slack.event_body(slack.mention(channel, leo, "what is my secret code word?"))
            status, _ = await slack.post_event(
                f"http://127.0.0.1:{slack_adapter.events_port}/slack/events", body
            )
            assert status == 200
            await slack.wait_for(lambda: slack.bot_texts(channel) == [DEFAULT_REPLY])

            # Kate asks the same in a Telegram group: her own memory is recalled there.
            group = tg.group_chat("Kate's friends")
            tg.send_text(group, kate, "@whisper_test_bot what is my secret code word?")
            await tg.wait_for(lambda: tg.bot_texts(group) == [DEFAULT_REPLY])

            def prompt_of(platform_text: str) -> str:
                [prompt] = [
                    r.messages
                    for r in llm.requests
                    if r.messages and r.messages[-1]["content"].endswith(platform_text)
                ]
                return "\n".join(m["content"] for m in prompt)

            assert "PINEAPPLE-42" in prompt_of("Kate: what is my secret code word?")
            leo_prompt = prompt_of("Leo: what is my secret code word?")
            assert "PINEAPPLE" not in leo_prompt
            assert "hello from the web page" not in leo_prompt
