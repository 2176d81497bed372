"""Where a reply ends: before a stop sequence (even one split across chunks), after its sentence
cap, on a whole sentence at the token cap (after the first sentence, whole sentences are shown);
and through the engine, which then stops reading."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from engine.events import UniversalMessage
from engine.pipeline import EngineConfig
from engine.reply_cut import ReplyCutter, sentence_ends, wants_long_reply
from tests.fakes.ports import FakeLLM

STOPS = ("\nUser:", "\nAnn:")


def cut(chunks: list[str], **limits: object) -> tuple[str, ReplyCutter]:
    cutter = ReplyCutter(**limits)  # type: ignore[arg-type]
    shown = []
    for chunk in chunks:
        shown.append(cutter.feed(chunk))
        if cutter.done:
            break
    shown.append(cutter.end())
    return "".join(shown), cutter


def test_a_reply_ends_before_the_users_next_line_even_split_across_chunks() -> None:
    text, cutter = cut(["Sure, here", " you go!", "\n", "An", "n: and then I", " said"], stop=STOPS)
    assert text == "Sure, here you go!" and cutter.reason == "stop"


def test_text_that_only_looks_like_the_start_of_a_stop_sequence_is_shown() -> None:
    text, cutter = cut(["Line one\n", "Anna came by."], stop=STOPS)
    assert text == "Line one\nAnna came by." and not cutter.done


def test_a_usual_reply_ends_after_its_sentences() -> None:
    text, cutter = cut(["Hi there! How", " are you?", " I am fine.", " And you?"], max_sentences=2)
    assert text == "Hi there! How are you?" and cutter.reason == "sentences"


def test_initials_and_titles_do_not_end_a_sentence() -> None:
    assert len(sentence_ends("Dr. Who met J. Smith at 3.30 today. Then they left. ")) == 2


def test_at_the_token_cap_an_unfinished_sentence_is_left_out() -> None:
    chunks = ["One. "] * 20 + ["and then"] * 20
    text, cutter = cut(chunks, max_chunks=40)
    assert text == ("One. " * 20).rstrip() and cutter.reason == "length"


def test_a_reply_that_stops_by_itself_keeps_its_last_words() -> None:
    text, cutter = cut(["Good night"], max_chunks=40, max_sentences=3, stop=STOPS)
    assert text == "Good night" and cutter.reason is None


def test_messages_that_ask_for_more_are_recognised() -> None:
    for message in ("Tell me more about it", "Can you explain how?", "write me a poem", "a story please"):
        assert wants_long_reply(message), message
    for message in ("I had pasta today", "How are you?", "Do you remember my dog?"):
        assert not wants_long_reply(message), message


@given(
    text=st.text(alphabet="ab .!?\nAnUser:", max_size=200),
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=60),
)
def test_whatever_the_chunks_the_reply_is_the_text_up_to_the_first_stop(text: str, sizes: list[int]) -> None:
    chunks, rest = [], text
    for size in sizes * (len(text) // max(sum(sizes), 1) + 1):
        if not rest:
            break
        chunks.append(rest[:size])
        rest = rest[size:]
    shown, _ = cut([*chunks, rest] if rest else chunks, stop=STOPS)
    ends = [i for i in (text.find(s) for s in STOPS) if i >= 0]
    assert shown == text[: min(ends)] if ends else shown == text


def dm(text: str) -> UniversalMessage:
    return UniversalMessage(
        content=text, user_id="u1", user_name="Ann", platform="test", channel_id="dm-u1", is_direct=True
    )


async def test_the_engine_stops_reading_where_the_reply_ends(make_engine) -> None:  # type: ignore[no-untyped-def]
    llm = FakeLLM("Of course. Here it is.\nAnn: thanks!\nEmber: you're welcome")
    async with make_engine(llm, EngineConfig(reply_max_sentences=3)) as engine:
        stream = engine.handle(dm("can you help?"))
        chunks = [chunk async for chunk in stream]
        assert stream.response.content == "Of course. Here it is."
        assert "".join(chunks) == "Of course. Here it is."


async def test_the_engine_caps_usual_replies_but_not_one_asked_to_be_longer(make_engine) -> None:  # type: ignore[no-untyped-def]
    long = "One thing. Two things. Three things. Four things. Five things."
    llm = FakeLLM(long)
    async with make_engine(llm, EngineConfig(reply_max_sentences=2)) as engine:
        usual = await engine.handle(dm("what do you think?")).collect()
        assert usual.content == "One thing. Two things."
        asked = await engine.handle(dm("tell me more")).collect()
        assert asked.content == long
        assert len(re.findall(r"\.", asked.content)) == 5


def test_after_the_first_sentence_whole_sentences_are_shown() -> None:
    cutter = ReplyCutter(max_chunks=100)
    shown = [cutter.feed(c) for c in ["Hello", " there.", " How", " are", " you?", " Fine"]]
    assert shown == ["Hello", " there.", "", "", "", " How are you?"]
    assert cutter.end() == " Fine"  # the stream ended by itself: its last words are shown
