"""Keyword search latency and ranking at 100k memories of one user, on SQLite and PostgreSQL.

    python -m benchmarks.keyword
    python -m benchmarks.keyword --memories 10000 --queries 200 --backends postgresql --json kw.json

Data: one user's memories, generated (seeded) the way the memory writer stores them: the text
``"Name: sentence"``, the search context ``"8 May 2024\\nBot: sentence"`` (the date alone for a
third of them, as in channels). Sentences mix function words with words drawn from a fixed
vocabulary with a Zipf distribution (exponent 1, Zipf-Mandelbrot offset 2.7): about 300 everyday
words at the head, then the names, then 20,000 generated words as the long tail of rare ones.
The memories go through the real store (``add_memories``, batches of 1,000), so PostgreSQL's
term counts are kept by its triggers as they are in use.

Queries, three sets drawn from the same vocabulary (seeded, never tuned on the figures):
``messages``, generated like the memories (what recall asks with a user's message); ``common``,
two to four of the 25 commonest words only ("work today coffee"); ``rare``, a tail word with
two common ones. Each query is run once per method, methods interleaved query by query, after a
warm-up, with ``k`` = 50 (what recall asks for with top_k 5).

Methods: the store's ``keyword_search`` with its defaults (SQLite: FTS5 bm25 with words in more
than 2,000 memories left out; PostgreSQL: BM25 weights from ``memory_terms`` over the memories of
the rarest word, in at most 2,000, and of the next rarest while they stay within 500), the same
with no word left out (``every match``), and on PostgreSQL the previous query, ``ts_rank_cd`` over
every match, on the same data (``old``).
Ranking agreement: the share of the top 10 that each method has in common with BM25 over every
match (FTS5 ``bm25()`` without leaving words out), averaged over the queries that find anything.
Writes: 32-memory ``add_memories`` batches after the searches; on PostgreSQL every other batch
with the term count triggers disabled and the GIN pending list back on (as before migration 0006).

PostgreSQL runs on 127.0.0.1:5432 (user ``postgres``) in a database created for the run and
dropped after it; it is skipped, with the reason, when the server is not reachable.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import platform
import random
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (``python benchmarks/keyword.py``)
    sys.path.insert(0, str(ROOT))

import sqlalchemy as sa  # noqa: E402

from engine.memory import memory_text, search_context  # noqa: E402
from engine.ports import MemoryRecord  # noqa: E402
from storage.sql.store import SQLConversationStore, keyword_terms, tsquery  # noqa: E402

PG_HOST, PG_PORT = "127.0.0.1", 5432
USER = "bench:100000000000000001"
FILL_BATCH = 1000
WRITE_BATCH = 32
WARMUP = 30
TOP = 10
EVERY_MATCH = 10**9  # keyword_max_docs and keyword_max_candidates that leave no word out


def _words(text: str) -> list[str]:
    return text.split()


FUNCTION_WORDS = _words(
    "i the to and a my was it we in of that for is with me on so but at just have had she he they about "
    "really like this been going got then when what all be do not you her his our up out there now one if "
    "some from can would could an them will did more too very"
)
HEAD_WORDS = _words(
    "work today coffee sister friend dog cat walk lake weekend house mum dad brother job boss dinner lunch "
    "breakfast morning night tired happy sad movie book music song concert park beach school class teacher "
    "exam birthday party cake gift trip flight train car bike run gym yoga garden flowers rain sun snow cold "
    "summer winter holiday family kids baby wedding husband wife partner doctor hospital sick better week "
    "month year plan idea project meeting email phone call game team football match paint painting drawing "
    "photo camera city town village street shop market money rent flat apartment kitchen cook recipe bread "
    "pasta pizza tea wine beer shopping dress shoes hair sleep dream hike mountain river forest camping tent "
    "fire stars moon sky ocean swim pool boat fish bird horse neighbour guitar piano violin drums band "
    "festival museum art gallery theatre play dance salsa pottery knitting sewing reading writing poem novel "
    "story news politics church volunteer charity shelter support group therapy anxiety stress calm "
    "meditation journal goal habit diet vegetables fruit apple banana chocolate cookies nurse office "
    "interview promotion salary laptop computer code bug deadline presentation colleague manager client "
    "invoice bank loan mortgage insurance tax passport visa airport hotel beach island bus taxi ferry "
    "ticket queue weather storm wind fog heat spring autumn"
)
NAMES = _words(
    "Alice Melanie Caroline Jon Gina Tim John Maria Joanna Nate Audrey Andrew James Deborah Evan Sam "
    "Calvin Dave Jolene Tom Priya Kenji Amara Lukas Sofia Omar Ines Mateo Hana Yusuf"
)
SYLLABLES = _words(
    "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro "
    "ru sa se si so su ta te ti to tu va ve vi vo zu zo"
)
TAIL_WORDS = 20_000
T0 = datetime(2023, 1, 1, tzinfo=UTC)

# ts_rank_cd over every match: the PostgreSQL keyword search before migration 0006.
_COLUMNS = ", ".join(f"m.{f.name}" for f in fields(MemoryRecord))
OLD_POSTGRES_QUERY = sa.text(
    f"SELECT {_COLUMNS}, ts_rank_cd(m.text_search, q) AS score "
    "FROM memories AS m, to_tsquery('english'::regconfig, :query) AS q "
    "WHERE m.user_key = :user_key AND m.superseded_by IS NULL AND m.text_search @@ q "
    "ORDER BY score DESC, m.seq DESC LIMIT :k"
)


# --- data ------------------------------------------------------------------------------


class Vocabulary:
    """The fixed vocabulary, ranked: head words, names, then generated tail words."""

    def __init__(self, rng: random.Random) -> None:
        words = list(dict.fromkeys(HEAD_WORDS)) + NAMES
        seen = {w.lower() for w in words} | set(FUNCTION_WORDS)
        while len(words) < len(HEAD_WORDS) + len(NAMES) + TAIL_WORDS:
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.words = words
        self._cumulative = list(itertools.accumulate(1.0 / (rank + 2.7) for rank in range(1, len(words) + 1)))
        self._function = list(
            itertools.accumulate(1.0 / (rank + 1.0) for rank in range(1, len(FUNCTION_WORDS) + 1))
        )

    def word(self, rng: random.Random) -> str:
        return self.words[bisect.bisect(self._cumulative, rng.random() * self._cumulative[-1])]

    def function_word(self, rng: random.Random) -> str:
        return FUNCTION_WORDS[bisect.bisect(self._function, rng.random() * self._function[-1])]

    def sentence(self, rng: random.Random, shortest: int, longest: int) -> str:
        count = rng.randint(shortest, longest)
        return " ".join(
            self.function_word(rng) if rng.random() < 0.5 else self.word(rng) for _ in range(count)
        )


def memories(vocabulary: Vocabulary, count: int, rng: random.Random) -> list[MemoryRecord]:
    records = []
    for i in range(count):
        said_at = T0 + timedelta(minutes=rng.randint(0, 2 * 365 * 24 * 60))
        follows = f"Bot: {vocabulary.sentence(rng, 4, 12)}" if rng.random() < 2 / 3 else ""
        records.append(
            MemoryRecord(
                id=uuid.UUID(int=rng.getrandbits(128)).hex,
                user_key=USER,
                text=memory_text(rng.choice(NAMES), vocabulary.sentence(rng, 6, 18)),
                created_at=said_at,
                platform="bench",
                channel_id="c1",
                source_message_ids=(f"m{i}",),
                search_context=search_context(said_at, follows),
            )
        )
    return records


def query_sets(vocabulary: Vocabulary, count: int, rng: random.Random) -> dict[str, list[str]]:
    head = vocabulary.words[:25]
    tail = vocabulary.words[len(HEAD_WORDS) + len(NAMES) :][:2000]  # the commoner part of the tail
    return {
        "messages": [vocabulary.sentence(rng, 4, 14) + "?" for _ in range(count)],
        "common": [" ".join(rng.sample(head, rng.randint(2, 4))) for _ in range(count)],
        "rare": [f"{rng.choice(tail)} {' '.join(rng.sample(head, 2))}" for _ in range(count)],
    }


# --- measuring -------------------------------------------------------------------------

Search = Callable[[str], Awaitable[list[str]]]


@dataclass(slots=True)
class Method:
    name: str
    search: Search
    times_ms: dict[str, list[float]] = field(default_factory=dict)
    found: dict[str, list[list[str]]] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 0.50), 2),
        "p99_ms": round(percentile(values, 0.99), 2),
        "max_ms": round(max(values), 2),
    }


async def measure(methods: Sequence[Method], queries: dict[str, list[str]]) -> None:
    for warm in list(itertools.chain(*queries.values()))[:WARMUP]:
        for method in methods:
            await method.search(warm)
    for set_name, texts in queries.items():
        for i, text in enumerate(texts):
            order = methods if i % 2 == 0 else list(reversed(methods))  # neither always goes first
            for method in order:
                start = time.perf_counter()
                found = await method.search(text)
                method.times_ms.setdefault(set_name, []).append((time.perf_counter() - start) * 1000)
                method.found.setdefault(set_name, []).append(found)


def agreement(method: Method, reference: Method) -> dict[str, float | None]:
    """Mean share of the reference's top 10 in the method's top 10, over queries it answers."""
    shares: dict[str, float | None] = {}
    for set_name, reference_found in reference.found.items():
        overlaps = [
            len(set(mine[:TOP]) & set(best[:TOP])) / min(TOP, len(best))
            for mine, best in zip(method.found[set_name], reference_found, strict=True)
            if best
        ]
        shares[set_name] = round(sum(overlaps) / len(overlaps), 3) if overlaps else None
    return shares


def answered(method: Method) -> dict[str, float]:
    return {name: round(sum(1 for f in found if f) / len(found), 3) for name, found in method.found.items()}


async def store_search(store: SQLConversationStore, k: int) -> Search:
    async def search(text: str) -> list[str]:
        return [record.id for record, _ in await store.keyword_search(USER, text, k)]

    return search


def old_postgres_search(store: SQLConversationStore, k: int) -> Search:
    engine = store.engine.execution_options(isolation_level="AUTOCOMMIT")  # as the store's reads

    async def search(text: str) -> list[str]:
        terms = keyword_terms(text)
        if not terms:
            return []
        async with engine.connect() as conn:
            rows = await conn.execute(OLD_POSTGRES_QUERY, {"user_key": USER, "query": tsquery(terms), "k": k})
            return [row.id for row in rows]

    return search


async def fill(store: SQLConversationStore, records: Sequence[MemoryRecord]) -> dict[str, float]:
    start = time.perf_counter()
    for begin in range(0, len(records), FILL_BATCH):
        await store.add_memories(records[begin : begin + FILL_BATCH])
    seconds = time.perf_counter() - start
    # what autovacuum does in a steady state: statistics for the planner, dead row versions gone
    statement = "VACUUM ANALYZE" if store.kind == "postgresql" else "ANALYZE"
    async with store.engine.execution_options(isolation_level="AUTOCOMMIT").connect() as conn:
        await conn.exec_driver_sql(statement)
    return {"seconds": round(seconds, 1), "memories_per_s": round(len(records) / seconds)}


# PostgreSQL schema states to write under, set before each batch: as it is, and as before 0006.
WRITE_SCHEMAS = {
    "current": (
        "ALTER TABLE memories ENABLE TRIGGER USER",
        "ALTER INDEX ix_memories_text_search SET (fastupdate = off)",
    ),
    "before 0006": (
        "ALTER TABLE memories DISABLE TRIGGER USER",
        "ALTER INDEX ix_memories_text_search SET (fastupdate = on)",
    ),
}


async def write_batches(store: SQLConversationStore, records: Sequence[MemoryRecord]) -> dict[str, Any]:
    """32-memory batches; on PostgreSQL alternately under each of ``WRITE_SCHEMAS``."""
    schemas = WRITE_SCHEMAS if store.kind == "postgresql" else {"current": ()}
    times: dict[str, list[float]] = {name: [] for name in schemas}
    for i, begin in enumerate(range(0, len(records), WRITE_BATCH)):
        name = list(schemas)[i % len(schemas)]
        if len(schemas) > 1:
            async with store.engine.begin() as conn:
                for statement in schemas[name]:
                    await conn.exec_driver_sql(statement)
        start = time.perf_counter()
        await store.add_memories(records[begin : begin + WRITE_BATCH])
        times[name].append((time.perf_counter() - start) * 1000)
    return {name: summary(values) for name, values in times.items()}


async def run_backend(
    url: str, data: list[MemoryRecord], extra: list[MemoryRecord], config: Config
) -> dict[str, Any]:
    store = SQLConversationStore(url)
    every_match = SQLConversationStore(url, keyword_max_docs=EVERY_MATCH, keyword_max_candidates=EVERY_MATCH)
    await store.start()
    await every_match.start()
    try:
        filled = await fill(store, data)
        methods = [Method("keyword_search", await store_search(store, config.k))]
        if store.kind == "postgresql":
            methods.append(Method("old", old_postgres_search(store, config.k)))
        methods.append(Method("every match", await store_search(every_match, config.k)))
        rng = random.Random(config.seed + 1)
        await measure(methods, query_sets(config.vocabulary, config.queries, rng))
        writes = await write_batches(store, extra)  # last: it leaves the term counts behind
        return {
            "fill": filled,
            "search": {m.name: {s: summary(t) for s, t in m.times_ms.items()} for m in methods},
            "answered": {m.name: answered(m) for m in methods},
            "writes_32": writes,
            "methods": methods,  # for the agreement, left out of the JSON
        }
    finally:
        await every_match.aclose()
        await store.aclose()


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    import asyncpg

    name = f"we_bench_keyword_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        admin = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user="postgres", database="postgres")
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


# --- the run ---------------------------------------------------------------------------


@dataclass(slots=True)
class Config:
    memories: int = 100_000
    queries: int = 300
    k: int = 50
    seed: int = 20261203
    backends: list[str] = field(default_factory=lambda: ["sqlite", "postgresql"])
    vocabulary: Vocabulary = field(init=False)

    def __post_init__(self) -> None:
        self.vocabulary = Vocabulary(random.Random(self.seed))


async def run(config: Config) -> dict[str, Any]:
    rng = random.Random(config.seed)
    data = memories(config.vocabulary, config.memories, rng)
    extra = memories(config.vocabulary, 100 * WRITE_BATCH, rng)
    results: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_at_start": os.getloadavg(),
        },
        "config": {
            "memories": config.memories,
            "queries": config.queries,
            "k": config.k,
            "seed": config.seed,
        },
    }
    for backend in config.backends:
        print(f"{backend}: filling {config.memories} memories ...", file=sys.stderr)
        if backend == "sqlite":
            directory = Path(tempfile.mkdtemp(prefix="we-bench-keyword-"))
            try:
                results[backend] = await run_backend(f"sqlite:///{directory}/kw.db", data, extra, config)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
        elif not reachable(PG_HOST, PG_PORT):
            results[backend] = {"skipped": f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT}"}
        else:
            async with fresh_postgres_database() as url:
                results[backend] = await run_backend(url, data, extra, config)
    results["machine"]["load_at_end"] = os.getloadavg()
    # The reference: FTS5 bm25() over every match (the same memory ids on both backends).
    ran = [b for b in config.backends if "methods" in results.get(b, {})]
    if ran:
        reference_backend = "sqlite" if "sqlite" in ran else ran[0]
        reference = results[reference_backend]["methods"][-1]
        results["agreement_reference"] = f"{reference_backend} {reference.name}"
        for backend in ran:
            methods = results[backend].pop("methods")
            results[backend]["agreement"] = {m.name: agreement(m, reference) for m in methods}
    return results


def render(results: dict[str, Any]) -> str:
    config, machine = results["config"], results["machine"]
    lines = [
        f"keyword search, one user with {config['memories']} memories, k={config['k']}, "
        f"{config['queries']} queries per set; load {machine['load_at_start'][0]:.1f} "
        f"-> {machine['load_at_end'][0]:.1f}",
        "",
        "| backend | method | set | p50 ms | p99 ms | answered "
        f"| top-10 shared with {results.get('agreement_reference')} |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend in ("sqlite", "postgresql"):
        result = results.get(backend)
        if result is None:
            continue
        if "skipped" in result:
            lines.append(f"| {backend} | skipped: {result['skipped']} | | | | | |")
            continue
        for method, sets in result["search"].items():
            for set_name, figures in sets.items():
                share = result["agreement"][method][set_name]
                lines.append(
                    f"| {backend} | {method} | {set_name} | {figures['p50_ms']} | {figures['p99_ms']} | "
                    f"{result['answered'][method][set_name]} | {'' if share is None else share} |"
                )
    lines += ["", "| backend | fill memories/s | 32-memory write p50 / p99 ms |", "|---|---|---|"]
    for backend in ("sqlite", "postgresql"):
        result = results.get(backend)
        if result is None or "skipped" in result:
            continue
        writes = "; ".join(f"{name} {w['p50_ms']} / {w['p99_ms']}" for name, w in result["writes_32"].items())
        lines.append(f"| {backend} | {result['fill']['memories_per_s']} | {writes} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--memories", type=int, default=100_000, help="memories of the user (default 100000)")
    parser.add_argument("--queries", type=int, default=300, help="queries per set (default 300)")
    parser.add_argument("--k", type=int, default=50, help="results asked per search (default 50)")
    parser.add_argument("--seed", type=int, default=20261203)
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = parser.parse_args(argv)
    config = Config(
        memories=args.memories,
        queries=args.queries,
        k=args.k,
        seed=args.seed,
        backends=[b.strip() for b in args.backends.split(",") if b.strip()],
    )
    results = asyncio.run(run(config))
    print(render(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
