"""A fast, offline first guess at the emotion of a message, from a small word list.

This is the engine's baseline detector: cheap enough for the reply path and good enough
to colour the prompt. ``EmotionDetector`` is the seam for better classifiers.
"""

from __future__ import annotations

import re
from typing import Protocol

EMOTIONS = ("joy", "sadness", "anger", "fear", "surprise", "neutral")

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


class EmotionDetector(Protocol):
    def detect(self, text: str) -> str: ...


class LexiconEmotionDetector:
    """Counts emotion words; the label with most hits wins, ``neutral`` when none."""

    def detect(self, text: str) -> str:
        best, best_hits = "neutral", 0
        for label, pattern in _PATTERNS.items():
            hits = len(pattern.findall(text))
            if hits > best_hits:
                best, best_hits = label, hits
        return best
