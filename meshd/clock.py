"""Clock: the one source of time for everything that measures it, injectable for tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds as a float. Implementations never go backwards."""

    def now(self) -> float: ...


class MonotonicClock:
    """The production clock: `time.monotonic()`.

    `now` is the C function itself rather than a method wrapping it: the proxy reads the clock
    several times per request, and a Python-level wrapper call costs more than the read.
    """

    __slots__ = ()

    now = staticmethod(time.monotonic)


MONOTONIC = MonotonicClock()
