"""FakeClock: time that moves only when a test advances it; the one fake `meshd.clock.Clock`.

`advance(seconds)` runs every timer that falls due within the step, in due-time order (ties in
the order they were armed), with `now()` reading the timer's own due time while it runs; a timer
armed by a callback runs in the same `advance` if it falls due within it. `sleep(delay)` awaits a
future that the `advance` reaching its due time resolves (the sleeping task resumes when the test
next yields to the event loop, e.g. `await asyncio.sleep(0)`). With `autoadvance=True` a sleep
instead moves the clock on by its own delay at once (a test of code that sleeps, where nothing else
needs the time to stand still). Every sleep's delay is recorded in `slept`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable


class FakeTimer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    __slots__ = ("_now", "_timers", "_seq", "calls", "autoadvance", "slept")

    def __init__(self, start: float = 1000.0, *, autoadvance: bool = False) -> None:
        self.autoadvance = autoadvance
        #: the delay of every sleep, in order
        self.slept: list[float] = []
        self._now = start
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()
        #: how many timers were armed (call_at and call_later), fired or not
        self.calls = 0

    def now(self) -> float:
        return self._now

    def __call__(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimer:
        self.calls += 1
        timer = FakeTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        return self.call_at(self._now + delay, callback)

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        if self.autoadvance:
            self.advance(max(delay, 0.0))
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(delay, wake)
        try:
            await future
        finally:
            timer.cancel()

    @property
    def pending(self) -> list[FakeTimer]:
        """The timers not yet run nor cancelled, soonest first."""
        return [t for _, _, t in sorted(self._timers) if not t.cancelled]

    @property
    def armed(self) -> int:
        """How many timers are pending."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    def next_due(self) -> float | None:
        """When the soonest pending timer falls due, or None."""
        pending = self.pending
        return pending[0].when if pending else None

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time does not go backwards")
        until = self._now + seconds
        timers = self._timers
        while timers and timers[0][0] <= until:
            when, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.cancelled = True  # ran: a later cancel() is harmless
            timer.callback()
        self._now = until
