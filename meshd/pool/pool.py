"""Per-endpoint keep-alive pool: limits, FIFO waiters, idle expiry, drain.

How this works: state lives in plain counters and lists and changes only in synchronous methods;
the async parts (dialling) happen after the decision. A slot being dialled counts as taken, so
`busy + idle + dialing <= max_connections` always holds. Waiters are served in arrival order:
a released reusable connection goes straight to the oldest waiter; a freed slot (a connection
closed) is handed to the oldest waiter as the right to dial. Idle connections are reused
most-recent-first (warm sockets, and older ones age out through `sweep()`). A connection the
upstream closed while idle is dropped from the idle list as soon as the loop sees it, and
`acquire()` re-checks liveness, so a request is never handed a connection known to be closed.

A waiter waits at most `queue_timeout_s` (`pool.queueTimeoutMs`, as HAProxy's `timeout queue`),
then fails with `QueueTimeout` (503, never written, so the retry stage may requeue it to another
endpoint). Waiters are kept in arrival order with their start time, so the expired ones are
always at the front: one lazy timer per pool (armed when a request starts waiting and none is
armed, re-armed for the new oldest waiter when it fires) and `sweep()` pop them from there.
Taking an idle connection, the common case, never reads the clock or touches the timer.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Final

from meshd.clock import Clock, Timer
from meshd.errors import CircuitOpen, ConnectFailed, PoolExhausted, QueueTimeout
from meshd.pool.connection import (
    DEFAULT_MAX_HEAD_BYTES,
    DEFAULT_MAX_HEADERS,
    DEFAULT_RESPONSE_HEAD_TIMEOUT_S,
    DEFAULT_RESPONSE_IDLE_TIMEOUT_S,
    ConnectionOwner,
    UpstreamConnection,
)
from meshd.pool.dialer import Dialer

#: the default for `pool.queueTimeoutMs`
DEFAULT_QUEUE_TIMEOUT_S: Final = 5.0
#: a waiter this close to its deadline when the timer fires is expired then (timers may fire early)
_TIMER_SLACK_S: Final = 0.005


#: a request waiting for a connection: when it started waiting, and its future
Waiter = tuple[float, asyncio.Future[UpstreamConnection | None]]


@dataclass(frozen=True, slots=True)
class PoolLimits:
    max_connections: int = 1000
    max_waiters: int = 10000
    idle_time_s: float = 10.0
    #: a response whose status line and headers exceed this fails with 502 (`maxResponseHeaderBytes`)
    max_response_head_bytes: int = DEFAULT_MAX_HEAD_BYTES
    #: a response body the upstream stops sending, or a request body it stops reading, for this
    #: long fails the exchange (`responseIdleTimeoutMs`)
    response_idle_timeout_s: float | None = DEFAULT_RESPONSE_IDLE_TIMEOUT_S
    #: a request waiting longer than this for a connection fails with 503 (`pool.queueTimeoutMs`)
    queue_timeout_s: float | None = DEFAULT_QUEUE_TIMEOUT_S
    #: the response head is due within this of the request being written (`responseHeadTimeoutMs`)
    response_head_timeout_s: float | None = DEFAULT_RESPONSE_HEAD_TIMEOUT_S
    #: a response with more header (and trailer) lines than this fails with 502 (`maxResponseHeaders`)
    max_response_headers: int = DEFAULT_MAX_HEADERS


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    idle: int
    busy: int
    dialing: int
    waiters: int
    opened: int
    closed: int
    #: requests that waited `queueTimeoutMs` for a connection and were failed (a counter)
    queue_timeouts: int = 0


class Pending:
    """Attempts waiting for a connection across all the pools of one client (replica set), for its
    `circuitBreakers.maxPendingRequests`. Counted on the waiting path only."""

    __slots__ = ("label", "limit", "count", "overflows")

    def __init__(self, label: str, limit: int) -> None:
        self.label = label
        self.limit = limit
        self.count = 0
        #: attempts refused because `limit` were waiting already (a counter)
        self.overflows = 0

    def enter(self, waiting_for: str) -> None:
        """One more attempt waits (for "a connection", HTTP/1.1, or "a stream", HTTP/2), or
        CircuitOpen when `limit` wait already. The waiter calls `count -= 1` when it stops."""
        if self.count >= self.limit:
            self.overflows += 1
            raise CircuitOpen(
                f"circuit breaker of {self.label}: {self.limit} requests already wait for "
                f"{waiting_for} (circuitBreakers.maxPendingRequests)"
            )
        self.count += 1


class Pool(ConnectionOwner):
    def __init__(
        self,
        host: str,
        port: int,
        *,
        dialer: Dialer,
        limits: PoolLimits,
        clock: Clock,
        pending: Pending | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.label = f"{host}:{port}"
        self._dialer = dialer
        self._limits = limits
        self._clock = clock
        #: `clock.now` read once (for the production clock, `time.monotonic` itself): a release
        #: on every request's end calls it without a method lookup
        self._now = clock.now
        self._idle: list[UpstreamConnection] = []
        self._busy = 0
        self._dialing = 0
        # (when it started waiting, its future), oldest first
        self._waiters: deque[Waiter] = deque()
        self._queue_timer: Timer | None = None
        self._closed = False
        self.opened = 0
        self.closed_count = 0
        self.queue_timeouts = 0
        self._drained: asyncio.Event | None = None
        self._pending = pending

    # -- public API ---------------------------------------------------------------------------
    async def acquire(self, *, fresh: bool = False) -> UpstreamConnection:
        """A connection for one request; the caller must `send()` on it (which releases it later)."""
        if self._closed:
            raise ConnectFailed(f"endpoint {self.label} was removed")
        if not fresh:
            conn = self._take_idle()
            if conn is not None:
                return conn
        if self._busy + len(self._idle) + self._dialing < self._limits.max_connections:
            self._dialing += 1
            return await self._dial()
        if fresh and self._idle:
            self._close_conn(self._idle.pop(0))
            self._dialing += 1
            return await self._dial()
        if len(self._waiters) >= self._limits.max_waiters:
            raise PoolExhausted(
                f"connection pool for {self.label} exhausted: {self._limits.max_connections} connections busy "
                f"and {self._limits.max_waiters} requests waiting"
            )
        pending = self._pending
        if pending is not None:
            pending.enter("a connection")
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[UpstreamConnection | None] = loop.create_future()
        entry = (self._clock.now(), waiter)
        self._waiters.append(entry)
        timeout = self._limits.queue_timeout_s
        if self._queue_timer is None and timeout is not None:
            self._queue_timer = self._clock.call_later(timeout, self._on_queue_timer)
        try:
            conn = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                if waiter.exception() is not None:
                    raise  # failed (queue timeout, pool closed) just as we were cancelled: nothing to give back
                # We were handed something just as we were cancelled: give it back.
                got = waiter.result()
                if got is None:
                    self._dialing -= 1
                    self._hand_slot()
                else:
                    self.release(got, True)
            else:
                try:
                    self._waiters.remove(entry)
                except ValueError:
                    pass
            raise
        finally:
            if pending is not None:
                pending.count -= 1
        if conn is None:
            return await self._dial()
        return conn

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Called by the connection when its exchange is over."""
        self._busy -= 1
        if reusable and conn.usable and not self._closed:
            while self._waiters:
                waiter = self._waiters.popleft()[1]
                if not waiter.done():
                    self._busy += 1
                    waiter.set_result(conn)
                    return
            conn.idle_since = self._now()
            self._idle.append(conn)
            return
        self._close_conn(conn)
        self._hand_slot()
        self._check_drained()

    def sweep(self, now: float) -> int:
        """Close connections idle longer than the idle time (returns how many); expire waiters too."""
        if self._waiters:
            self._expire_waiters(now)
        limit = now - self._limits.idle_time_s
        stale = [c for c in self._idle if c.idle_since <= limit]
        if stale:
            self._idle = [c for c in self._idle if c.idle_since > limit]
            for conn in stale:
                self._close_conn(conn)
        return len(stale)

    def close(self) -> None:
        """Stop handing out connections; close idle ones now and busy ones when released (drain)."""
        self._closed = True
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        idle, self._idle = self._idle, []
        for conn in idle:
            self._close_conn(conn)
        while self._waiters:
            waiter = self._waiters.popleft()[1]
            if not waiter.done():
                waiter.set_exception(ConnectFailed(f"endpoint {self.label} was removed"))
        self._check_drained()

    async def wait_drained(self) -> None:
        if self._busy == 0 and self._dialing == 0:
            return
        self._drained = asyncio.Event()
        await self._drained.wait()

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            idle=len(self._idle),
            busy=self._busy,
            dialing=self._dialing,
            waiters=len(self._waiters),
            opened=self.opened,
            closed=self.closed_count,
            queue_timeouts=self.queue_timeouts,
        )

    @property
    def is_closed(self) -> bool:
        return self._closed

    def try_acquire_idle(self) -> UpstreamConnection | None:
        """A warm idle connection now, or None (then `await acquire()`); saves a coroutine per request."""
        if self._closed:
            return None
        return self._take_idle()

    # -- internals ----------------------------------------------------------------------------
    def _expire_waiters(self, now: float) -> None:
        """Fail every waiter that started waiting at least the queue timeout before `now`."""
        timeout = self._limits.queue_timeout_s
        if timeout is None:
            return
        waiters = self._waiters
        while waiters and waiters[0][0] + timeout <= now:
            waiter = waiters.popleft()[1]
            if not waiter.done():
                self.queue_timeouts += 1
                waiter.set_exception(QueueTimeout(
                    f"waited {timeout * 1000:.0f} ms for a connection to {self.label}: all "
                    f"{self._limits.max_connections} connections busy (pool.queueTimeoutMs)"
                ))

    def _on_queue_timer(self) -> None:
        self._queue_timer = None
        timeout = self._limits.queue_timeout_s
        if timeout is None or self._closed:
            return
        now = self._clock.now()
        self._expire_waiters(now + _TIMER_SLACK_S)
        if self._waiters:
            delay = self._waiters[0][0] + timeout - now
            self._queue_timer = self._clock.call_later(max(delay, 0.0), self._on_queue_timer)

    def _take_idle(self) -> UpstreamConnection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.usable:
                self._busy += 1
                return conn
            self._close_conn(conn)
        return None

    async def _dial(self) -> UpstreamConnection:
        """Dial on a slot already counted in `_dialing`."""
        try:
            conn = await self._dialer.dial(
                self.host, self.port, lambda: UpstreamConnection(
                    self.label, self.release, self._lost_idle, max_head_bytes=self._limits.max_response_head_bytes,
                    response_idle_timeout_s=self._limits.response_idle_timeout_s,
                    response_head_timeout_s=self._limits.response_head_timeout_s,
                    max_headers=self._limits.max_response_headers, clock=self._clock, owner=self,
                )
            )
        except BaseException:
            self._dialing -= 1
            self._hand_slot()
            self._check_drained()
            raise
        self._dialing -= 1
        self.opened += 1
        if self._closed:
            conn.close()
            self.closed_count += 1
            self._check_drained()
            raise ConnectFailed(f"endpoint {self.label} was removed")
        self._busy += 1
        return conn

    def _lost_idle(self, conn: UpstreamConnection) -> None:
        try:
            self._idle.remove(conn)
        except ValueError:
            return
        self.closed_count += 1
        self._hand_slot()

    def _hand_slot(self) -> None:
        """A slot became free: let the oldest waiter dial with it."""
        while self._waiters and self._busy + len(self._idle) + self._dialing < self._limits.max_connections:
            waiter = self._waiters.popleft()[1]
            if not waiter.done():
                self._dialing += 1
                waiter.set_result(None)

    def _close_conn(self, conn: UpstreamConnection) -> None:
        if not conn.closed:
            conn.close()
        self.closed_count += 1

    def _check_drained(self) -> None:
        if self._drained is not None and self._busy == 0 and self._dialing == 0:
            self._drained.set()

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<Pool {self.label} idle={s.idle} busy={s.busy} dialing={s.dialing} waiters={s.waiters}>"
