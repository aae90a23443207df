"""Clock: the one source of time for everything that measures it or waits on it, injectable for tests.

One interface, `Clock`: `now()` (monotonic seconds), `call_at(when, callback)` and
`call_later(delay, callback)` (timers, each returning a handle with `cancel()`), and
`async sleep(delay)`; `timeout(delay)` bounds an awaited block on it (`async with clock.timeout(1.0):`
raises `TimeoutError` at the limit, as `asyncio.timeout` does on the loop's clock). Production uses `MONOTONIC`, whose time base is `time.monotonic()`: its timers
run on the running event loop, converted to delays on that same base, so a deadline computed from
`now()` and one passed to `call_at` are on one clock. Tests use one fake clock
(tests/support/clock.py) whose `advance(seconds)` runs the timers that fall due, in order, with
`now()` reading each one's due time as it runs: a timeout then fires at an exact instant.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from meshd.expiry import Expiry


class Timer(Protocol):
    """A pending timer: `cancel()` stops it (harmless once it has run)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Monotonic seconds as a float, and timers and sleeps on the same time base.

    Implementations never go backwards. Callers on a hot path read `now` once into a local or
    attribute (`self._now = clock.now`) and call the timers only on their (lazy) timer paths.
    """

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer: ...

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer: ...

    async def sleep(self, delay: float) -> None: ...

    def timeout(self, delay: float) -> Timeout: ...


class Timeout:
    """`async with clock.timeout(delay):` -- the block is cancelled `delay` seconds after entry on
    `clock`, and the cancellation leaves the block as `TimeoutError`; a cancellation from anyone
    else goes on as `CancelledError` (as with `asyncio.timeout`). `expired` says whether the timer
    fired. One use per instance."""

    __slots__ = ("_clock", "_delay", "_expiry", "_timer")

    def __init__(self, clock: Clock, delay: float) -> None:
        self._clock = clock
        self._delay = delay
        self._expiry: Expiry | None = None
        self._timer: Timer | None = None

    @property
    def expired(self) -> bool:
        return self._expiry is not None and self._expiry.expired

    async def __aenter__(self) -> Timeout:
        if self._expiry is not None:
            raise RuntimeError("a Timeout is entered once")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Timeout must be used inside a task")
        self._expiry = expiry = Expiry(task)
        self._timer = self._clock.call_later(self._delay, expiry.fire)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # never suspends: compiled callers exit this on their exception path (docs/architecture.md)
        assert self._expiry is not None and self._timer is not None
        self._timer.cancel()
        if self._expiry.caused() and isinstance(exc, asyncio.CancelledError):
            raise TimeoutError from exc


class MonotonicClock:
    """The production clock: `time.monotonic()`, with timers on the running event loop.

    `now` is the C function itself rather than a method wrapping it: the proxy reads the clock
    several times per request, and a Python-level wrapper call costs more than the read.
    `call_at` converts its instant to a delay on the same clock, so the loop's own time base
    (uvloop's millisecond-resolution, per-iteration cached clock) never leaks into a deadline.
    """

    __slots__ = ()

    now = staticmethod(time.monotonic)

    def call_at(self, when: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_later(when - time.monotonic(), callback)

    def call_later(self, delay: float, callback: Callable[[], object]) -> Timer:
        return asyncio.get_running_loop().call_later(delay, callback)

    async def sleep(self, delay: float) -> None:
        await asyncio.sleep(delay)

    def timeout(self, delay: float) -> Timeout:
        return Timeout(self, delay)


MONOTONIC = MonotonicClock()
