"""Failures injected into a fake API's calls, for tests of retries, timeouts and breakers.

A fake holds a :class:`Faults` and asks it, for each call, whether the call fails: the next
``times`` calls a fault applies to answer its ``status`` (after hanging ``hang_s``), or every
such call until :meth:`Faults.clear` when ``times`` is None.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Fault:
    status: int
    hang_s: float
    applies_to: Callable[[str], bool]
    """Whether a call (by the name the fake gives it: a method, a path) fails."""


class Faults:
    """The faults waiting for a fake's calls, first in, first out."""

    def __init__(self) -> None:
        self._queued: collections.deque[Fault] = collections.deque()
        self._forever: Fault | None = None

    def add(self, fault: Fault, times: int | None) -> None:
        """``fault`` for the next ``times`` calls it applies to; None: for every one."""
        if times is None:
            self._forever = fault
        else:
            self._queued.extend([fault] * times)

    def take(self, call: str) -> Fault | None:
        """The fault ``call`` answers with, if the next fault applies to it (used up if counted)."""
        fault = self._queued[0] if self._queued else self._forever
        if fault is None or not fault.applies_to(call):
            return None
        if self._queued:
            self._queued.popleft()
        return fault

    def clear(self) -> None:
        self._queued.clear()
        self._forever = None
