"""``ReplyCutter``: where a reply ends.

A small model does not always stop when its answer is done: it goes on with the user's next
line (``"\\nUser: ..."``), or rambles on to the token cap and is cut off mid-sentence. The engine
passes each chunk of the stream (after the ``ReasoningFilter``) through a cutter, which

- ends the reply before a stop sequence (``Prompt.stop``: a new line that starts with a user's
  name and a colon), holding back text that may be the start of one;
- ends it after ``max_sentences`` sentences: a companion answers in a few sentences unless asked
  for more (:func:`wants_long_reply`, then there is no sentence cap);
- after the reply's first sentence (which is shown as it is written), shows whole sentences
  only: at the token cap (``max_chunks`` chunks, about one chunk a token) the sentence being
  written is dropped, so that a reply ends on a whole sentence.

When ``done`` is set the engine stops reading and closes the stream, which stops the backend.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)")
_NOT_AN_END = re.compile(r"(?:\b(?:Mr|Mrs|Ms|Dr|St|vs|e\.g|i\.e)|\b[A-Z])\.$")

_ASKS_FOR_MORE = re.compile(
    r"\b(?:tell me (?:more|everything|all)|more details?|in (?:more )?detail|details|explain|"
    r"elaborate|describe|story|poem|essay|list|step[- ]by[- ]step|steps|recipe|write me|"
    r"long(?:er)? (?:answer|reply|version)|go on|keep going|continue)\b",
    re.IGNORECASE,
)


def wants_long_reply(message: str) -> bool:
    """Whether the message asks for more than a few sentences (a story, details, a list...)."""
    return _ASKS_FOR_MORE.search(message) is not None


def sentence_ends(text: str) -> list[int]:
    """Positions just after each finished sentence of ``text`` (a finished sentence is followed
    by whitespace; ``"Dr."`` and initials do not end one)."""
    ends = []
    for match in _SENTENCE_END.finditer(text):
        if _NOT_AN_END.search(text[: match.end()]) is None:
            ends.append(match.end())
    return ends


class ReplyCutter:
    """Feed it the reply's chunks in order; it returns what may be shown of each."""

    def __init__(
        self,
        *,
        stop: Sequence[str] = (),
        max_sentences: int | None = None,
        max_chunks: int | None = None,
    ) -> None:
        self._stop = tuple(s for s in stop if s)
        self._max_sentences = max_sentences if max_sentences else None
        self._max_chunks = max_chunks
        self._shown = ""
        self._held = ""
        self._chunks = 0
        self.done = False
        """The reply is complete: read no more of the stream."""
        self.reason: str | None = None
        """Why it ended early: ``"stop"`` (a stop sequence), ``"sentences"`` or ``"length"``."""

    def feed(self, chunk: str) -> str:
        """What may be shown now, with ``chunk`` (one chunk of the stream) added."""
        self._chunks += 1
        return self._take(chunk)

    def end(self, rest: str = "") -> str:
        """What is left to show once the stream has ended (by itself or at the token cap), with
        ``rest`` (text held back before the cutter, not a chunk of its own) added."""
        visible = self._take(rest)
        held, self._held = self._held, ""
        if self.done:
            return visible
        at_cap = self._max_chunks is not None and self._chunks >= self._max_chunks - 1
        if at_cap and held.strip() and sentence_ends(self._shown + " "):
            self.reason = "length"  # an unfinished sentence after whole ones: left out
            return visible
        self._shown += held
        return visible + held

    def _take(self, chunk: str) -> str:
        if self.done:
            return ""
        text = self._held + chunk
        self._held = ""
        keep = len(text)
        hits = [found for found in (text.find(stop) for stop in self._stop) if found >= 0]
        if hits:
            keep = min(hits)
            self._finish("stop")
        else:
            keep -= _partial_stop_length(text, self._stop)
        shown = self._shown + text[:keep]
        if self._max_sentences is not None:
            ends = sentence_ends(shown)
            if len(ends) >= self._max_sentences:
                keep = max(ends[self._max_sentences - 1] - len(self._shown), 0)
                self._finish("sentences")
        if not self.done:
            # After the first sentence, whole sentences only: the cap may cut off the one being written.
            last_end = max([0, *sentence_ends(shown)])
            if last_end:
                keep = min(keep, max(last_end - len(self._shown), 0))
        visible = text[:keep]
        if not self.done:
            self._held = text[keep:]
        self._shown += visible
        return visible

    def _finish(self, reason: str) -> None:
        self.done = True
        self.reason = reason


def _partial_stop_length(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that is the start of a stop sequence."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[len(text) - size :]):
                longest = size
                break
    return longest
