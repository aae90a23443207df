"""The open-loop load generator process: requests at fixed intended times over keep-alive HTTP/1.1.

Run as `python -m bench.loadgen --config '<json>' --out result.json` (the bench does this through
`bench/openloop.py`). It opens a warm pool of connections, then sends request i at `start + i / rate`
and measures its latency from that intended time (see `bench/schedule.py`), so a slow target cannot slow
the generator down into sending less (no coordinated omission).

How this works:
- A ticker thread sleeps until each intended time (`time.sleep` has microsecond resolution, where the
  event loop's timers round to milliseconds) and pokes the event loop, which takes every due request
  from the `Pacer` and sends it at once.
- Each connection carries one request at a time. A due request takes an idle connection; if none is
  idle, a new one is dialled (up to `maxConnections`), so the generator never queues behind itself
  while the target keeps up. Requests beyond that limit wait in order, and their wait counts as latency.
- Idle connections are reused oldest-idle first by default, so every connection the pool ever
  opened keeps carrying requests. With `idleCloseSecs` (the soak scenario's choice) they are reused
  most-recently-idle first and any connection idle that long is closed, as Go's net/http
  (`IdleConnTimeout`), urllib3 and Finagle do: the surplus dialled during a stall of the target is
  shed afterwards instead of being kept for the whole run, and so are warm connections the load
  never needed, before the target's own idle timeout could race a request on them (counted in
  `connections_closed_idle`).
- A connection that closes with a request in flight records an error for it. After the last send, the
  generator waits up to `drainSecs` for answers; whatever is still open then is a "timeout".
The result JSON carries every latency in microseconds (from the intended time), status counts, error
counts, the send lag (how late the generator itself was) and the generator's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import resource
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

import httptools
import uvloop

from bench.percentiles import percentiles
from bench.schedule import LatencyRecorder, OpenLoopSchedule, Pacer

_PR_SET_TIMERSLACK: Final = 29


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadgenConfig:
    """What to send where. `start_at` is a CLOCK_MONOTONIC instant (shared by all processes on Linux)."""

    addresses: tuple[tuple[str, int], ...]
    hosts: tuple[str, ...]
    rate_per_sec: float
    duration_secs: float
    path: str = "/"
    connections: int = 16
    max_connections: int = 4096
    drain_secs: float = 10.0
    start_at: float | None = None
    #: send again, once and on another connection, a request whose connection closed before any
    #: byte of its response came (what HTTP clients do for idempotent requests, RFC 9112 9.3.1: a
    #: server closing an idle keep-alive connection races the next request on it); counted apart
    resend_unanswered: bool = False
    #: also report each response's intended send time and each failure's (seconds from the
    #: start), so a long run can be cut into intervals (the soak scenario's p99 every 10 s)
    timeline: bool = False
    #: reuse idle connections most-recently-idle first and close any idle this long (None:
    #: oldest-idle first, never closed; see the module docstring); keep it below the target's
    #: keep-alive idle timeout (meshd's `idleTimeoutMs`, 60 s)
    idle_close_secs: float | None = None

    def __post_init__(self) -> None:
        if not self.addresses:
            raise ValueError("at least one address is needed")
        if not self.hosts:
            raise ValueError("at least one Host header is needed")
        if not 1 <= self.connections <= self.max_connections:
            raise ValueError("connections must be between 1 and maxConnections")
        if self.idle_close_secs is not None and self.idle_close_secs <= 0:
            raise ValueError("idleCloseSecs must be positive")

    def to_json(self) -> str:
        return json.dumps(
            {
                "addresses": [f"{h}:{p}" for h, p in self.addresses],
                "hosts": list(self.hosts),
                "ratePerSec": self.rate_per_sec,
                "durationSecs": self.duration_secs,
                "path": self.path,
                "connections": self.connections,
                "maxConnections": self.max_connections,
                "drainSecs": self.drain_secs,
                "startAt": self.start_at,
                "resendUnanswered": self.resend_unanswered,
                "timeline": self.timeline,
                "idleCloseSecs": self.idle_close_secs,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> LoadgenConfig:
        data = json.loads(text)
        addresses = []
        for item in data["addresses"]:
            host, _, port = str(item).rpartition(":")
            addresses.append((host, int(port)))
        start_at = data.get("startAt")
        return cls(
            addresses=tuple(addresses),
            hosts=tuple(str(h) for h in data["hosts"]),
            rate_per_sec=float(data["ratePerSec"]),
            duration_secs=float(data["durationSecs"]),
            path=str(data.get("path", "/")),
            connections=int(data.get("connections", 16)),
            max_connections=int(data.get("maxConnections", 4096)),
            drain_secs=float(data.get("drainSecs", 10.0)),
            start_at=None if start_at is None else float(start_at),
            resend_unanswered=bool(data.get("resendUnanswered", False)),
            timeline=bool(data.get("timeline", False)),
            idle_close_secs=None if data.get("idleCloseSecs") is None else float(data["idleCloseSecs"]),
        )


class _Request:
    __slots__ = ("intended", "sent", "payload", "resent")

    def __init__(self, intended: float, payload: bytes) -> None:
        self.intended = intended
        self.sent: float | None = None
        self.payload = payload
        self.resent = False


class _Connection(asyncio.Protocol):
    """One keep-alive client connection, one request in flight at a time."""

    __slots__ = ("_pool", "_transport", "_parser", "_inflight", "_answering", "closed", "idle_since")

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._inflight: _Request | None = None
        #: a byte of the in-flight request's response has arrived
        self._answering = False
        self.closed = False
        #: when it last went idle (time.monotonic()), for `idleCloseSecs`
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._pool.connected(self)

    @property
    def inflight(self) -> _Request | None:
        return self._inflight

    def send(self, request: _Request) -> None:
        assert self._transport is not None and self._inflight is None
        self._inflight = request
        self._answering = False
        request.sent = time.monotonic()
        self._transport.write(request.payload)

    def data_received(self, data: bytes) -> None:
        self._answering = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    def on_message_complete(self) -> None:
        request, self._inflight = self._inflight, None
        if request is None:
            self.close()
            return
        keep_alive = bool(self._parser.should_keep_alive())
        self._pool.answered(self, request, int(self._parser.get_status_code()), keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        request, self._inflight = self._inflight, None
        self._pool.lost(self, request, answering=self._answering)

    def close(self) -> None:
        if self._transport is not None and not self.closed:
            self._transport.close()


class _Pool:
    """Idle connections, requests waiting for one, and dials in progress."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: LoadgenConfig, recorder: LatencyRecorder) -> None:
        self._loop = loop
        self._config = config
        self._recorder = recorder
        self._idle: deque[_Connection] = deque()
        self._waiting: deque[_Request] = deque()
        self._all: set[_Connection] = set()
        self._dialing = 0
        self._dials_started = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.opened = 0
        self.max_open = 0
        #: requests sent again after their connection closed unanswered (`resend_unanswered`)
        self.resent = 0
        #: connections closed after `idle_close_secs` idle
        self.closed_idle = 0
        self._lifo = config.idle_close_secs is not None
        self._reaper: asyncio.TimerHandle | None = None
        self.on_outcome: asyncio.Event = asyncio.Event()

    async def prewarm(self) -> None:
        for _ in range(self._config.connections):
            self._dial()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self._all:
            raise ConnectionError(f"could not connect to any of {self._config.addresses}")

    def submit(self, request: _Request) -> None:
        while self._idle:
            connection = self._idle.pop() if self._lifo else self._idle.popleft()
            if not connection.closed:
                connection.send(request)
                return
        self._waiting.append(request)
        if len(self._all) + self._dialing < self._config.max_connections and self._dialing < len(self._waiting):
            self._dial()

    def connected(self, connection: _Connection) -> None:
        self._all.add(connection)
        self.opened += 1
        self.max_open = max(self.max_open, len(self._all))
        self._reuse(connection)

    def answered(self, connection: _Connection, request: _Request, status: int, keep_alive: bool) -> None:
        self._recorder.on_response(request.intended, request.sent or request.intended, time.monotonic(), status)
        self.on_outcome.set()
        if keep_alive:
            self._reuse(connection)
        else:
            connection.close()

    def lost(self, connection: _Connection, request: _Request | None, *, answering: bool = False) -> None:
        self._all.discard(connection)
        if request is not None and self._config.resend_unanswered and not answering and not request.resent:
            request.resent = True
            self.resent += 1
            self._waiting.appendleft(request)  # first in line: its latency still counts from its intended time
        elif request is not None:
            self._recorder.on_error(request.intended, request.sent, "closed")
            self.on_outcome.set()
        if self._waiting and len(self._all) + self._dialing < self._config.max_connections:
            self._dial()

    def in_flight(self) -> list[_Request]:
        """Requests sent or waiting that have no outcome yet (used to count timeouts at the end)."""
        return list(self._waiting) + [r for c in self._all if (r := c.inflight) is not None]

    def start_reaping(self) -> None:
        """With `idle_close_secs`: look for connections idle that long every quarter of it."""
        if self._config.idle_close_secs is not None and self._reaper is None:
            self._reaper = self._loop.call_later(self._config.idle_close_secs / 4, self._reap)

    def _reap(self) -> None:
        """Close the connections idle `idle_close_secs` or more (the oldest idle are on the left)."""
        limit = self._config.idle_close_secs
        assert limit is not None
        horizon = time.monotonic() - limit
        idle = self._idle  # most recently idle on the right: the oldest are on the left
        while idle and idle[0].idle_since <= horizon:
            connection = idle.popleft()
            if connection.closed:
                continue  # the server closed it: already gone from `_all`
            self._all.discard(connection)
            self.closed_idle += 1
            connection.close()
        self._reaper = self._loop.call_later(limit / 4, self._reap)

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        for connection in list(self._all):
            connection.close()
        for task in self._tasks:
            task.cancel()

    def _reuse(self, connection: _Connection) -> None:
        if self._waiting:
            connection.send(self._waiting.popleft())
        else:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)

    def _dial(self) -> None:
        host, port = self._config.addresses[self._dials_started % len(self._config.addresses)]
        self._dials_started += 1
        self._dialing += 1
        task = self._loop.create_task(self._connect(host, port))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, host: str, port: int) -> None:
        try:
            await self._loop.create_connection(lambda: _Connection(self), host, port)
        except OSError:
            # Nobody will take the oldest waiting request: fail it rather than let it hang.
            if self._waiting:
                request = self._waiting.popleft()
                self._recorder.on_error(request.intended, None, "connect")
                self.on_outcome.set()
        finally:
            self._dialing -= 1


def _ticker(loop: asyncio.AbstractEventLoop, schedule: OpenLoopSchedule, start: float,
            stop: threading.Event, poke: Callable[[], None]) -> None:
    """Sleep until each intended send time and wake the loop; stops early when `stop` is set."""
    _reduce_timer_slack()
    for index in range(schedule.total):
        target = start + schedule.offset(index)
        while not stop.is_set():
            delay = target - time.monotonic()
            if delay <= 0:
                break
            time.sleep(min(delay, 0.05))
        if stop.is_set():
            return
        try:
            loop.call_soon_threadsafe(poke)
        except RuntimeError:  # the loop closed under us: the run is over
            return


def _reduce_timer_slack() -> None:
    """Ask Linux to wake this thread within 1 µs of its deadline instead of the default 50 µs."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_TIMERSLACK, ctypes.c_ulong(1), 0, 0, 0)
    except (OSError, AttributeError):
        pass


async def run(config: LoadgenConfig) -> dict[str, object]:
    """Run the schedule against the target and return the result document."""
    loop = asyncio.get_running_loop()
    recorder = LatencyRecorder()
    pool = _Pool(loop, config, recorder)
    await pool.prewarm()
    pool.start_reaping()
    schedule = OpenLoopSchedule(config.rate_per_sec, config.duration_secs)
    payloads = [
        f"GET {config.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: meshd-bench\r\n\r\n".encode()
        for host in config.hosts
    ]
    start = config.start_at if config.start_at is not None else time.monotonic() + 0.01
    pacer = Pacer(schedule, start)
    all_issued = asyncio.Event()

    # Requests are numbered in issue order, so request i carries host i mod len(hosts).
    def send_due_in_order() -> None:
        first = pacer.issued
        due = pacer.take_due(time.monotonic())
        for offset, intended in enumerate(due):
            pool.submit(_Request(intended, payloads[(first + offset) % len(payloads)]))
        if pacer.is_finished():
            all_issued.set()

    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    wall_before = time.monotonic()
    stop = threading.Event()
    ticker = threading.Thread(target=_ticker, args=(loop, schedule, start, stop, send_due_in_order),
                              name="ticker", daemon=True)
    ticker.start()
    try:
        if schedule.total == 0:
            all_issued.set()
        await all_issued.wait()
        try:
            async with asyncio.timeout(config.drain_secs):
                while recorder.outcomes < schedule.total:
                    pool.on_outcome.clear()
                    await pool.on_outcome.wait()
        except TimeoutError:
            pass
    finally:
        stop.set()
        ticker.join()
    wall = time.monotonic() - wall_before
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    for request in pool.in_flight():
        recorder.on_error(request.intended, request.sent, "timeout")
    pool.close()
    recorded = recorder.result()
    lag_ms = {f"{p:g}": v * 1000.0 for p, v in percentiles(recorded.send_lags or [0.0], (50, 99, 99.9, 100)).items()}
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (usage_after.ru_stime - usage_before.ru_stime)
    timeline: dict[str, object] = {}
    if config.timeline:
        timeline = {
            "intended_ms": [round((t - start) * 1e3, 3) for t in recorded.intended],
            "failures": [[round((t - start) * 1e3, 3), what] for t, what in recorded.failures],
        }
    return {
        **timeline,
        "scheduled": schedule.total,
        "sent": len(recorded.send_lags),
        "completed": recorded.completed,
        "statuses": {str(k): v for k, v in sorted(recorded.statuses.items())},
        "errors": recorded.errors,
        "latencies_us": [round(v * 1e6) for v in recorded.latencies],
        "send_lag_ms": lag_ms,
        "connections_opened": pool.opened,
        "resent": pool.resent,
        "max_connections_open": pool.max_open,
        "connections_closed_idle": pool.closed_idle,
        "cpu_secs": cpu,
        "wall_secs": wall,
        "late_start_secs": max(0.0, wall_before - start),
    }


async def _bounded(config: LoadgenConfig) -> dict[str, object]:
    """Run, but never for longer than the schedule allows: the generator stops by itself."""
    wait = max(0.0, (config.start_at or time.monotonic()) - time.monotonic())
    async with asyncio.timeout(wait + config.duration_secs + config.drain_secs + 60.0):
        return await run(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="JSON LoadgenConfig")
    parser.add_argument("--out", required=True, help="where to write the result JSON")
    args = parser.parse_args(argv)
    config = LoadgenConfig.from_json(args.config)
    # A short switch interval lets the ticker thread take the GIL promptly when it wakes.
    sys.setswitchinterval(0.0005)
    result = uvloop.run(_bounded(config))
    with open(args.out, "w") as out:
        json.dump(result, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
