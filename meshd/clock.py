"""Clock: the one source of time for everything that measures it, injectable for tests."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds as a float. Implementations never go backwards."""

    def now(self) -> float: ...


class MonotonicClock:
    """The production clock: `time.monotonic()`."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()


MONOTONIC = MonotonicClock()
