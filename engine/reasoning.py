"""``ReasoningFilter``: a reasoning model's thinking never reaches the user.

Models such as DeepSeek-R1 and Qwen3 write their reasoning between ``<think>`` and ``</think>``
(some ``<thinking>``) before the answer, in the same text stream. The engine passes every chunk
through this filter: text inside those tags is dropped, even when a tag is split across chunks,
so it is never posted, stored as the bot's turn or turned into a memory. A block left open at
the end of the stream is dropped too (a model cut off while thinking said nothing yet).
Reasoning that a server sends in a separate field (``reasoning_content``, Ollama's
``thinking``) is not read by the LLM backends at all.
"""

from __future__ import annotations

import re

_OPEN = re.compile(r"<(think|thinking)>", re.IGNORECASE)
_CLOSE = {tag: re.compile(rf"</{tag}>", re.IGNORECASE) for tag in ("think", "thinking")}
_LONGEST_TAG = len("</thinking>")


class ReasoningFilter:
    """Feed it the stream's chunks in order; it returns what may be shown of each."""

    def __init__(self) -> None:
        self._held = ""
        """Text not decided yet: the start of what may be a tag."""
        self._inside: str | None = None
        """The name of the open tag, while inside a block."""
        self.hidden_chars = 0
        """Characters of reasoning dropped so far."""
        self._shown_any = False
        self._closed_any = False

    @property
    def thinking(self) -> bool:
        """Whether the model is inside a reasoning block right now."""
        return self._inside is not None

    def feed(self, chunk: str) -> str:
        text = self._held + chunk
        self._held = ""
        shown: list[str] = []
        while text:
            if self._inside is None:
                opened = _OPEN.search(text)
                if opened is None:
                    keep = _partial_tag_start(text)
                    shown.append(text[:keep])
                    self._held = text[keep:]
                    break
                shown.append(text[: opened.start()])
                self._inside = opened.group(1).lower()
                text = text[opened.end() :]
            else:
                closed = _CLOSE[self._inside].search(text)
                if closed is None:
                    keep = max(0, len(text) - (_LONGEST_TAG - 1))
                    self.hidden_chars += keep
                    self._held = text[keep:]
                    break
                self.hidden_chars += closed.start()
                self._inside = None
                self._closed_any = True
                text = text[closed.end() :]
        visible = "".join(shown)
        if self._closed_any and not self._shown_any:  # the answer starts after the block
            visible = visible.lstrip()
        self._shown_any = self._shown_any or bool(visible)
        return visible

    def end(self) -> str:
        """What is left to show once the stream has ended."""
        held, self._held = self._held, ""
        if self._inside is not None:
            self.hidden_chars += len(held)
            return ""
        return held


def _partial_tag_start(text: str) -> int:
    """Where a possible beginning of an opening tag at the end of ``text`` starts (len: none)."""
    start = text.rfind("<", max(0, len(text) - len("<thinking>")))
    if start == -1:
        return len(text)
    tail = text[start:].lower()
    if any(tag.startswith(tail) for tag in ("<think>", "<thinking>")):
        return start
    return len(text)
