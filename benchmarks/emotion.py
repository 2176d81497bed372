"""Emotion detection accuracy on a labelled evaluation set held apart from the classifier's examples.

    python -m benchmarks.emotion
    python -m benchmarks.emotion --json emotion.json

Data: ``benchmarks/data/emotion_eval.jsonl`` (330 chat messages, 55 per label, written for
this project; no sentence also in ``inference/emotion_examples.yaml``, which a test checks).

Detectors compared, all with the real all-MiniLM-L6-v2 int8 embedder:

- ``lexicon (word list)``: the engine's fallback, ``engine.emotion.LexiconEmotionDetector``;
- ``lexicon (vader+nrc)``: the VADER + NRC signal alone (when both are installed);
- ``embedding centroid`` / ``embedding knn``: prototypes of the examples, no lexicon;
- ``combined``: the shipped default, ``EmbeddingEmotionClassifier`` with its lexicon.

Each is scored on the message embedded as the pipeline embeds it (``"Name: content"``, the
recall embedding) and, for comparison, on the bare content.

Choices are made on the examples, never on the evaluation set: the method (centroid or k-NN)
and the lexicon weight are picked by leave-one-out accuracy over the examples (each example
classified by prototypes built without it), and that LOO table is printed first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (``python benchmarks/emotion.py``)
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from engine.emotion import LexiconEmotionDetector  # noqa: E402
from engine.errors import ConfigError  # noqa: E402
from engine.memory import memory_text  # noqa: E402
from inference.emotion import (  # noqa: E402
    EmbeddingEmotionClassifier,
    LexiconSignal,
    VaderNRCLexicon,
    WordListLexicon,
    lexicon_distribution,
    load_examples,
)
from inference.minilm import MiniLMEmbedder  # noqa: E402

EVAL_FILE = ROOT / "benchmarks" / "data" / "emotion_eval.jsonl"
# Speakers rotated over the messages, as the pipeline embeds "Name: content".
NAMES = ("Sam", "Priya", "jordan_92", "Mateo", "Aiko", "Chris")
WEIGHTS = (0.0, 0.2, 0.3, 0.4, 0.5)
K = 5


def load_eval(path: Path = EVAL_FILE) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(row["text"], row["label"]) for row in rows]


@dataclass
class Report:
    name: str
    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float]]
    confusion: list[list[int]]


def score(name: str, gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> Report:
    index = {label: i for i, label in enumerate(labels)}
    confusion = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        confusion[index[g]][index[p]] += 1
    per_class: dict[str, dict[str, float]] = {}
    for label, i in index.items():
        tp = confusion[i][i]
        predicted_n = sum(row[i] for row in confusion)
        gold_n = sum(confusion[i])
        precision = tp / predicted_n if predicted_n else 0.0
        recall = tp / gold_n if gold_n else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": precision, "recall": recall, "f1": f1, "support": gold_n}
    accuracy = sum(confusion[i][i] for i in range(len(labels))) / max(len(gold), 1)
    macro = sum(c["f1"] for c in per_class.values()) / len(labels)
    return Report(name, accuracy, macro, per_class, confusion)


def print_report(report: Report, labels: Sequence[str]) -> None:
    print(f"\n== {report.name}: accuracy {report.accuracy:.3f}, macro-F1 {report.macro_f1:.3f}")
    print(f"   {'label':<10}{'prec':>7}{'recall':>8}{'f1':>7}    confusion (rows gold, cols predicted)")
    short = " ".join(f"{label[:4]:>4}" for label in labels)
    print(f"   {'':<10}{'':>7}{'':>8}{'':>7}    {short}")
    for i, label in enumerate(labels):
        c = report.per_class[label]
        row = " ".join(f"{n:>4}" for n in report.confusion[i])
        print(f"   {label:<10}{c['precision']:>7.3f}{c['recall']:>8.3f}{c['f1']:>7.3f}    {row}")


def classifier(
    method: str, weight: float, lexicon: LexiconSignal, labels: Sequence[str], vectors: Any, owner: Any
) -> EmbeddingEmotionClassifier:
    model = EmbeddingEmotionClassifier(
        None,  # type: ignore[arg-type]  # prototypes set from precomputed vectors below
        {},
        method=method,  # type: ignore[arg-type]
        k=K,
        lexicon=lexicon,
        lexicon_weight=weight,
    )
    model.set_example_vectors(labels, vectors, owner)
    return model


def leave_one_out(
    texts: Sequence[str],
    vectors: Any,
    owner: Any,
    labels: Sequence[str],
    lexicon: LexiconSignal,
) -> dict[str, float]:
    """Accuracy per (method, weight) over the examples, each classified without itself."""
    lexicon_scores = [lexicon_distribution(lexicon.evidence(t), labels) for t in texts]
    results: dict[str, float] = {}
    for method in ("centroid", "knn"):
        embedding_scores: list[dict[str, float]] = []
        for i in range(len(texts)):
            keep = np.arange(len(texts)) != i
            model = classifier(method, 0.0, lexicon, labels, vectors[keep], owner[keep])
            embedding_scores.append(model.embedding_scores(vectors[i]))
        for weight in WEIGHTS:
            model.lexicon_weight = weight
            correct = 0
            for i in range(len(texts)):
                mixed = model.combine(embedding_scores[i], lexicon_scores[i])
                correct += max(mixed, key=lambda k: mixed[k]) == labels[owner[i]]
            results[f"{method} w={weight}"] = correct / len(texts)
    return results


async def run(json_out: Path | None) -> dict[str, Any]:
    examples = load_examples()
    labels = tuple(examples)
    example_texts = [s for label in labels for s in examples[label]]
    owner = np.array([i for i, label in enumerate(labels) for _ in examples[label]], dtype=np.int64)
    data = load_eval()
    overlap = {t.lower() for t, _ in data} & {t.lower() for t in example_texts}
    if overlap:
        raise SystemExit(f"evaluation sentences also in the examples: {sorted(overlap)}")
    texts = [t for t, _ in data]
    gold = [label for _, label in data]
    named = [memory_text(NAMES[i % len(NAMES)], t) for i, t in enumerate(texts)]

    embedder = MiniLMEmbedder()
    await embedder.start()
    try:
        started = time.perf_counter()
        example_vectors = np.asarray(await embedder.embed(example_texts), dtype=np.float32)
        examples_s = time.perf_counter() - started
        bare_vectors = np.asarray(await embedder.embed(texts), dtype=np.float32)
        named_vectors = np.asarray(await embedder.embed(named), dtype=np.float32)
    finally:
        await embedder.aclose()

    try:
        lexicon: LexiconSignal = VaderNRCLexicon()
    except ConfigError as exc:
        print(f"note: {exc}; the lexicon signal is the engine's word list")
        lexicon = WordListLexicon()

    print(f"{len(example_texts)} examples ({', '.join(f'{k} {len(v)}' for k, v in examples.items())}),")
    print(f"{len(data)} evaluation messages; lexicon signal: {lexicon.name}; embedder: MiniLM int8 ONNX")
    print(f"examples embedded in {examples_s:.2f} s\n")

    loo = leave_one_out(example_texts, example_vectors, owner, labels, lexicon)
    print("leave-one-out accuracy on the examples (chooses method and lexicon weight):")
    for key, value in loo.items():
        print(f"   {key:<18} {value:.3f}")
    best = max(loo, key=lambda k: (loo[k], -float(k.split("=")[1])))  # ties: the smaller weight
    best_method, best_weight = best.split()[0], float(best.split("=")[1])
    print(f"chosen: {best_method}, lexicon weight {best_weight}")

    reports: list[Report] = []
    fallback = LexiconEmotionDetector()
    reports.append(
        score(
            "lexicon (word list, engine fallback)", gold, [fallback.classify(t).label for t in texts], labels
        )
    )
    if isinstance(lexicon, VaderNRCLexicon):
        predicted = []
        for t in texts:
            dist = lexicon_distribution(lexicon.evidence(t), labels)
            predicted.append(max(dist, key=lambda k: dist[k]))
        reports.append(score("lexicon (vader+nrc)", gold, predicted, labels))

    def evaluate(name: str, model: EmbeddingEmotionClassifier, vectors: Any) -> Report:
        predicted = [model.classify_embedded(t, v).label for t, v in zip(texts, vectors, strict=True)]
        return score(name, gold, predicted, labels)

    variants: list[tuple[str, str, float]] = [
        ("embedding centroid", "centroid", 0.0),
        ("embedding knn k=5", "knn", 0.0),
        (f"combined ({best_method}, w={best_weight}, LOO choice)", best_method, best_weight),
    ]
    for name, method, weight in variants:
        model = classifier(method, weight, lexicon, labels, example_vectors, owner)
        reports.append(evaluate(f"{name}, 'Name: content'", model, named_vectors))
        reports.append(evaluate(f"{name}, bare content", model, bare_vectors))
    # The other combination, reported for transparency (not used to choose).
    other = "knn" if best_method == "centroid" else "centroid"
    model = classifier(other, best_weight, lexicon, labels, example_vectors, owner)
    reports.append(evaluate(f"combined ({other}, w={best_weight}), 'Name: content'", model, named_vectors))

    for report in reports:
        print_report(report, labels)

    print("\nsummary (accuracy / macro-F1):")
    for report in reports:
        print(f"   {report.accuracy:.3f} / {report.macro_f1:.3f}   {report.name}")

    result = {
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "examples": len(example_texts),
        "eval_messages": len(data),
        "labels": list(labels),
        "lexicon": lexicon.name,
        "leave_one_out": loo,
        "chosen": {"method": best_method, "lexicon_weight": best_weight},
        "reports": [report.__dict__ for report in reports],
    }
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.json))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
