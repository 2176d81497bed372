"""Load: many simulated Discord users against ``whisperengine run`` on PostgreSQL, Redis and Chroma.

The bot runs as it does in production: ``whisperengine run`` in a process of its own (or
``--processes`` of them, each owning its share of ``DISCORD_SHARD_COUNT`` shards), on a fresh
PostgreSQL database, the machine's Redis (a key prefix of its own, removed afterwards) and a
Chroma server started for the run, with MiniLM embeddings and memory on, voice off. The fake
Discord gateway, a fake LLM with realistic latency (``--ttft-ms`` to the first token,
``--llm-ms`` for the whole reply, streamed) and the simulated users run in a child process, so
their CPU is not the bot's.

Workload: ``--users`` users (500), ``--users-per-channel`` of them sharing each text channel
(the channels spread over ``--guilds`` servers); each user, in a loop, posts a message (in their
DM with the bot with probability ``--dm-share``, else in their channel, mentioning the bot),
waits for the first reply, then thinks for an exponentially distributed ``--think-s`` seconds.
Users start spread over one think time. The first ``--warmup`` seconds are not measured; then
messages are sent for ``--duration`` seconds; after that, replies still owed are awaited for at
most ``--grace`` seconds. The bot-wide rate limit is off (a user here writes more than 10
messages a minute).

Reported: messages sent, replies and throughput (replies per second of the measured window),
time to first reply (the user's MESSAGE_CREATE to the bot's first message answering it) p50/p99,
errors (apologies, no reply within a minute, ERROR lines in the bot's log), dropped messages
(never answered; target 0) and duplicates (answered twice), and the peak RSS of each bot process.
Every reply names the message it answers (the fake LLM writes ``Answer to #n.``), so replies
are counted exactly, DMs included.

    python -m benchmarks.load
    python -m benchmarks.load --duration 30 --users 100 --processes 2 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (``python benchmarks/load.py``)
    sys.path.insert(0, str(ROOT))

FILLER = (
    "That sounds like a lovely day. I remember you mentioned the lake before; swimming there "
    "with your sister must have been a real treat. What else did the two of you get up to?"
)
TAG = re.compile(r"#(\d+)\b")
ANSWER = re.compile(r"Answer to #(\d+)\.")
APOLOGY_START = "Sorry, I couldn't"
REPLY_TIMEOUT_S = 60.0
CHUNK_CHARS = 12

logger = logging.getLogger("benchmarks.load")


def fake_reply(messages: list[dict[str, Any]]) -> str:
    """Names the message it answers, then about 200 characters of text."""
    found = TAG.findall(str(messages[-1]["content"])) if messages else []
    return f"Answer to #{found[-1] if found else '?'}. {FILLER}"


# --- the child: fake Discord + fake LLM + the users ------------------------------------------------


def _load_side(conn: multiprocessing.connection.Connection, config: dict[str, Any]) -> None:
    asyncio.run(_load_main(conn, config))


async def _load_main(conn: multiprocessing.connection.Connection, config: dict[str, Any]) -> None:
    from tests.fakes.discord_server import FakeDiscord
    from tests.fakes.llm_server import FakeLLMServer

    loop = asyncio.get_running_loop()
    chunks = max(1, math.ceil(len(fake_reply([{"content": "#1000"}])) / CHUNK_CHARS))
    streaming_s = max(config["llm_ms"] - config["ttft_ms"], 0) / 1000
    async with (
        FakeDiscord(record=False) as fake,
        FakeLLMServer(
            reply=fake_reply,
            chunk_size=CHUNK_CHARS,
            delay_s=streaming_s / chunks,
            first_chunk_delay_s=config["ttft_ms"] / 1000,
            record=False,
        ) as llm,
    ):
        world = _build_world(fake, config)
        conn.send(
            {
                "fake": {"token": fake.token, "api_base": fake.api_base, "gateway_url": fake.gateway_url},
                "llm": llm.openai_base_url,
                "guilds_per_shard": world["guilds_per_shard"],
            }
        )
        command = await loop.run_in_executor(None, conn.recv)
        if command["op"] != "run":
            return
        await fake.wait_connected(command["shards"], timeout_s=120)
        result = await _users(fake, world, config)
        conn.send(result)
        await loop.run_in_executor(None, conn.recv)  # the bots are stopped: every reply is complete
        conn.send(_count_replies(fake, result["numbers"]))


def _build_world(fake: Any, config: dict[str, Any]) -> dict[str, Any]:
    n_users = config["users"]
    n_channels = max(1, math.ceil(n_users / config["users_per_channel"]))
    guilds = _guilds_on_every_shard(fake, min(config["guilds"], n_channels), config["processes"])
    channels = [fake.add_channel(guilds[i % len(guilds)], f"chat-{i}") for i in range(n_channels)]
    users = [fake.add_user(f"user{i}") for i in range(n_users)]
    homes = []
    for i, user in enumerate(users):
        channel = channels[i % n_channels]
        guild = fake.guild_of(channel)
        if user["id"] not in guild.members:
            fake.add_member(guild, user)
        homes.append(channel)
    shards = config["processes"]
    per_shard = Counter((int(g.id) >> 22) % shards for g in guilds)
    return {
        "users": users,
        "homes": homes,
        "dms": [fake.dm_channel(user) for user in users],
        "channels": n_channels,
        "guilds": len(guilds),
        "guilds_per_shard": [per_shard.get(s, 0) for s in range(shards)],
    }


def _guilds_on_every_shard(fake: Any, n: int, shards: int) -> list[Any]:
    """``n`` guilds spread evenly over the shards (a guild's shard is ``(id >> 22) % shards``)."""
    wanted = [n // shards + (1 if s < n % shards else 0) for s in range(shards)]
    guilds: list[Any] = []
    while len(guilds) < n:
        guild = fake.add_guild(f"Load server {len(guilds)}")
        shard = (int(guild.id) >> 22) % shards
        if wanted[shard] > 0:
            wanted[shard] -= 1
            guilds.append(guild)
        else:
            del fake.guilds[guild.id]
    return guilds


async def _users(fake: Any, world: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(config["seed"])
    loop = asyncio.get_running_loop()
    began = loop.time()
    measure_from = began + config["warmup"]
    stop_sending = measure_from + config["duration"]
    counter = 0
    sent: dict[int, dict[str, Any]] = {}  # n -> {"id", "at", "measured"}
    no_reply_in_time = 0
    send_errors = 0

    async def user_loop(index: int) -> None:
        nonlocal counter, no_reply_in_time, send_errors
        user = world["users"][index]
        await asyncio.sleep(rng.uniform(0, config["think_s"]))
        while loop.time() < stop_sending:
            counter += 1
            n = counter
            in_dm = rng.random() < config["dm_share"]
            channel = world["dms"][index] if in_dm else world["homes"][index]
            text = f"message #{n}: I went to the lake with my sister and we swam until the sun went down"
            try:
                message = await fake.send_message(channel, user, text, mention_bot=not in_dm)
            except ConnectionError:
                send_errors += 1
                continue
            now = loop.time()
            sent[n] = {"id": message["id"], "measured": measure_from <= now < stop_sending}
            try:
                await fake.wait_first_reply(message["id"], timeout_s=REPLY_TIMEOUT_S)
            except TimeoutError:
                no_reply_in_time += 1
            await asyncio.sleep(rng.expovariate(1 / config["think_s"]) if config["think_s"] > 0 else 0)

    await asyncio.gather(*(user_loop(i) for i in range(len(world["users"]))))
    # replies still owed (a user stops waiting after a timeout): wait for them a little longer
    owed = [v["id"] for v in sent.values() if v["id"] not in fake.first_reply_at]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(config["grace"]):
            for message_id in owed:
                await fake.wait_first_reply(message_id, timeout_s=config["grace"])
    latencies = [
        (fake.first_reply_at[v["id"]] - fake.dispatched_at[v["id"]]) * 1000
        for v in sent.values()
        if v["measured"] and v["id"] in fake.first_reply_at
    ]
    return {
        "sent": len(sent),
        "measured_sent": sum(1 for v in sent.values() if v["measured"]),
        "measured_replies": len(latencies),
        "latencies_ms": latencies,
        "no_reply_in_time": no_reply_in_time,
        "send_errors": send_errors,
        "channels": world["channels"],
        "guilds": world["guilds"],
        "numbers": sorted(sent),
    }


def _count_replies(fake: Any, numbers: list[int]) -> dict[str, int]:
    """Once the bots are stopped (every reply complete): answered, dropped, duplicated, apologies."""
    answers: Counter[int] = Counter()
    apologies = 0
    for message in fake.messages.values():
        if message["author"]["id"] != fake.bot_id:
            continue
        found = ANSWER.match(message["content"])
        if found:
            answers[int(found.group(1))] += 1
        elif message["content"].startswith(APOLOGY_START):
            apologies += 1
    return {
        "answered": sum(1 for n in numbers if answers[n] > 0),
        "dropped": sum(1 for n in numbers if answers[n] == 0),
        "duplicates": sum(count - 1 for count in answers.values() if count > 1),
        "apologies": apologies,
    }


# --- this process: the services and the bots -----------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def _uptime() -> str:
    try:
        return subprocess.run(
            ["uptime"], capture_output=True, text=True, check=False, timeout=5
        ).stdout.strip()
    except OSError:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _require(service: str, host: str, port: int) -> None:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1.0):
            return
    except OSError:
        raise SystemExit(
            f"{service} is not reachable on {host}:{port}; the load benchmark needs it"
        ) from None


async def _clear_redis(url: str, prefix: str) -> None:
    from storage.cache.redis import RedisCache

    cache = RedisCache(url, prefix=prefix)
    await cache.start()
    try:
        await cache.delete_prefix("")
    finally:
        await cache.aclose()


async def _watch_rss(bots: list[Any], peaks: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        for i, bot in enumerate(bots):
            rss = bot.rss_mb()
            if rss is not None:
                peaks[i] = max(peaks[i], rss[1])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tests.conftest import REDIS_URL, fresh_postgres_database
    from tests.fakes.bot_process import BotProcess, bot_environment
    from tests.fakes.chroma_server import ChromaServer

    _require("PostgreSQL", "127.0.0.1", 5432)
    _require("Redis", "127.0.0.1", 6379)
    config = {
        "users": args.users,
        "users_per_channel": args.users_per_channel,
        "guilds": args.guilds,
        "dm_share": args.dm_share,
        "think_s": args.think_s,
        "warmup": args.warmup,
        "duration": args.duration,
        "grace": args.grace,
        "ttft_ms": args.ttft_ms,
        "llm_ms": args.llm_ms,
        "processes": args.processes,
        "seed": args.seed,
    }
    load_at_start = _uptime()
    loop = asyncio.get_running_loop()
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    load = context.Process(target=_load_side, args=(child, config), daemon=True)
    load.start()
    endpoints: dict[str, Any] = await loop.run_in_executor(None, parent.recv)
    prefix = f"we-load-{uuid.uuid4().hex[:12]}:"
    results: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="we-load-") as tmp,
        fresh_postgres_database("we_load") as database_url,
        ChromaServer(Path(tmp) / "chroma") as chroma,
    ):

        class _Fake:  # what bot_environment reads of a FakeDiscord
            token = endpoints["fake"]["token"]
            api_base = endpoints["fake"]["api_base"]
            gateway_url = endpoints["fake"]["gateway_url"]

        shared = {
            "DATABASE_URL": database_url,
            "REDIS_URL": REDIS_URL,
            "REDIS_PREFIX": prefix,
            "CHROMA_URL": chroma.url,
            "RATE_LIMIT_MESSAGES": "0",
            "MEMORY_USE_LLM": "off",  # the fake LLM's canned answers hold no facts to extract
            "DISCORD_SYNC_COMMANDS": "false",
            "LOG_LEVEL": "WARNING",
        }
        if args.processes > 1:
            shared["DISCORD_SHARD_COUNT"] = str(args.processes)
        log_dir = args.log_dir or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        bots = [
            BotProcess(
                bot_environment(
                    Path(tmp) / f"bot-{i}",
                    discord=_Fake,
                    llm_url=endpoints["llm"],
                    **shared,
                    **({"DISCORD_SHARD_IDS": str(i)} if args.processes > 1 else {}),
                ),
                log_dir / f"bot-{i}.log",
            )
            for i in range(args.processes)
        ]
        peaks = [0.0] * len(bots)
        stop_watch = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        started = time.perf_counter()
        try:
            for bot in bots:
                bot.start()
            parent.send({"op": "run", "shards": args.processes})
            # the child waits for the connections; this side watches that the bots stay up
            while not parent.poll():
                for bot in bots:
                    if not bot.running:
                        raise RuntimeError(f"a bot exited with {bot.returncode}:\n{bot.log_text()[-4000:]}")
                if watcher is None and all(bot.running for bot in bots):
                    watcher = asyncio.create_task(_watch_rss(bots, peaks, stop_watch))
                await asyncio.sleep(0.2)
            load_result: dict[str, Any] = parent.recv()
            results["load_at_end"] = _uptime()
        finally:
            stop_watch.set()
            if watcher is not None:
                await watcher
            stopping = time.perf_counter()
            codes = [bot.stop(timeout_s=120) for bot in bots]
            stop_s = time.perf_counter() - stopping
            await _clear_redis(REDIS_URL, prefix)
            if "load_at_end" not in results:  # failed before the users were done
                load.terminate()
                load.join(timeout=10)
        parent.send({"op": "count"})
        counts: dict[str, int] = await loop.run_in_executor(None, parent.recv)
        load.join(timeout=30)
        errors_in_logs = [line for bot in bots for line in bot.error_lines()]
        results["bots"] = [
            {"exit_code": code, "peak_rss_mb": round(max(peak, bot.peak_rss_mb or 0.0), 1)}
            for bot, code, peak in zip(bots, codes, peaks, strict=True)
        ]
        results["log_errors"] = len(errors_in_logs)
        results["log_error_samples"] = errors_in_logs[:5]
        results["stop_s"] = round(stop_s, 2)
        results["total_s"] = round(time.perf_counter() - started, 1)
    latencies = load_result.pop("latencies_ms")
    del load_result["numbers"]
    results.update(load_result)
    results.update(counts)
    results["replies_per_s"] = round(load_result["measured_replies"] / args.duration, 2)
    results["sent_per_s"] = round(load_result["measured_sent"] / args.duration, 2)
    results["ttfr_ms"] = {
        "n": len(latencies),
        "p50": round(_percentile(latencies, 0.50), 1),
        "p99": round(_percentile(latencies, 0.99), 1),
        "max": round(max(latencies), 1) if latencies else float("nan"),
    }
    results["errors"] = (
        counts["apologies"]
        + load_result["no_reply_in_time"]
        + load_result["send_errors"]
        + results["log_errors"]
    )
    results["config"] = config
    results["guilds_per_shard"] = endpoints["guilds_per_shard"]
    results["load_at_start"] = load_at_start
    results["machine"] = {"python": platform.python_version(), "cpus": multiprocessing.cpu_count()}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="measured seconds of sending")
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of load before measuring")
    parser.add_argument("--grace", type=float, default=30.0, help="longest wait for owed replies at the end")
    parser.add_argument("--think-s", type=float, default=5.0, help="mean pause of a user between messages")
    parser.add_argument("--users-per-channel", type=int, default=5)
    parser.add_argument("--guilds", type=int, default=10)
    parser.add_argument("--dm-share", type=float, default=0.3, help="share of messages sent as DMs")
    parser.add_argument("--ttft-ms", type=float, default=200.0, help="fake LLM: time to the first token")
    parser.add_argument("--llm-ms", type=float, default=500.0, help="fake LLM: time for the whole reply")
    parser.add_argument("--processes", type=int, default=1, help="bot processes, one shard each")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--log-dir", type=Path, help="keep the bots' logs here (default: dropped)")
    args = parser.parse_args(argv)
    if args.users < 1 or args.duration <= 0 or args.processes < 1:
        parser.error("--users, --duration and --processes must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    r = asyncio.run(run(args))
    c = r["config"]
    print(
        f"load: {c['users']} users in {r['channels']} channels of {r['guilds']} servers "
        f"({c['dm_share']:.0%} of messages as DMs), think {c['think_s']} s; "
        f"{c['duration']:g} s measured after {c['warmup']:g} s warm-up; "
        f"{c['processes']} bot process(es), servers per shard {r['guilds_per_shard']}"
    )
    print(f"fake LLM: {c['ttft_ms']:g} ms to first token, {c['llm_ms']:g} ms per reply, streamed")
    print(f"sent: {r['measured_sent']} messages measured ({r['sent_per_s']:.2f}/s), {r['sent']} in all")
    print(f"throughput: {r['replies_per_s']:.2f} replies/s ({r['measured_replies']} replies in the window)")
    t = r["ttfr_ms"]
    print(f"time to first reply: p50 {t['p50']:.1f} ms, p99 {t['p99']:.1f} ms, max {t['max']:.1f} ms")
    print(
        f"errors: {r['errors']} (apologies {r['apologies']}, no reply within {REPLY_TIMEOUT_S:g} s "
        f"{r['no_reply_in_time']}, send failures {r['send_errors']}, bot log errors {r['log_errors']})"
    )
    print(f"dropped: {r['dropped']} (target 0); duplicates: {r['duplicates']}")
    rss = ", ".join(f"{b['peak_rss_mb']:.1f}" for b in r["bots"])
    codes = [b["exit_code"] for b in r["bots"]]
    print(f"peak RSS of the bot: {rss} MiB; stopped in {r['stop_s']:.2f} s (exit codes {codes})")
    print(f"uptime at start: {r['load_at_start']}")
    print(f"uptime at end: {r['load_at_end']}")
    for line in r["log_error_samples"]:
        print(f"  bot log: {line}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
