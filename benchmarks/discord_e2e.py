"""Discord end to end: a bare discord.py bot vs WhisperEngine, through the same fake gateway.

Both bots are the real discord.py client, connected to the fake Discord of
``tests/fakes/discord_server.py``. The fake Discord, the fake LLM (zero latency) and the
load generator run in a child process, so their CPU does not count against the bot being
measured, which runs alone in this process:

    bare           a discord.Client that answers each mention with a fixed string (one POST)
    adapter        WhisperEngine's Discord adapter in front of a stub engine that answers a
                   fixed string at once: the cost of the Discord layer alone (not the target)
    whisperengine  ``whisperengine run``'s code path (``build_app`` + ``start_discord``):
                   SQLite, embedded Chroma, MiniLM embeddings, memory on, the OpenAI client
                   against the zero-latency fake LLM, typing + streamed reply rendering

Workload: ``--users`` users (50) in ``--channels`` channels send ``--messages`` messages
(2000) in total, each mentioning the bot. ``--llm-latency-s`` makes the fake LLM take that
long before its first token; the bare bot then asks the same fake LLM (the real ``openai``
client, streamed) before it answers, so both bots wait for the same model.
``--scenario busy-channel`` is one busy channel: 50 users, 200 mentions at once, an LLM that
takes 0.3 s per answer. By default it is a closed loop: each user sends
their next message as soon as the bot's reply to the previous one is posted (50 messages in
flight); ``--burst`` sends everything at once. A warm-up round (not measured) comes first.
Latency is from the MESSAGE_CREATE dispatch to the first reply POST (matched through its
``message_reference``). The bot-wide rate limit is off (``RATE_LIMIT_MESSAGES=0``): 40
messages a user a minute would otherwise be refused by design.

    python -m benchmarks.discord_e2e
    python -m benchmarks.discord_e2e --messages 500 --burst --json out.json
    python -m benchmarks.discord_e2e --scenario busy-channel
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.connection
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (``python benchmarks/discord_e2e.py``)
    sys.path.insert(0, str(ROOT))

FIXED_REPLY = "Hello! This is a fixed reply."
LLM_REPLY = "Hello! Nice to hear from you, that sounds lovely. Tell me more about it?"
TARGET_RATIO = 0.4
BUSY_CHANNEL_TARGET_RATIO = 0.5
BUSY_CHANNEL_TARGET_P99_MS = 3000.0

logger = logging.getLogger("benchmarks.discord_e2e")


# --- the child: fake Discord + fake LLM + load generator ------------------------------------------


def _fake_side(
    conn: multiprocessing.connection.Connection, users: int, channels: int, llm_latency_s: float
) -> None:
    asyncio.run(_fake_main(conn, users, channels, llm_latency_s))


async def _fake_main(
    conn: multiprocessing.connection.Connection, n_users: int, n_channels: int, llm_latency_s: float
) -> None:
    from tests.fakes.discord_server import FakeDiscord
    from tests.fakes.llm_server import FakeLLMServer

    loop = asyncio.get_running_loop()
    async with (
        FakeDiscord(record=False) as fake,
        FakeLLMServer(reply=LLM_REPLY, record=False, first_chunk_delay_s=llm_latency_s) as llm,
    ):
        guild = fake.add_guild("Benchmark server")
        channel_ids = [fake.add_channel(guild, f"chat-{i}") for i in range(n_channels)]
        users = [fake.add_user(f"user{i}") for i in range(n_users)]
        for user in users:
            fake.add_member(guild, user)
        conn.send(
            {
                "api": fake.api_base,
                "gateway": fake.gateway_url,
                "token": fake.token,
                "llm": llm.openai_base_url,
            }
        )
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command["op"] == "stop":
                return
            await fake.wait_connected(timeout_s=60)
            result = await _workload(fake, users, channel_ids, command["messages"], burst=command["burst"])
            conn.send(result)


async def _workload(
    fake: Any, users: list[dict[str, Any]], channel_ids: list[str], total: int, *, burst: bool
) -> dict[str, Any]:
    per_user = [total // len(users) + (1 if i < total % len(users) else 0) for i in range(len(users))]
    latencies: list[float] = []
    unanswered = 0
    counter = 0

    async def send(user_index: int) -> str:
        nonlocal counter
        counter += 1
        user = users[user_index]
        channel = channel_ids[user_index % len(channel_ids)]
        text = f"message {counter}: I spent the weekend hiking with my sister near the lake"
        sent = await fake.send_message(channel, user, text, mention_bot=True)
        return str(sent["id"])

    async def closed_loop(user_index: int) -> None:
        for _ in range(per_user[user_index]):
            message_id = await send(user_index)
            at = await fake.wait_first_reply(message_id, timeout_s=120)
            latencies.append(at - fake.dispatched_at[message_id])

    started = time.perf_counter()
    if burst:
        ids = [await send(i) for i, n in enumerate(per_user) for _ in range(n)]
        deadline = time.monotonic() + 300
        for message_id in ids:
            try:
                at = await fake.wait_first_reply(message_id, timeout_s=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                unanswered += 1
                continue
            latencies.append(at - fake.dispatched_at[message_id])
    else:
        await asyncio.gather(*(closed_loop(i) for i in range(len(users))))
    elapsed = time.perf_counter() - started
    return {
        "messages": len(latencies),
        "unanswered": unanswered,
        "elapsed_s": elapsed,
        "latencies_s": latencies,
    }


# --- this process: the bots ---------------------------------------------------------------------


def _point_at(endpoints: dict[str, Any]) -> None:
    import discord
    import yarl

    discord.http.Route.BASE = endpoints["api"]
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(endpoints["gateway"])


@contextlib.asynccontextmanager
async def bare_bot(endpoints: dict[str, Any], *, ask_llm: bool) -> Any:
    """``ask_llm``: stream an answer from the fake LLM first (the real ``openai`` client)."""
    import discord
    import openai

    _point_at(endpoints)
    discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
    llm = openai.AsyncOpenAI(base_url=endpoints["llm"], api_key="benchmark", max_retries=0)

    async def answer(text: str) -> str:
        if not ask_llm:
            return FIXED_REPLY
        stream = await llm.chat.completions.create(
            model="bare", messages=[{"role": "user", "content": text}], stream=True
        )
        parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        return "".join(parts) or FIXED_REPLY

    class BareBot(discord.Client):
        async def on_message(self, message: discord.Message) -> None:
            me = self.user
            if me is None or message.author.id == me.id or me not in message.mentions:
                return
            reply = await answer(message.content)
            await message.channel.send(reply, reference=message, mention_author=False)

    intents = discord.Intents.default()
    intents.message_content = True
    client = BareBot(
        intents=intents, allowed_mentions=discord.AllowedMentions.none(), guild_ready_timeout=0.5
    )
    await client.login(endpoints["token"])
    task = asyncio.create_task(client.connect())
    try:
        yield client
    finally:
        await client.close()
        await llm.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def whisperengine_bot(endpoints: dict[str, Any], data_dir: Path) -> Any:
    from bot.app import build_app
    from bot.platforms import start_discord
    from config.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        llm_backend="openai",
        openai_base_url=endpoints["llm"],
        openai_api_key="benchmark",
        llm_max_retries=0,
        data_dir=data_dir,
        web_enabled=False,
        rate_limit_messages=0,
        memory_use_llm="off",  # the fake LLM's canned answers hold no facts to extract
        discord_token=endpoints["token"],
        discord_api_base_url=endpoints["api"],
        discord_gateway_url=endpoints["gateway"],
    )
    async with build_app(settings) as app, contextlib.AsyncExitStack() as stack:
        adapter = await start_discord(app, stack)
        yield app, adapter


class _StubEngine:
    """Answers at once with a fixed text: isolates the Discord adapter's own cost."""

    def __init__(self, engine: Any) -> None:
        self._engine = engine
        self.cache, self.personas, self.writer = engine.cache, engine.personas, engine.writer
        self.config, self.in_flight = engine.config, 0

    def handle(self, message: Any, *, on_placed: Any = None) -> Any:
        from engine.events import ReplyKind
        from engine.reply import ReplyStream

        if on_placed is not None:
            on_placed()
        return ReplyStream.fixed(FIXED_REPLY, ReplyKind.ANSWER)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _summary(name: str, result: dict[str, Any]) -> dict[str, Any]:
    latencies = [x * 1000 for x in result["latencies_s"]]
    return {
        "bot": name,
        "messages": result["messages"],
        "unanswered": result.get("unanswered", 0),
        "elapsed_s": round(result["elapsed_s"], 3),
        "messages_per_s": round(result["messages"] / result["elapsed_s"], 1),
        "p50_ms": round(_percentile(latencies, 0.50), 2),
        "p99_ms": round(_percentile(latencies, 0.99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2) if latencies else None,
    }


async def _drive(
    conn: multiprocessing.connection.Connection, messages: int, *, burst: bool
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    conn.send({"op": "run", "messages": messages, "burst": burst})
    result: dict[str, Any] = await loop.run_in_executor(None, conn.recv)
    return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    fake = context.Process(
        target=_fake_side, args=(child, args.users, args.channels, args.llm_latency_s), daemon=True
    )
    fake.start()
    loop = asyncio.get_running_loop()
    endpoints: dict[str, Any] = await loop.run_in_executor(None, parent.recv)
    results: dict[str, Any] = {}
    try:
        async with bare_bot(endpoints, ask_llm=args.llm_latency_s > 0):
            await _drive(parent, args.warmup, burst=args.burst)
            results["bare"] = _summary(
                "bare discord.py", await _drive(parent, args.messages, burst=args.burst)
            )
        with tempfile.TemporaryDirectory(prefix="we-discord-bench-") as tmp:
            async with whisperengine_bot(endpoints, Path(tmp)) as (app, adapter):
                # The adapter alone, in front of an engine stub that answers at once.
                real_engine, adapter.engine = adapter.engine, _StubEngine(app.engine)
                await _drive(parent, args.warmup, burst=args.burst)
                measured = await _drive(parent, args.messages, burst=args.burst)
                results["adapter"] = _summary("adapter + stub", measured)
                adapter.engine = real_engine
                await _drive(parent, args.warmup, burst=args.burst)
                await app.engine.writer.drain()
                measured = await _drive(parent, args.messages, burst=args.burst)
                results["whisperengine"] = _summary("WhisperEngine", measured)
                drained = time.perf_counter()
                await app.engine.writer.drain()
                results["whisperengine"]["memory_drain_after_s"] = round(time.perf_counter() - drained, 3)
                results["whisperengine"]["memories_written"] = app.engine.writer.written
    finally:
        parent.send({"op": "stop"})
        fake.join(timeout=10)
    ratio = results["whisperengine"]["messages_per_s"] / results["bare"]["messages_per_s"]
    results["ratio"] = round(ratio, 3)
    results["adapter_only_ratio"] = round(
        results["adapter"]["messages_per_s"] / results["bare"]["messages_per_s"], 3
    )
    results["target_ratio"] = BUSY_CHANNEL_TARGET_RATIO if args.scenario == "busy-channel" else TARGET_RATIO
    results["workload"] = {
        "messages": args.messages,
        "users": args.users,
        "channels": args.channels,
        "mode": "burst" if args.burst else "closed loop (one message in flight per user)",
        "warmup": args.warmup,
        "llm_latency_s": args.llm_latency_s,
    }
    results["machine"] = {"python": platform.python_version(), "cpus": multiprocessing.cpu_count()}
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--channels", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--burst", action="store_true", help="send every message at once")
    parser.add_argument(
        "--llm-latency-s", type=float, default=0.0, help="the fake LLM's time to first token (0: none)"
    )
    parser.add_argument(
        "--scenario",
        choices=("busy-channel",),
        help="busy-channel: 50 users, 200 mentions at once in one channel, LLM 0.3 s per answer",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if args.scenario == "busy-channel":
        args.users, args.channels, args.messages, args.burst = 50, 1, 200, True
        args.warmup, args.llm_latency_s = 50, 0.3
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    results = asyncio.run(run(args))
    workload = results["workload"]
    print(
        f"{workload['messages']} messages from {workload['users']} users in {workload['channels']} channels, "
        f"{workload['mode']}, LLM latency {workload['llm_latency_s']} s"
    )
    print(f"{'bot':<18}{'answered':>10}{'msgs/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for key in ("bare", "adapter", "whisperengine"):
        r = results[key]
        answered = f"{r['messages']}/{r['messages'] + r['unanswered']}"
        print(
            f"{r['bot']:<18}{answered:>10}{r['messages_per_s']:>10.1f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
        )
    print(
        f"ratio adapter + stub engine / bare: {results['adapter_only_ratio']:.3f} (the Discord layer alone)"
    )
    target = results["target_ratio"]
    verdict = "meets" if results["ratio"] >= target else "below"
    print(f"ratio WhisperEngine / bare: {results['ratio']:.3f} ({verdict} the {target} target)")
    if args.scenario == "busy-channel":
        p99 = results["whisperengine"]["p99_ms"]
        verdict = "meets" if p99 <= BUSY_CHANNEL_TARGET_P99_MS else "above"
        target_ms = BUSY_CHANNEL_TARGET_P99_MS
        print(f"WhisperEngine p99 first reply: {p99:.0f} ms ({verdict} the {target_ms:.0f} ms target)")
    we = results["whisperengine"]
    drain = we["memory_drain_after_s"]
    print(f"memory writer: {we['memories_written']} turns written; drain after the run {drain}s")
    print(f"peak RSS of this process (the bots): {results['peak_rss_mib']} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
