"""Admission control: how many requests a router serves at once, and how many may wait for a turn.

How this works. Every request the listener runs asks its router's `Admission` first. While fewer
than `max_concurrent` are being served, `enter()` admits it at once: one comparison and one
increment, nothing else on the common path. Past that, a request waits for a turn in a FIFO queue
of at most `max_pending` (`wait()`); when a served request ends, `leave()` hands its turn straight
to the oldest waiter, so the count never dips and a newcomer cannot overtake the queue. A request
that finds the queue full, or waits longer than `pending_timeout_s`, is refused with `Overloaded`
(503, `Retry-After`, never sent upstream). With `max_pending` 0 a request past the limit is refused
at once.

Why a bounded queue and a timeout rather than refusing at once only: a short burst (a batch job's
fan-out, a reconnect storm) is absorbed without errors, while a sustained overload still sheds
load within `pending_timeout_s`, before clients' own timeouts fire and retries pile up.

The queue's timer is lazy, as the connection pool's: one timer for the oldest waiter, re-armed when
it fires early; it runs on meshd's clock, so a test's fake clock drives it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final, Protocol

from meshd.clock import MONOTONIC, Clock, Timer
from meshd.errors import Overloaded

#: the defaults of `maxConcurrentRequests`, `maxPendingRequests` and `pendingTimeoutMs`
DEFAULT_MAX_CONCURRENT: Final = 10_000
DEFAULT_MAX_PENDING: Final = 1_000
DEFAULT_PENDING_TIMEOUT_S: Final = 1.0
#: uvloop timers may fire a hair early (see listener.py)
_TIMER_SLACK_S: Final = 0.005

_Waiter = tuple[float, "asyncio.Future[None]"]


class LatencySampler(Protocol):
    """Told each admitted request's latency (meshd/adaptive.py's `GradientLimit`)."""

    def sample(self, latency: float, now: float) -> None: ...


class Admission:
    """One router's admission state, shared by all of its listeners."""

    __slots__ = (
        "label",
        "max_concurrent",
        "max_pending",
        "pending_timeout_s",
        "inflight",
        "rejected_full",
        "rejected_timeout",
        "queued",
        "_waiters",
        "_clock",
        "_timer",
        "sampler",
    )

    def __init__(
        self,
        label: str,
        *,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_pending: int = DEFAULT_MAX_PENDING,
        pending_timeout_s: float = DEFAULT_PENDING_TIMEOUT_S,
        clock: Clock = MONOTONIC,
    ) -> None:
        self.label = label
        self.max_concurrent = max_concurrent
        self.max_pending = max_pending
        self.pending_timeout_s = pending_timeout_s
        #: requests being served now (admitted and not yet answered)
        self.inflight = 0
        #: requests refused because the queue was full (a counter)
        self.rejected_full = 0
        #: requests refused after waiting `pending_timeout_s` (a counter)
        self.rejected_timeout = 0
        #: requests that had to wait for a turn (a counter)
        self.queued = 0
        self._waiters: deque[_Waiter] = deque()
        self._clock = clock
        self._timer: Timer | None = None
        #: the adaptive limit that moves `max_concurrent` (None: the limit is static); the
        #: listener gives it each admitted request's latency
        self.sampler: LatencySampler | None = None

    @property
    def pending(self) -> int:
        """Requests waiting for a turn now."""
        return len(self._waiters)

    def enter(self) -> bool:
        """Admit a request at once if there is room and nobody is waiting; True when admitted."""
        if self.inflight < self.max_concurrent and not self._waiters:
            self.inflight += 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a turn (after `enter()` said no); raises `Overloaded` when refused.

        On return the request is admitted: it must call `leave()` when it ends.
        """
        if self.inflight < self.max_concurrent and not self._waiters:
            self.inflight += 1  # a turn came free between `enter()` and here
            return
        if len(self._waiters) >= self.max_pending:
            self.rejected_full += 1
            raise Overloaded(
                f"router {self.label} is overloaded: {self.max_concurrent} requests in flight "
                f"(maxConcurrentRequests) and {self.max_pending} waiting (maxPendingRequests)"
            )
        self.queued += 1
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self._clock.now(), waiter)
        self._waiters.append(entry)
        if self._timer is None:
            self._timer = self._clock.call_later(self.pending_timeout_s, self._on_timer)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.leave()  # handed a turn just as the request was cancelled: pass it on
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
            raise

    def leave(self) -> None:
        """A served request ended: its turn goes to the oldest waiter, or the count drops (also
        when an adaptive limit has just been lowered below the requests in flight)."""
        waiters = self._waiters
        while waiters and self.inflight <= self.max_concurrent:
            waiter = waiters.popleft()[1]
            if not waiter.done():
                waiter.set_result(None)
                return
        self.inflight -= 1

    def admit_waiting(self) -> None:
        """The limit was raised (meshd/adaptive.py): waiters take the new turns at once."""
        waiters = self._waiters
        while waiters and self.inflight < self.max_concurrent:
            waiter = waiters.popleft()[1]
            if not waiter.done():
                self.inflight += 1
                waiter.set_result(None)

    def _on_timer(self) -> None:
        self._timer = None
        waiters = self._waiters
        now = self._clock.now()
        timeout = self.pending_timeout_s
        while waiters:
            since, waiter = waiters[0]
            if waiter.done():
                waiters.popleft()
                continue
            if since + timeout > now + _TIMER_SLACK_S:
                self._timer = self._clock.call_later(since + timeout - now, self._on_timer)
                return
            waiters.popleft()
            self.rejected_timeout += 1
            waiter.set_exception(
                Overloaded(
                    f"router {self.label} is overloaded: waited {timeout * 1000:g} ms for one of "
                    f"{self.max_concurrent} request slots (pendingTimeoutMs)"
                )
            )
