"""The emotion of a user message: the seam, its result, and a pure-python word-list fallback.

``EmotionDetector`` is what the pipeline calls once per message, on the reply path. It may be
handed the message's embedding, which the pipeline computes anyway for memory recall, so a
classifier built on the same embedder costs a few dot products. Implementations:

- ``LexiconEmotionDetector`` (here): counts words of a small list; no dependencies. The
  fallback when nothing better starts.
- ``inference.emotion.EmbeddingEmotionClassifier``: prototypes of labelled example sentences
  in the embedder's space, combined with a lexicon signal (VADER + NRC when installed).
- ``inference.emotion.TransformerEmotionClassifier``: a Hugging Face text-classification model
  by name (``EMOTION_MODEL``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from engine.ports import Vector

EMOTIONS = ("joy", "sadness", "anger", "fear", "surprise", "neutral")
NEUTRAL = "neutral"

_LEXICON: dict[str, tuple[str, ...]] = {
    "joy": (
        "happy",
        "glad",
        "great",
        "awesome",
        "amazing",
        "love",
        "loved",
        "excited",
        "yay",
        "wonderful",
        "fantastic",
        "thrilled",
        "delighted",
        "finally",
        "congrats",
        "proud",
        "fun",
        "enjoyed",
        "haha",
    ),
    "sadness": (
        "sad",
        "down",
        "depressed",
        "lonely",
        "miss",
        "missed",
        "cry",
        "crying",
        "cried",
        "lost",
        "hurt",
        "heartbroken",
        "unhappy",
        "miserable",
        "tired",
        "exhausted",
        "grief",
        "sorry",
        "alone",
    ),
    "anger": (
        "angry",
        "mad",
        "furious",
        "annoyed",
        "hate",
        "hated",
        "irritated",
        "pissed",
        "unfair",
        "ridiculous",
        "sick of",
        "fed up",
        "rage",
        "stupid",
    ),
    "fear": (
        "scared",
        "afraid",
        "anxious",
        "nervous",
        "worried",
        "worry",
        "terrified",
        "panic",
        "fear",
        "dread",
        "stressed",
        "frightened",
    ),
    "surprise": (
        "wow",
        "whoa",
        "surprised",
        "unexpected",
        "can't believe",
        "cannot believe",
        "no way",
        "shocked",
        "suddenly",
        "omg",
    ),
}
_PATTERNS = {
    label: re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    for label, words in _LEXICON.items()
}


@dataclass(frozen=True, slots=True)
class EmotionResult:
    """A detected emotion: the label, how sure the detector is (0..1), and every label's score.

    ``scores`` sum to 1 over the detector's labels; ``confidence`` is the label's score.
    """

    label: str
    confidence: float = 1.0
    scores: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_scores(cls, scores: Mapping[str, float]) -> EmotionResult:
        """The best label of non-negative ``scores`` (normalised here); neutral when all are 0."""
        total = sum(max(v, 0.0) for v in scores.values())
        if total <= 0.0:
            return cls(NEUTRAL, 1.0, MappingProxyType({NEUTRAL: 1.0}))
        normalised = {label: max(v, 0.0) / total for label, v in scores.items()}
        label = max(normalised, key=lambda k: normalised[k])
        return cls(label, normalised[label], MappingProxyType(normalised))


NEUTRAL_RESULT = EmotionResult(NEUTRAL, 1.0, MappingProxyType({NEUTRAL: 1.0}))


class EmotionDetector(Protocol):
    """Detects the emotion of one message on the reply path; must be fast.

    ``embedding`` is the message's embedding when the caller has one (the pipeline passes the
    recall embedding of ``memory_text(user_name, content)``); detectors that do not use
    embeddings ignore it.
    """

    async def detect(self, text: str, embedding: Vector | None = None) -> EmotionResult: ...


def lexicon_hits(text: str) -> dict[str, int]:
    """How many words of each emotion's list ``text`` contains."""
    return {label: len(pattern.findall(text)) for label, pattern in _PATTERNS.items()}


class LexiconEmotionDetector:
    """Counts emotion words; the label with most hits wins, ``neutral`` when none."""

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def classify(self, text: str) -> EmotionResult:
        hits = lexicon_hits(text)
        best = max(hits.values(), default=0)
        if best == 0:
            return NEUTRAL_RESULT
        # Ties go to the earlier label of EMOTIONS, as the word list always did.
        label = next(name for name in EMOTIONS if hits.get(name, 0) == best)
        total = sum(hits.values())
        scores = {name: count / total for name, count in hits.items() if count}
        return EmotionResult(label, scores[label], MappingProxyType(scores))

    async def detect(self, text: str, embedding: Vector | None = None) -> EmotionResult:
        return self.classify(text)
