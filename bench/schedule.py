"""The open-loop schedule: when each request is meant to be sent, and latency measured from then.

How this works: request i of a run at `rate` per second is *intended* at `start + i / rate`, whatever
happened to earlier requests. A `Pacer` hands out the intended times that are due at a given moment;
the generator sends each as soon as it can. The `LatencyRecorder` measures every latency from the
intended time, not from the moment the bytes left, so a generator or a proxy that falls behind shows
up as latency instead of silently sending fewer requests (no coordinated omission). The gap between
intended and actual send is kept apart as the *send lag*: the generator's own overhead.

Everything here takes the time as an argument, so tests drive it with made-up instants.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class OpenLoopSchedule:
    """`rate_per_sec` requests per second for `duration_secs`: request i is due `i / rate` after start."""

    rate_per_sec: float
    duration_secs: float

    def __post_init__(self) -> None:
        if not self.rate_per_sec > 0:
            raise ValueError(f"rate must be positive, got {self.rate_per_sec}")
        if self.duration_secs < 0:
            raise ValueError(f"duration must not be negative, got {self.duration_secs}")

    @property
    def total(self) -> int:
        """How many requests the run sends: every i with i / rate < duration."""
        return math.ceil(round(self.rate_per_sec * self.duration_secs, 9))

    def offset(self, index: int) -> float:
        return index / self.rate_per_sec


class Pacer:
    """Hands out the intended send times that have come due, each exactly once, in order."""

    __slots__ = ("_schedule", "_start", "_next")

    def __init__(self, schedule: OpenLoopSchedule, start: float) -> None:
        self._schedule = schedule
        self._start = start
        self._next = 0

    def __repr__(self) -> str:
        return f"Pacer(next={self._next}, total={self._schedule.total})"

    @property
    def issued(self) -> int:
        return self._next

    def is_finished(self) -> bool:
        return self._next >= self._schedule.total

    def next_due(self) -> float | None:
        """The intended time of the next request, or None when all have been issued."""
        if self.is_finished():
            return None
        return self._start + self._schedule.offset(self._next)

    def take_due(self, now: float) -> list[float]:
        """Intended times of every not-yet-issued request due at `now` (possibly several if we are late)."""
        due: list[float] = []
        total = self._schedule.total
        while self._next < total:
            intended = self._start + self._schedule.offset(self._next)
            if intended > now:
                break
            due.append(intended)
            self._next += 1
        return due


@dataclass(frozen=True, slots=True)
class RecordedRun:
    """What the recorder saw: latencies from intended send time, send lags, and outcome counts."""

    latencies: tuple[float, ...]
    send_lags: tuple[float, ...]
    statuses: dict[int, int]
    errors: dict[str, int]
    #: each response's intended send time, in the order of `latencies` (a timeline of the run)
    intended: tuple[float, ...] = ()
    #: (intended send time, status or error) of each request that did not get a 2xx
    failures: tuple[tuple[float, str], ...] = ()

    @property
    def completed(self) -> int:
        return sum(self.statuses.values())

    @property
    def outcomes(self) -> int:
        return self.completed + sum(self.errors.values())


class LatencyRecorder:
    """Collects one outcome per request; latency = finish - intended, send lag = sent - intended."""

    __slots__ = ("_latencies", "_send_lags", "_statuses", "_errors", "_intended", "_failures")

    def __init__(self) -> None:
        self._intended: list[float] = []
        self._failures: list[tuple[float, str]] = []
        self._latencies: list[float] = []
        self._send_lags: list[float] = []
        self._statuses: Counter[int] = Counter()
        self._errors: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"LatencyRecorder(responses={len(self._latencies)}, errors={sum(self._errors.values())})"

    @property
    def outcomes(self) -> int:
        return len(self._latencies) + sum(self._errors.values())

    def on_response(self, intended: float, sent: float, finished: float, status: int) -> None:
        self._latencies.append(finished - intended)
        self._intended.append(intended)
        self._send_lags.append(sent - intended)
        self._statuses[status] += 1
        if not 200 <= status < 300:
            self._failures.append((intended, str(status)))

    def on_error(self, intended: float, sent: float | None, error: str) -> None:
        """A request that got no response: counted by cause, kept out of the latency distribution."""
        if sent is not None:
            self._send_lags.append(sent - intended)
        self._errors[error] += 1
        self._failures.append((intended, error))

    def result(self) -> RecordedRun:
        return RecordedRun(
            latencies=tuple(self._latencies),
            send_lags=tuple(self._send_lags),
            statuses=dict(self._statuses),
            errors=dict(self._errors),
            intended=tuple(self._intended),
            failures=tuple(self._failures),
        )
