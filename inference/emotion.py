"""Emotion classifiers for ``engine.emotion.EmotionDetector``: embedding prototypes + lexicon, or a
Hugging Face transformer by name.

``EmbeddingEmotionClassifier`` embeds labelled example sentences (``emotion_examples.yaml``
beside this file) once at ``start()`` and keeps one prototype per label: the normalised
centroid of the label's examples (``method="centroid"``) or the examples themselves, scored by
the mean similarity of the ``k`` nearest (``method="knn"``). A message's similarity to each
prototype becomes a distribution by a softmax, which is mixed with a lexicon signal:

- ``VaderNRCLexicon``: VADER valence (``vaderSentiment``) plus NRC emotion words (``nrclex``,
  through ``load_token_list`` only: its raw-text path needs NLTK downloads), plus the engine's
  own interjection list (NRC has no "wow" or "omg");
- ``WordListLexicon``: the engine's small word list alone, when those are not installed.

When the caller hands over the message's embedding (the pipeline does: its recall embedding)
classification is a few hundred multiply-adds per label and no model run.

``TransformerEmotionClassifier`` loads a ``text-classification`` model with ``transformers``
(``EMOTION_MODEL``; optional extra ``emotion-transformer``) and runs it on one thread.

Measured accuracies are in ``engine/EMOTION.md`` (``python -m benchmarks.emotion``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import yaml

from engine.emotion import EMOTIONS, NEUTRAL, NEUTRAL_RESULT, EmotionResult, lexicon_hits
from engine.errors import ConfigError, StorageError
from engine.ports import Embedder, Vector

logger = logging.getLogger(__name__)

EXAMPLES_FILE = "emotion_examples.yaml"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")

# --- example sentences ------------------------------------------------------------------------


def load_examples(path: Path | None = None) -> dict[str, list[str]]:
    """The labelled example sentences: the packaged file, or a YAML mapping label -> sentences."""
    try:
        if path is None:
            raw = resources.files("inference").joinpath(EXAMPLES_FILE).read_text(encoding="utf-8")
        else:
            raw = path.read_text(encoding="utf-8")
        data = yaml.safe_load(raw)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read emotion examples {path or EXAMPLES_FILE}: {exc}") from exc
    if not isinstance(data, dict) or not all(
        isinstance(v, list) and all(isinstance(s, str) for s in v) for v in data.values()
    ):
        raise ConfigError(f"emotion examples {path or EXAMPLES_FILE} must map each label to sentences")
    return {str(label): [s.strip() for s in sentences if s.strip()] for label, sentences in data.items()}


# --- lexicon signals ------------------------------------------------------------------------


class LexiconSignal(Protocol):
    """Evidence per emotion label from the words of a text; pure and fast."""

    @property
    def name(self) -> str: ...

    def evidence(self, text: str) -> dict[str, float]:
        """Non-negative evidence for each non-neutral label (0 = none)."""
        ...


def lexicon_distribution(
    evidence: Mapping[str, float], labels: Sequence[str], neutral_prior: float = 1.0
) -> dict[str, float]:
    """Evidence as a distribution: the more evidence, the less ``neutral``."""
    total = sum(evidence.get(label, 0.0) for label in labels if label != NEUTRAL) + neutral_prior
    return {
        label: (neutral_prior if label == NEUTRAL else evidence.get(label, 0.0)) / total for label in labels
    }


class WordListLexicon:
    """The engine's word list (``engine.emotion``): one unit of evidence per hit."""

    name = "wordlist"

    def evidence(self, text: str) -> dict[str, float]:
        return {label: float(hits) for label, hits in lexicon_hits(text).items()}


def _variants(word: str) -> tuple[str, ...]:
    """The word and crude lemmas of it, for NRC's mostly uninflected entries."""
    out = [word]
    if len(word) > 4:
        if word.endswith("ies") or word.endswith("ied"):
            out.append(word[:-3] + "y")
        if word.endswith("ing"):
            out += [word[:-3], word[:-3] + "e"]
        if word.endswith("ed"):
            out += [word[:-2], word[:-1]]
        if word.endswith("s"):
            out.append(word[:-1])
    return tuple(out)


class VaderNRCLexicon:
    """VADER valence + NRC emotion words + the engine's interjections.

    Per text: NRC emotion counts (disgust counted as anger), the engine's word-list hits, and
    VADER's compound valence ``c``: ``c > 0`` adds ``2c`` to joy; ``c < 0`` spreads ``2|c|`` over
    sadness, anger and fear in proportion to their NRC counts (evenly when none).
    Raises ConfigError when ``vaderSentiment`` or ``nrclex`` is not installed.
    """

    name = "vader+nrc"
    NEGATIVE = ("sadness", "anger", "fear")

    def __init__(self) -> None:
        try:
            from nrclex import NRCLex  # type: ignore[import-untyped]
            from vaderSentiment.vaderSentiment import (  # type: ignore[import-untyped]
                SentimentIntensityAnalyzer,
            )
        except ImportError as exc:
            raise ConfigError(
                f"the VADER + NRC lexicon needs vaderSentiment and nrclex ({exc.name} is not installed)"
            ) from exc
        self._vader = SentimentIntensityAnalyzer()
        # The bundled NRC lexicon, read once; lookups below are plain dict gets.
        self._nrc_class = NRCLex
        self._nrc: dict[str, list[str]] = NRCLex(None).__lexicon__  # for the lemma look-ups

    def nrc_counts(self, text: str) -> dict[str, int]:
        """NRC emotion counts of the text's words, via ``NRCLex.load_token_list``."""
        tokens: list[str] = []
        for word in _WORD.findall(text.lower()):
            hit = next((v for v in _variants(word) if v in self._nrc), None)
            if hit is not None:
                tokens.append(hit)
        if not tokens:
            return {}
        nrc = self._nrc_class(None)
        nrc.load_token_list(tokens)
        counts: dict[str, int] = dict(nrc.raw_emotion_scores)
        counts["anger"] = counts.get("anger", 0) + counts.pop("disgust", 0)
        return counts

    def valence(self, text: str) -> float:
        """VADER's compound score in [-1, 1]."""
        return float(self._vader.polarity_scores(text)["compound"])

    def evidence(self, text: str) -> dict[str, float]:
        counts = self.nrc_counts(text)
        words = lexicon_hits(text)
        evidence = {
            label: float(counts.get(label, 0)) + float(words.get(label, 0))
            for label in ("joy", "sadness", "anger", "fear", "surprise")
        }
        compound = self.valence(text)
        if compound > 0:
            evidence["joy"] += 2 * compound
        elif compound < 0:
            negative = {label: float(counts.get(label, 0)) for label in self.NEGATIVE}
            total = sum(negative.values())
            for label in self.NEGATIVE:
                share = negative[label] / total if total else 1 / len(self.NEGATIVE)
                evidence[label] += 2 * -compound * share
        return evidence


def default_lexicon() -> LexiconSignal:
    """VADER + NRC when installed, else the engine's word list."""
    try:
        return VaderNRCLexicon()
    except ConfigError as exc:
        logger.info("%s; using the engine's word list as the lexicon signal", exc)
        return WordListLexicon()


# --- the embedding classifier -----------------------------------------------------------------

Method = Literal["centroid", "knn"]
Matrix = npt.NDArray[np.float32]


def _softmax(values: npt.NDArray[np.float64], temperature: float) -> npt.NDArray[np.float64]:
    scaled = (values - values.max()) / temperature
    exp = np.exp(scaled)
    out: npt.NDArray[np.float64] = exp / exp.sum()
    return out


class EmbeddingEmotionClassifier:
    """Prototype classifier over an ``Embedder``'s space, mixed with a lexicon signal.

    ``examples`` maps each label to example sentences (default: the packaged
    ``emotion_examples.yaml``). ``lexicon_weight`` is the lexicon's share of the final
    distribution (0 = embeddings only); ``lexicon=None`` picks ``default_lexicon()``.
    The defaults were chosen by leave-one-out on the examples (see ``benchmarks/emotion.py``).
    """

    def __init__(
        self,
        embedder: Embedder,
        examples: Mapping[str, Sequence[str]] | None = None,
        *,
        method: Method = "centroid",
        k: int = 5,
        temperature: float = 0.05,
        lexicon: LexiconSignal | None = None,
        lexicon_weight: float = 0.2,
    ) -> None:
        if method not in ("centroid", "knn"):
            raise ValueError(f"unknown method {method!r}")
        if k < 1 or temperature <= 0 or not 0.0 <= lexicon_weight <= 1.0:
            raise ValueError("need k >= 1, temperature > 0 and 0 <= lexicon_weight <= 1")
        self._embedder = embedder
        self._examples = {label: list(s) for label, s in examples.items()} if examples is not None else None
        self.method: Method = method
        self.k = k
        self.temperature = temperature
        self.lexicon_weight = lexicon_weight
        self._lexicon = lexicon
        self.labels: tuple[str, ...] = ()
        self._matrix: Matrix | None = None  # one row per example (knn) or per label (centroid)
        self._owner: npt.NDArray[np.int64] | None = None  # row -> label index

    @property
    def lexicon(self) -> LexiconSignal:
        if self._lexicon is None:
            self._lexicon = default_lexicon()
        return self._lexicon

    async def start(self) -> None:
        if self._matrix is not None:
            return
        examples = self._examples if self._examples is not None else load_examples()
        examples = {label: s for label, s in examples.items() if s}
        if len(examples) < 2:
            raise ConfigError("the emotion classifier needs examples of at least two labels")
        labels = tuple(sorted(examples, key=lambda x: EMOTIONS.index(x) if x in EMOTIONS else len(EMOTIONS)))
        texts = [s for label in labels for s in examples[label]]
        owner = np.array([i for i, label in enumerate(labels) for _ in examples[label]], dtype=np.int64)
        vectors = np.asarray(await self._embedder.embed(texts), dtype=np.float32)
        self.set_example_vectors(labels, vectors, owner)
        _ = self.lexicon  # resolve (and log) the lexicon at start, not on the first message
        logger.info(
            "emotion classifier ready: %d examples of %s, %s, lexicon %s (weight %.2f)",
            len(texts),
            "/".join(labels),
            self.method,
            self.lexicon.name,
            self.lexicon_weight,
        )

    def set_example_vectors(
        self, labels: Sequence[str], vectors: Matrix, owner: npt.NDArray[np.int64]
    ) -> None:
        """Build the prototypes from already embedded examples (``owner[i]`` = label index)."""
        self.labels = tuple(labels)
        if self.method == "centroid":
            centroids = np.stack([vectors[owner == i].mean(axis=0) for i in range(len(labels))])
            norms = np.linalg.norm(centroids, axis=1, keepdims=True)
            self._matrix = (centroids / np.maximum(norms, 1e-12)).astype(np.float32)
            self._owner = np.arange(len(labels), dtype=np.int64)
        else:
            self._matrix = vectors.astype(np.float32)
            self._owner = owner

    async def aclose(self) -> None:
        self._matrix = None

    # --- scoring ------------------------------------------------------------------------

    def similarities(self, embedding: Vector) -> npt.NDArray[np.float64]:
        """Similarity of the embedding to each label's prototype, in ``self.labels`` order."""
        if self._matrix is None or self._owner is None:
            raise StorageError("the emotion classifier is not started")
        sims = self._matrix @ np.asarray(embedding, dtype=np.float32)
        if self.method == "centroid":
            return sims.astype(np.float64)
        out = np.empty(len(self.labels), dtype=np.float64)
        for i in range(len(self.labels)):
            own = np.sort(sims[self._owner == i])[::-1]
            out[i] = float(own[: self.k].mean())
        return out

    def embedding_scores(self, embedding: Vector) -> dict[str, float]:
        probs = _softmax(self.similarities(embedding), self.temperature)
        return dict(zip(self.labels, probs.tolist(), strict=True))

    def lexicon_scores(self, text: str) -> dict[str, float]:
        return lexicon_distribution(self.lexicon.evidence(text), self.labels)

    def combine(
        self, embedding_scores: Mapping[str, float], lexicon_scores: Mapping[str, float]
    ) -> dict[str, float]:
        w = self.lexicon_weight
        return {
            label: (1 - w) * embedding_scores.get(label, 0.0) + w * lexicon_scores.get(label, 0.0)
            for label in self.labels
        }

    def classify_embedded(self, text: str, embedding: Vector) -> EmotionResult:
        """The emotion of ``text`` whose embedding is known: no model run."""
        if not text.strip():
            return NEUTRAL_RESULT
        scores = self.embedding_scores(embedding)
        if self.lexicon_weight > 0:
            scores = self.combine(scores, self.lexicon_scores(text))
        return EmotionResult.from_scores(scores)

    async def detect(self, text: str, embedding: Vector | None = None) -> EmotionResult:
        if not text.strip():
            return NEUTRAL_RESULT
        if embedding is None:
            (embedding,) = await self._embedder.embed([text])
        return self.classify_embedded(text, embedding)


# --- a transformer by name ---------------------------------------------------------------------

# Labels of common emotion models, mapped onto the engine's.
LABEL_ALIASES: Mapping[str, str] = {
    "joy": "joy",
    "happy": "joy",
    "happiness": "joy",
    "love": "joy",
    "optimism": "joy",
    "sadness": "sadness",
    "sad": "sadness",
    "anger": "anger",
    "angry": "anger",
    "disgust": "anger",
    "annoyance": "anger",
    "fear": "fear",
    "nervousness": "fear",
    "surprise": "surprise",
    "neutral": "neutral",
    "others": "neutral",
}


def map_label(label: str) -> str:
    """A model's label in the engine's vocabulary; unknown labels are kept, lower-cased."""
    key = label.strip().lower()
    return LABEL_ALIASES.get(key, key)


class TransformerEmotionClassifier:
    """A Hugging Face ``text-classification`` model (name or local path), on one thread.

    ``start()`` raises ConfigError naming ``EMOTION_MODEL`` when ``transformers`` is not
    installed or the model cannot be loaded. The model's labels are mapped with
    ``LABEL_ALIASES`` and their scores summed per engine label. ``embedding`` is ignored.
    """

    def __init__(self, model: str, *, device: str | int | None = None, max_chars: int = 2000) -> None:
        self.model = model
        self._device = device
        self._max_chars = max_chars
        self._pipe: Callable[..., Any] | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self._pipe is not None:
            return
        try:
            import transformers
        except ImportError as exc:
            raise ConfigError(
                f"EMOTION_MODEL={self.model} needs the transformers package "
                "(pip install 'whisperengine[emotion-transformer]')",
                variable="EMOTION_MODEL",
            ) from exc
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="emotion-model")

        def load() -> Callable[..., Any]:
            return transformers.pipeline(
                "text-classification", model=self.model, device=self._device, top_k=None
            )

        try:
            self._pipe = await asyncio.get_running_loop().run_in_executor(executor, load)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            executor.shutdown(wait=False)
            raise ConfigError(
                f"cannot load the emotion model {self.model!r}: {exc}", variable="EMOTION_MODEL"
            ) from exc
        self._executor = executor
        logger.info("emotion model ready: %s", self.model)

    async def aclose(self) -> None:
        self._pipe = None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)

    def _run(self, text: str) -> EmotionResult:
        assert self._pipe is not None
        output = self._pipe(text[: self._max_chars], truncation=True)
        rows = output[0] if output and isinstance(output[0], list) else output
        scores: dict[str, float] = {}
        for row in rows:
            label = map_label(str(row["label"]))
            scores[label] = scores.get(label, 0.0) + float(row["score"])
        return EmotionResult.from_scores(scores)

    async def detect(self, text: str, embedding: Vector | None = None) -> EmotionResult:
        if self._pipe is None or self._executor is None:
            raise StorageError("the emotion model is not started")
        if not text.strip():
            return NEUTRAL_RESULT
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, text)
        except (RuntimeError, ValueError) as exc:
            logger.warning("emotion model %s failed on a message: %s", self.model, exc)
            return NEUTRAL_RESULT
