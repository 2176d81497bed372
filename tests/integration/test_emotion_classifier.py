"""EmbeddingEmotionClassifier on the real all-MiniLM-L6-v2 embedder, and a transformer model
loaded by path (a tiny one this test builds; no download)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from engine.emotion import EMOTIONS
from engine.errors import ConfigError
from engine.memory import memory_text
from inference.emotion import EmbeddingEmotionClassifier, TransformerEmotionClassifier, WordListLexicon
from inference.minilm import MiniLMEmbedder

CLEAR = {
    "joy": [
        "We just won the championship, I'm over the moon!",
        "my niece was born this morning and I'm so happy",
        "Best vacation of my life, everything was perfect",
    ],
    "sadness": [
        "I miss my grandfather every day since he passed",
        "I've felt so alone since the breakup",
        "nobody came to my graduation and I cried in my room",
    ],
    "anger": [
        "The mechanic overcharged me and lied about it, I'm furious",
        "I'm sick of my roommate never doing the dishes, it makes me so mad",
        "They cancelled my flight and won't refund me. Outrageous!",
    ],
    "fear": [
        "I'm terrified about my biopsy results tomorrow",
        "There's someone trying to open my front door and I'm scared",
        "I'm so anxious about the layoffs I can't sleep",
    ],
    "surprise": [
        "Wait, you're moving to Iceland?! Since when?",
        "No way, my old teacher is my new neighbour!",
        "Whoa, I never expected that ending",
    ],
    "neutral": [
        "How many grams are in a pound?",
        "I'm going to the pharmacy after work",
        "The meeting got moved to Wednesday at 10",
    ],
}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def embedder() -> AsyncIterator[MiniLMEmbedder]:
    model = MiniLMEmbedder()
    await model.start()
    yield model
    await model.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def classifier(embedder: MiniLMEmbedder) -> AsyncIterator[EmbeddingEmotionClassifier]:
    model = EmbeddingEmotionClassifier(embedder)  # the packaged examples, the default lexicon
    await model.start()
    yield model
    await model.aclose()


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.mark.parametrize("label", EMOTIONS)
async def test_clear_messages_get_their_label(classifier: EmbeddingEmotionClassifier, label: str) -> None:
    # Most, not all: surprise is the weakest class (recall 0.58 on the evaluation set, mostly
    # lost to neutral), so one of its three is required; two of three for the others.
    results = [await classifier.detect(text) for text in CLEAR[label]]
    assert sum(r.label == label for r in results) >= (1 if label == "surprise" else 2), [
        (r.label, dict(r.scores)) for r in results
    ]
    for result in results:
        assert set(result.scores) == set(EMOTIONS)
        assert sum(result.scores.values()) == pytest.approx(1.0)


async def test_the_pipelines_embedding_gives_the_same_result_as_computing_it(
    classifier: EmbeddingEmotionClassifier, embedder: MiniLMEmbedder
) -> None:
    for texts in CLEAR.values():
        for text in texts:
            (vector,) = await embedder.embed([text])
            assert await classifier.detect(text, vector) == await classifier.detect(text)
    # The recall embedding carries the speaker's name; clear messages keep their label.
    text = CLEAR["fear"][0]
    (named,) = await embedder.embed([memory_text("Alice", text)])
    assert (await classifier.detect(text, named)).label == "fear"


async def test_knn_and_word_list_options(embedder: MiniLMEmbedder) -> None:
    model = EmbeddingEmotionClassifier(embedder, method="knn", k=3, lexicon=WordListLexicon())
    await model.start()
    assert (await model.detect(CLEAR["anger"][0])).label == "anger"
    assert (await model.detect("")).label == "neutral"


@pytest.mark.slow
async def test_transformer_path_that_does_not_exist_names_the_setting(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    (tmp_path / "empty-model").mkdir()
    with pytest.raises(ConfigError) as info:
        await TransformerEmotionClassifier(str(tmp_path / "empty-model")).start()
    assert info.value.variable == "EMOTION_MODEL"


@pytest.mark.slow
async def test_transformer_model_by_path_classifies(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "am", "happy", "sad", "today"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    labels = ["joy", "sadness", "anger", "fear", "surprise", "neutral", "disgust"]
    config = transformers.BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model_dir = tmp_path / "tiny-emotion"
    transformers.BertForSequenceClassification(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    classifier = TransformerEmotionClassifier(str(model_dir))
    await classifier.start()
    try:
        result = await classifier.detect("i am happy today")
        assert result.label in EMOTIONS  # disgust is folded into anger
        assert set(result.scores) <= set(EMOTIONS)
        assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-4)
    finally:
        await classifier.aclose()
