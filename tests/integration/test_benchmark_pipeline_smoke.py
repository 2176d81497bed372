"""The pipeline benchmark runs end to end on tiny sizes and reports what it promises.

Real stack: the composition root with SQLite, embedded Chroma, the in-process cache, MiniLM,
and the real OpenAI client against the local fake server. No timing thresholds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.pipeline import main

pytestmark = pytest.mark.slow

MESSAGES = 12
USERS = 4


def test_benchmark_runs_on_embedded_stores_and_writes_its_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    code = main(
        [
            "--backends", "embedded",
            "--memories", "200",
            "--others", str(USERS),
            "--other-memories", "400",
            "--messages", str(MESSAGES),
            "--concurrency", f"1,{USERS}",
            "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    assert {"config", "machine", "backends", "target", "rss", "llm_server"} <= results.keys()

    embedded = results["backends"]["embedded"]
    assert embedded["status"] == "ok"
    assert embedded["population"]["memories"] == 200 + 400
    assert "sqlite" in embedded["choices"]["store"]
    assert "embedded" in embedded["choices"]["vectors"]

    single, idle, concurrent = embedded["runs"]
    assert (single["users"], single["memories_per_user"], single["mode"]) == (1, 200, "back-to-back")
    assert (idle["users"], idle["memories_per_user"], idle["mode"]) == (1, 200, "writer-idle")
    assert (concurrent["users"], concurrent["memories_per_user"]) == (USERS, 100)
    for run in (single, idle, concurrent):
        assert run["replies"] == run["messages"] == run["answers"]
        assert run["apologies"] == 0
        for key in ("overhead_ms", "overhead_wall_ms", "llm_ms", "context_ms", "wall_ms"):
            assert run[key]["n"] == run["replies"]
            assert 0 <= run[key]["p50"] <= run[key]["p99"] <= run[key]["max"]
        assert run["llm_ms"]["p50"] > 0
        assert run["messages_per_s"] > 0
        writer = run["writer"]
        assert writer["failed_total"] == 0
        assert writer["batches"] >= 1
        assert writer["batch_turns"]["n"] == writer["batches"]
        # Replies never wait for memory writes: every reply completed before its own turn was stored.
        assert writer["replies_before_own_turn_stored"] == run["replies"]
        assert writer["unstored_at_reply"]["p50"] >= 1
        assert run["rss"]["peak_mb"] >= run["rss"]["current_mb"] > 0
    assert single["messages"] == idle["messages"] == MESSAGES
    assert concurrent["messages"] == USERS * round(MESSAGES / USERS)
    # The measured user's questions find its related memories.
    assert single["memories_used_mean"] > 0

    assert results["target"]["met"] is None  # 100k was not measured
    printed = capsys.readouterr().out
    assert "[embedded]" in printed and "1 user, 200 memories" in printed
