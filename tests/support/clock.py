"""FakeClock: time that moves only when a test advances it; the one fake `meshd.clock.Clock`.

`advance(seconds)` runs every timer that falls due within the step, in due-time order (ties in
the order they were armed), with `now()` reading the timer's own due time while it runs; a timer
armed by a callback runs in the same `advance` if it falls due within it. `sleep(delay)` awaits a
future that the `advance` reaching its due time resolves (the sleeping task resumes when the test
next yields to the event loop, e.g. `await asyncio.sleep(0)`). With `autoadvance=True` a sleep
instead moves the clock on by its own delay at once (a test of code that sleeps, where nothing else
needs the time to stand still). Every sleep's delay is recorded in `slept`, and
`await wait_sleeps(n)` returns once `n` sleeps have begun (a test waits for the code under test to
go to sleep before it moves the time). `timeout(delay)` is `meshd.clock.Timeout` on this clock: the
block ends with `TimeoutError` when an `advance` reaches its limit. `advance_to(when)` moves to an
instant (a test counting whole milliseconds passes `ms / 1000`, free of summed rounding).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from meshd.clock import Clock, Timeout

T = TypeVar("T")


class FakeTimer:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    __slots__ = ("_now", "_timers", "_seq", "calls", "autoadvance", "slept", "_sleep_waiters")

    def __init__(self, start: float = 1000.0, *, autoadvance: bool = False) -> None:
        self.autoadvance = autoadvance
        #: the delay of every sleep, in order
        self.slept: list[float] = []
        self._now = start
        self._timers: list[tuple[float, int, FakeTimer]] = []
        self._seq = itertools.count()
        #: how many timers were armed (call_at and call_later), fired or not
        self.calls = 0
        self._sleep_waiters: list[tuple[int, asyncio.Future[None]]] = []

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

    def timeout(self, delay: float) -> Timeout:
        return Timeout(self, delay)

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        self._wake_sleep_waiters()
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

    async def sleep_until(self, when: float) -> None:
        """Sleep until the instant `when`; at once (no sleep recorded) if it is not in the future."""
        if when > self._now:
            await self.sleep(when - self._now)

    async def wait_sleeps(self, count: int) -> None:
        """Return once `count` sleeps have begun in all (counting those already in `slept`)."""
        if len(self.slept) >= count:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleep_waiters.append((count, future))
        await future

    def _wake_sleep_waiters(self) -> None:
        waiting = self._sleep_waiters
        if waiting:
            self._sleep_waiters = []
            for count, future in waiting:
                if future.done():
                    continue
                if len(self.slept) >= count:
                    future.set_result(None)
                else:
                    self._sleep_waiters.append((count, future))

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
        self.advance_to(self._now + seconds)

    def advance_to(self, until: float) -> None:
        """Move the time to the instant `until`, running the timers due by then, in order."""
        if until < self._now:
            raise ValueError("time does not go backwards")
        timers = self._timers
        while timers and timers[0][0] <= until:
            when, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            self._now = max(self._now, when)
            timer.cancelled = True  # ran: a later cancel() is harmless
            timer.callback()
        self._now = until


async def settle(clock: Clock, work: Awaitable[T], limit_s: float) -> T:
    """Await `work`, whose time limit of `limit_s` runs on `clock` (a daemon's drain at a test's end).

    On a FakeClock nothing would end that limit: when `work` has not finished after `limit_s` of
    real time (the time it has on the real clock), the fake clock is moved on by `limit_s`, so the
    limit falls due, and `work` is awaited to its end.
    """
    task = asyncio.ensure_future(work)
    if isinstance(clock, FakeClock):
        done, _ = await asyncio.wait({task}, timeout=limit_s)
        if not done:
            clock.advance(limit_s)
    return await task
