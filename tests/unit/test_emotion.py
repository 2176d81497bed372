"""Emotion: the engine's word-list fallback, the result type, the lexicon signals, the data sets,
the transformer's configuration errors, and the pipeline reporting an emotion."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from engine.emotion import EMOTIONS, EmotionResult, LexiconEmotionDetector
from engine.errors import ConfigError
from engine.events import UniversalMessage
from inference.emotion import (
    EmbeddingEmotionClassifier,
    TransformerEmotionClassifier,
    WordListLexicon,
    lexicon_distribution,
    load_examples,
    map_label,
)
from tests.fakes.ports import FakeEmbedder, FakeLLM

ROOT = Path(__file__).resolve().parents[2]
EVAL = ROOT / "benchmarks" / "data" / "emotion_eval.jsonl"


def eval_rows() -> list[dict[str, str]]:
    return [json.loads(line) for line in EVAL.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- data ------------------------------------------------------------------------------


def test_examples_cover_every_label() -> None:
    examples = load_examples()
    assert set(examples) == set(EMOTIONS)
    assert all(len(sentences) >= 20 for sentences in examples.values())


def test_evaluation_set_is_large_balanced_and_held_apart_from_the_examples() -> None:
    rows = eval_rows()
    assert len(rows) >= 300
    labels = [row["label"] for row in rows]
    assert set(labels) == set(EMOTIONS)
    assert min(labels.count(label) for label in EMOTIONS) >= 40
    texts = [" ".join(row["text"].lower().split()) for row in rows]
    assert len(set(texts)) == len(texts), "duplicate evaluation sentences"
    examples = {" ".join(s.lower().split()) for sentences in load_examples().values() for s in sentences}
    assert not examples & set(texts), "a sentence is both an example and an evaluation sentence"


# --- the engine's fallback -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("I'm so happy, this is wonderful!", "joy"),
        ("I feel lonely and sad tonight", "sadness"),
        ("This is ridiculous, I'm furious", "anger"),
        ("I'm scared and anxious about tomorrow", "fear"),
        ("Whoa, no way!", "surprise"),
        ("The meeting is at noon.", "neutral"),
    ],
)
async def test_word_list_detector(text: str, label: str) -> None:
    result = await LexiconEmotionDetector().detect(text)
    assert result.label == label
    assert 0 < result.confidence <= 1
    assert abs(sum(result.scores.values()) - 1) < 1e-9


async def test_word_list_detector_ignores_an_embedding_and_empty_text_is_neutral() -> None:
    detector = LexiconEmotionDetector()
    assert (await detector.detect("I'm so happy", [0.0] * 8)).label == "joy"
    assert (await detector.detect("   ")).label == "neutral"


def test_result_from_scores_normalises_and_picks_the_best() -> None:
    result = EmotionResult.from_scores({"joy": 3.0, "fear": 1.0})
    assert result.label == "joy" and result.confidence == pytest.approx(0.75)
    assert dict(result.scores) == pytest.approx({"joy": 0.75, "fear": 0.25})
    assert EmotionResult.from_scores({"joy": 0.0}).label == "neutral"


# --- lexicon signals ----------------------------------------------------------------------------


def test_lexicon_distribution_gives_neutral_way_to_evidence() -> None:
    none = lexicon_distribution({}, EMOTIONS)
    assert none["neutral"] == 1.0
    some = lexicon_distribution(WordListLexicon().evidence("so angry and mad"), EMOTIONS)
    assert some["anger"] == pytest.approx(2 / 3)
    assert some["neutral"] == pytest.approx(1 / 3)


def test_vader_nrc_lexicon() -> None:
    pytest.importorskip("vaderSentiment")
    pytest.importorskip("nrclex")
    from inference.emotion import VaderNRCLexicon

    lexicon = VaderNRCLexicon()
    assert lexicon.valence("I love this, it's wonderful") > 0.5
    assert lexicon.valence("This is awful and I hate it") < -0.5
    # NRC words reached through crude lemmas ("scared" -> "scare"); disgust counts as anger.
    assert lexicon.nrc_counts("I was scared")["fear"] >= 1
    assert lexicon.nrc_counts("that was disgusting")["anger"] >= 1

    def top(text: str) -> str:
        dist = lexicon_distribution(lexicon.evidence(text), EMOTIONS)
        return max(dist, key=lambda k: dist[k])

    assert top("What a wonderful happy day") == "joy"
    assert top("I am so angry and furious") == "anger"
    assert top("I'm terrified, I panic about the surgery") == "fear"
    assert top("I cried all night, I feel so lonely") == "sadness"
    assert top("The bus comes at nine") == "neutral"


# --- the embedding classifier on a toy embedder -------------------------------------------------


async def test_precomputed_embedding_gives_the_same_result_as_computing_it() -> None:
    embedder = FakeEmbedder()
    examples = {
        "joy": ["happy happy day", "happy party fun"],
        "anger": ["angry shouting rage", "angry traffic rage"],
        "neutral": ["bus timetable", "dinner recipe"],
    }
    classifier = EmbeddingEmotionClassifier(embedder, examples, lexicon=WordListLexicon())
    await classifier.start()
    text = "such a happy fun day"
    (vector,) = await embedder.embed([text])
    computed, given = await classifier.detect(text), await classifier.detect(text, vector)
    assert computed == given
    assert computed.label == "joy"
    assert classifier.labels == ("joy", "anger", "neutral")


async def test_classifier_validates_its_options() -> None:
    with pytest.raises(ValueError, match="method"):
        EmbeddingEmotionClassifier(FakeEmbedder(), method="svm")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        EmbeddingEmotionClassifier(FakeEmbedder(), lexicon_weight=1.5)
    with pytest.raises(ConfigError):
        await EmbeddingEmotionClassifier(FakeEmbedder(), {"joy": ["yay"]}).start()


# --- a transformer by name ----------------------------------------------------------------------


async def test_transformer_not_installed_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ConfigError) as info:
        await TransformerEmotionClassifier("j-hartmann/emotion-english-distilroberta-base").start()
    assert info.value.variable == "EMOTION_MODEL"
    assert "transformers" in str(info.value)


def test_model_labels_map_onto_the_engines() -> None:
    assert map_label("LABEL_JOY".removeprefix("LABEL_")) == "joy"
    assert map_label("Disgust") == "anger"
    assert map_label("love") == "joy"
    assert map_label("sadness") == "sadness"
    assert map_label("curiosity") == "curiosity"


# --- the pipeline -------------------------------------------------------------------------------


def dm(text: str) -> UniversalMessage:
    return UniversalMessage(content=text, user_id="1", user_name="Alice", platform="test", channel_id="c")


async def test_pipeline_reports_the_emotion_and_tells_the_model(make_engine) -> None:
    llm = FakeLLM("That's great news!")
    async with make_engine(llm) as engine:
        response = await engine.handle(dm("I'm so happy, I passed my exam!")).collect()
        assert response.emotion == "joy"
        assert "sounds like joy" in llm.prompts[-1][-2].content


async def test_pipeline_hands_its_recall_embedding_to_the_classifier(make_engine) -> None:
    llm = FakeLLM("Oh no.")
    async with make_engine(llm) as engine:
        examples = {
            "sadness": ["Alice: my goldfish died", "Alice: goldfish funeral today"],
            "neutral": ["Alice: bus timetable", "Alice: dinner recipe"],
        }
        # Same embedder as recall; no lexicon, so only the embedding can decide.
        engine.emotion = EmbeddingEmotionClassifier(FakeEmbedder(), examples, lexicon_weight=0.0)
        await engine.emotion.start()
        response = await engine.handle(dm("the goldfish died")).collect()
        assert response.emotion == "sadness"
