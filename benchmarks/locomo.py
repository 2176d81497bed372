"""LoCoMo memory recall: does the engine's real write and recall path find the evidence turns?

Each LoCoMo conversation (Maharana et al., ACL 2024) becomes ONE user scope
(``locomo:<sample_id>``): the questions are about the conversation as a whole, so both speakers'
turns are memories of that scope, each a user message whose ``user_name`` is its speaker (the
memory text is ``memory_text(speaker, text)``, ``"Caroline: ..."``) and whose timestamp is its
session's date (plus one second per turn, to keep their order). A turn that shares an image has
the image's ``blip_caption`` appended as ``[shares a photo of ...]`` (the only description of the
image LoCoMo gives). Turns go through ``MemoryWriter.write`` (the background writer's own write
path, incl. its ``worth_remembering`` filter) into a real SQLite file (FTS5 keyword index) and
embedded Chroma, embedded by the real MiniLM (``inference.minilm.MiniLMEmbedder``). No LLM is
involved. Each question of categories 1-4 (single-hop, temporal, open-domain, multi-hop;
category 5, adversarial, has no evidence to find) is answered by ``MemoryRecall.search`` (the
reply path's recall: keyword search and vector query at once, fused), and each recalled
memory is mapped back to its dialog id through its provenance (source message id → ``D1:3``).

Metrics per question with evidence set E and the top-k dialog ids R: any@k = 1 if R ∩ E ≠ ∅,
frac@k = |R ∩ E| / |E|; averaged overall and per category. Malformed evidence ids are repaired
(``D:11:26`` → ``D11:26``, ``"D8:6; D9:17"`` split); ids that name no turn are dropped, and a
question left with none is skipped (counted in ``skipped``).

``--loo`` also runs the leave-one-conversation-out check of the fusion weights: candidates of
each question are fetched once (large pools from the real store and vector store), then
``engine.memory.fuse`` ranks them under each setting of a small grid; for each conversation the
setting best on the other four (mean any@5) is evaluated on it.

    python -m benchmarks.locomo --data /work/shared/benchmarks/locomo-dev.json --json out.json
    python -m benchmarks.locomo --data ... --mode dense      # or keyword; default hybrid
    python -m benchmarks.locomo --data ... --loo
    python -m benchmarks.locomo --data ... --database-url postgresql://postgres@127.0.0.1/empty_db
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import platform
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (``python benchmarks/locomo.py``)
    sys.path.insert(0, str(ROOT))

from engine.memory import FusionWeights, MemoryRecall, MemoryWriter, TurnRecord, fuse, memory_text  # noqa: E402
from engine.ports import MemoryRecord, StoredMessage, VectorHit  # noqa: E402

logger = logging.getLogger(__name__)

Mode = Literal["hybrid", "dense", "keyword"]
CATEGORIES = {1: "single-hop", 2: "temporal", 3: "open-domain", 4: "multi-hop"}
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")
_SESSION = re.compile(r"session_(\d+)")
_BATCH = 64
# the leave-one-out grid: few parameters, round values
GRID_KEYWORD = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 1.0)
GRID_RECENCY = (0.0, 0.05)
GRID_SPEAKER = (0.0, 0.2, 0.4)
GRID_POOL = (4, 10)  # times k=5: 20 and 50 candidates per list


@dataclass(frozen=True, slots=True)
class Question:
    text: str
    category: int
    evidence: frozenset[str]


@dataclass(slots=True)
class Conversation:
    sample_id: str
    messages: list[StoredMessage] = field(default_factory=list)
    dia_ids: dict[str, str] = field(default_factory=dict)
    """stored message id → dialog id"""
    questions: list[Question] = field(default_factory=list)
    skipped: int = 0

    def turns(self) -> list[tuple[StoredMessage, str]]:
        """Each message with the turn it followed in its session ("" for a session's first)."""
        out, previous = [], None
        for m in self.messages:
            same_session = previous is not None and previous.platform_message_id == m.platform_message_id
            follows = memory_text(previous.user_name, previous.content) if same_session else ""
            out.append((m, follows))
            previous = m
        return out


def parse_session_date(text: str) -> datetime:
    """``"1:56 pm on 8 May, 2023"`` → an aware UTC datetime."""
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=UTC)


def turn_text(turn: dict[str, Any]) -> str:
    text = str(turn.get("text", "")).strip()
    caption = str(turn.get("blip_caption") or "").strip()
    if caption:
        caption = caption.removeprefix("a photo of ").removeprefix("an image of ")
        text = f"{text} [shares a photo of {caption}]".strip()
    return text


def load(path: Path) -> list[Conversation]:
    conversations = []
    for sample in json.loads(path.read_text()):
        conv = Conversation(sample_id=str(sample["sample_id"]))
        user_key = f"locomo:{conv.sample_id}"
        raw = sample["conversation"]
        sessions = sorted(
            (int(m.group(1)), key)
            for key in raw
            if (m := _SESSION.fullmatch(key)) and isinstance(raw[key], list)
        )
        for number, key in sessions:
            start = parse_session_date(raw[f"{key}_date_time"])
            for i, turn in enumerate(raw[key]):
                message_id = f"{conv.sample_id}:{turn['dia_id']}"
                conv.dia_ids[message_id] = str(turn["dia_id"])
                conv.messages.append(
                    StoredMessage(
                        id=message_id,
                        conversation_key=user_key,
                        user_key=user_key,
                        role="user",
                        content=turn_text(turn),
                        platform="locomo",
                        channel_id=conv.sample_id,
                        created_at=start + timedelta(seconds=i),
                        user_name=str(turn["speaker"]),
                        platform_message_id=f"session-{number}",
                    )
                )
        known = set(conv.dia_ids.values())
        for qa in sample["qa"]:
            category = int(qa["category"])
            if category not in CATEGORIES:
                continue
            evidence = (
                frozenset(
                    f"D{a}:{b}" for a, b in _EVIDENCE.findall(" ".join(map(str, qa.get("evidence", []))))
                )
                & known
            )
            if not evidence:
                conv.skipped += 1
                continue
            conv.questions.append(Question(str(qa["question"]), category, evidence))
        conversations.append(conv)
    return conversations


# --- scoring -------------------------------------------------------------------------------


def score_question(ranked: Sequence[str], evidence: frozenset[str], k: int) -> tuple[float, float]:
    top = set(ranked[:k])
    found = len(top & evidence)
    return (1.0 if found else 0.0), found / len(evidence)


def summarise(per_question: list[tuple[int, list[str], frozenset[str]]], ks: Sequence[int]) -> dict[str, Any]:
    def block(rows: list[tuple[int, list[str], frozenset[str]]]) -> dict[str, float | int]:
        out: dict[str, float | int] = {"questions": len(rows)}
        for k in ks:
            scores = [score_question(ranked, ev, k) for _, ranked, ev in rows]
            out[f"any@{k}"] = round(sum(s[0] for s in scores) / max(len(rows), 1), 4)
            out[f"frac@{k}"] = round(sum(s[1] for s in scores) / max(len(rows), 1), 4)
        return out

    result: dict[str, Any] = {"overall": block(per_question)}
    result["by_category"] = {
        f"{c}-{name}": block([row for row in per_question if row[0] == c]) for c, name in CATEGORIES.items()
    }
    return result


# --- the engine's stores -------------------------------------------------------------------


async def run(
    conversations: list[Conversation],
    *,
    ks: Sequence[int],
    mode: Mode,
    min_similarity: float,
    weights: FusionWeights,
    loo: bool,
    workdir: Path,
    database_url: str | None = None,
) -> dict[str, Any]:
    from inference.minilm import MiniLMEmbedder
    from storage.sql import SQLConversationStore
    from storage.vector.chroma import ChromaVectorMemory

    store = SQLConversationStore(database_url or f"sqlite:///{workdir / 'locomo.db'}")
    vectors = ChromaVectorMemory.embedded(workdir / "chroma")
    embedder, write_embedder = MiniLMEmbedder(), MiniLMEmbedder()
    for resource in (store, vectors, embedder, write_embedder):
        await resource.start()
    try:
        if mode == "keyword":
            weights = replace(weights, keyword=1.0, dense=0.0)
        recall = MemoryRecall(
            vectors,
            embedder,
            top_k=max(ks),
            min_similarity=min_similarity,
            keywords=None if mode == "dense" else store,
            weights=weights,
        )
        writer = MemoryWriter(store, vectors, write_embedder)

        started = time.perf_counter()
        for conv in conversations:
            turns = [TurnRecord(user_message=m, reply=None, follows=follows) for m, follows in conv.turns()]
            for i in range(0, len(turns), _BATCH):
                await writer.write(turns[i : i + _BATCH])
        ingest_s = time.perf_counter() - started
        turns = sum(len(c.messages) for c in conversations)
        memories = sum([await store.count_memories(f"locomo:{c.sample_id}") for c in conversations])

        rows: list[tuple[int, list[str], frozenset[str]]] = []
        per_conversation: dict[str, list[tuple[int, list[str], frozenset[str]]]] = {}
        latencies: list[float] = []
        for conv in conversations:
            user_key = f"locomo:{conv.sample_id}"
            mine = per_conversation.setdefault(conv.sample_id, [])
            for q in conv.questions:
                t0 = time.perf_counter()
                hits, _ = await recall.search(user_key, q.text, k=max(ks))
                latencies.append(time.perf_counter() - t0)
                ranked = [conv.dia_ids[s] for h in hits for s in h.source_message_ids if s in conv.dia_ids]
                mine.append((q.category, ranked, q.evidence))
        rows = [row for conv_rows in per_conversation.values() for row in conv_rows]
        query_s = sum(latencies)
        latencies.sort()

        result: dict[str, Any] = {
            "mode": mode,
            "database": store.kind,
            "weights": asdict(weights) if mode != "dense" else None,
            "min_similarity": min_similarity,
            "conversations": len(conversations),
            "turns": turns,
            "memories": memories,
            "skipped_questions": sum(c.skipped for c in conversations),
            "ingest_s": round(ingest_s, 2),
            "ingest_turns_per_s": round(turns / ingest_s, 1) if ingest_s else None,
            "query_s": round(query_s, 2),
            "query_ms_p50": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
            "query_ms_p95": round(1000 * latencies[int(len(latencies) * 0.95)], 2) if latencies else None,
            **summarise(rows, ks),
            "by_conversation": {sid: summarise(r, ks)["overall"] for sid, r in per_conversation.items()},
        }
        if loo:
            result["leave_one_out"] = await leave_one_out(
                conversations, store, vectors, embedder, min_similarity
            )
        return result
    finally:
        for resource in (write_embedder, embedder, vectors, store):
            await resource.aclose()


async def leave_one_out(
    conversations: list[Conversation], store: Any, vectors: Any, embedder: Any, min_similarity: float
) -> dict[str, Any]:
    """Tune the fusion on four conversations, evaluate on the fifth, for each conversation."""
    big = max(GRID_POOL) * 5
    candidates: dict[str, list[tuple[Question, list[VectorHit], list[tuple[MemoryRecord, float]]]]] = {}
    for conv in conversations:
        user_key = f"locomo:{conv.sample_id}"
        embeddings = await embedder.embed([q.text for q in conv.questions])
        rows = candidates[conv.sample_id] = []
        for q, embedding in zip(conv.questions, embeddings, strict=True):
            dense, keyword = await asyncio.gather(
                vectors.query(user_key, embedding, big), store.keyword_search(user_key, q.text, big)
            )
            rows.append((q, [h for h in dense if h.similarity >= min_similarity], keyword))

    grid = [
        FusionWeights(keyword=kw, dense=round(1 - kw, 2), recency=rec, speaker=speaker, pool=pool)
        for kw, rec, speaker, pool in itertools.product(GRID_KEYWORD, GRID_RECENCY, GRID_SPEAKER, GRID_POOL)
    ]
    by_conv = {c.sample_id: c for c in conversations}

    def any5(sample_id: str, w: FusionWeights) -> list[float]:
        conv, n = by_conv[sample_id], w.pool_size(5)
        out = []
        for q, dense, keyword in candidates[sample_id]:
            hits = fuse(dense[:n], keyword[:n], 5, w, query=q.text)
            ranked = [conv.dia_ids[s] for h in hits for s in h.source_message_ids if s in conv.dia_ids]
            out.append(score_question(ranked, q.evidence, 5)[0])
        return out

    table = {(sid, i): any5(sid, w) for sid in candidates for i, w in enumerate(grid)}
    folds = []
    for held_out in candidates:
        train = [sid for sid in candidates if sid != held_out]

        def train_score(i: int, train: list[str] = train) -> float:
            scores = [s for sid in train for s in table[(sid, i)]]
            return sum(scores) / len(scores)

        best = max(range(len(grid)), key=train_score)
        test = table[(held_out, best)]
        folds.append(
            {
                "held_out": held_out,
                "chosen": {
                    "keyword": grid[best].keyword,
                    "recency": grid[best].recency,
                    "speaker": grid[best].speaker,
                    "pool": grid[best].pool,
                },
                "train_any@5": round(train_score(best), 4),
                "test_any@5": round(sum(test) / len(test), 4),
                "test_questions": len(test),
            }
        )
    all_scores = {i: [s for sid in candidates for s in table[(sid, i)]] for i in range(len(grid))}
    total = sum(f["test_questions"] for f in folds)
    return {
        "grid": {
            "keyword": GRID_KEYWORD,
            "recency": GRID_RECENCY,
            "speaker": GRID_SPEAKER,
            "pool": GRID_POOL,
        },
        "folds": folds,
        "pooled_test_any@5": round(sum(f["test_any@5"] * f["test_questions"] for f in folds) / total, 4),
        "all_settings_any@5": [
            {
                "keyword": w.keyword,
                "recency": w.recency,
                "speaker": w.speaker,
                "pool": w.pool,
                "any@5": round(sum(s) / len(s), 4),
            }
            for w, s in ((grid[i], all_scores[i]) for i in range(len(grid)))
        ],
    }


def render(result: dict[str, Any], ks: Sequence[int]) -> str:
    cols = [f"{m}@{k}" for m in ("any", "frac") for k in ks]
    lines = [
        f"LoCoMo recall ({result['mode']}, {result['database']}): {result['conversations']} conversations, "
        f"{result['turns']} turns "
        f"→ {result['memories']} memories, {result['overall']['questions']} questions "
        f"({result['skipped_questions']} without usable evidence skipped)",
        f"ingest {result['ingest_s']} s ({result['ingest_turns_per_s']} turns/s); "
        f"query {result['query_s']} s total, p50 {result['query_ms_p50']} ms, "
        f"p95 {result['query_ms_p95']} ms",
        f"{'':18}{'n':>5} " + " ".join(f"{c:>9}" for c in cols),
    ]
    blocks = {"overall": result["overall"], **result["by_category"], **result["by_conversation"]}
    for name, block in blocks.items():
        lines.append(f"{name:18}{block['questions']:>5} " + " ".join(f"{block[c]:>9.3f}" for c in cols))
    if "leave_one_out" in result:
        loo = result["leave_one_out"]
        lines.append("leave-one-conversation-out (tune on 4, test on the 5th), any@5:")
        for fold in loo["folds"]:
            lines.append(
                f"  {fold['held_out']:10} chosen {fold['chosen']} train {fold['train_any@5']:.3f} "
                f"test {fold['test_any@5']:.3f}"
            )
        lines.append(f"  pooled test any@5 {loo['pooled_test_any@5']:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.locomo", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a LoCoMo JSON file (list of samples)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--k", default="5,10", help="cut-offs, comma-separated (default 5,10)")
    parser.add_argument("--mode", choices=("hybrid", "dense", "keyword"), default="hybrid")
    parser.add_argument(
        "--keyword-weight", type=float, help="override FusionWeights.keyword (dense = 1 - it)"
    )
    parser.add_argument("--recency-weight", type=float, help="override FusionWeights.recency")
    parser.add_argument("--pool", type=int, help="override FusionWeights.pool")
    parser.add_argument("--min-similarity", type=float, help="default: the MEMORY_MIN_SIMILARITY default")
    parser.add_argument("--loo", action="store_true", help="also run the leave-one-conversation-out check")
    parser.add_argument(
        "--database-url",
        help="the conversation store, e.g. an empty PostgreSQL database (default: a temporary SQLite file)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from config.settings import Settings

    ks = sorted({int(k) for k in args.k.split(",") if k.strip()})
    weights = FusionWeights()
    if args.keyword_weight is not None:
        weights = replace(weights, keyword=args.keyword_weight, dense=round(1 - args.keyword_weight, 4))
    if args.recency_weight is not None:
        weights = replace(weights, recency=args.recency_weight)
    if args.pool is not None:
        weights = replace(weights, pool=args.pool)
    min_similarity = (
        args.min_similarity
        if args.min_similarity is not None
        else float(Settings.model_fields["memory_min_similarity"].default)
    )
    conversations = load(args.data)
    with tempfile.TemporaryDirectory(prefix="we-locomo-") as tmp:
        result = asyncio.run(
            run(
                conversations,
                ks=ks,
                mode=args.mode,
                min_similarity=min_similarity,
                weights=weights,
                loo=args.loo,
                workdir=Path(tmp),
                database_url=args.database_url,
            )
        )
    result["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
    result["date"] = datetime.now(UTC).date().isoformat()
    print(render(result, ks))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
