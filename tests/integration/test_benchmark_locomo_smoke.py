"""The LoCoMo benchmark runs end to end on a tiny LoCoMo-shaped file and reports what it promises.

Real stack: SQLite (FTS5), embedded Chroma, MiniLM, through MemoryWriter.write and MemoryRecall.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.locomo import main

pytestmark = pytest.mark.slow

FILLER = [
    "How was your weekend, did you do anything fun?",
    "Not much really, mostly relaxing at home with the kids.",
    "That sounds nice, sometimes a quiet weekend is the best kind.",
    "Totally agree, I needed the rest after a busy week at work.",
]


def sample() -> dict[str, object]:
    session_1 = [
        {"speaker": "Ana" if i % 2 == 0 else "Ben", "dia_id": f"D1:{i + 1}", "text": text}
        for i, text in enumerate(FILLER)
    ]
    session_2 = [
        {"speaker": "Ana", "dia_id": "D2:1", "text": "Guess what, I adopted a tortoise named Zeppelin!"},
        {
            "speaker": "Ben",
            "dia_id": "D2:2",
            "text": "Wow, congratulations! Look what I cooked.",
            "img_url": ["https://example.invalid/x.jpg"],
            "blip_caption": "a photo of a bowl of ramen noodles",
        },
        *[
            {"speaker": "Ana" if i % 2 == 0 else "Ben", "dia_id": f"D2:{i + 3}", "text": text}
            for i, text in enumerate(FILLER)
        ],
    ]
    return {
        "sample_id": "conv-test",
        "conversation": {
            "speaker_a": "Ana",
            "speaker_b": "Ben",
            "session_1_date_time": "1:56 pm on 8 May, 2023",
            "session_1": session_1,
            "session_2_date_time": "10:04 am on 20 June, 2023",
            "session_2": session_2,
        },
        "qa": [
            {"question": "What is the name of Ana's tortoise?", "answer": "Zeppelin", "evidence": ["D2:1"],
             "category": 1},
            {"question": "What did Ben cook?", "answer": "ramen", "evidence": ["D2:2"], "category": 4},
            {"question": "Is this unanswerable?", "adversarial_answer": "x", "evidence": ["D1:1"],
             "category": 5},
            {"question": "Broken evidence?", "answer": "x", "evidence": ["D9:99"], "category": 2},
        ],
    }  # fmt: skip


def test_locomo_benchmark_finds_the_evidence_and_writes_its_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "locomo.json"
    data.write_text(json.dumps([sample()]))
    out = tmp_path / "result.json"

    assert main(["--data", str(data), "--json", str(out), "--k", "1,5"]) == 0

    result = json.loads(out.read_text())
    assert {"overall", "by_category", "by_conversation", "ingest_s", "query_s", "turns", "memories"} <= set(
        result
    )
    assert result["turns"] == 10
    assert result["skipped_questions"] == 1  # category 5 is not scored; D9:99 names no turn
    overall = result["overall"]
    assert overall["questions"] == 2
    assert {"any@1", "any@5", "frac@1", "frac@5"} <= set(overall)
    assert overall["any@5"] == 1.0  # rare words shared with the evidence turns: Zeppelin, ramen (caption)
    assert set(result["by_category"]) == {"1-single-hop", "2-temporal", "3-open-domain", "4-multi-hop"}
    assert result["by_category"]["1-single-hop"]["any@5"] == 1.0
    assert "LoCoMo recall (hybrid, sqlite)" in capsys.readouterr().out
