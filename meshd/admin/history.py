"""Per-replica latency and success over the last minutes, for the dashboard (`/admin/replicas`).

Every `interval_s` (10 s) the admin server reads each client's per-endpoint attempt counters
(`AttemptStats`, the same the `meshd_endpoint_*` metrics export) and keeps, per endpoint, one
point per interval: attempts, failures and the p50 and p99 latency of the attempts that ended
in it, computed from the histogram buckets' increase the way Prometheus's `histogram_quantile`
does. `window` points (30: five minutes) are kept per endpoint; an endpoint that has had no
point for a whole window (removed, or its client dropped) is forgotten.

It runs off the request path (a task on the admin server, reading plain ints), and the answer
also carries the interval under way, measured up to the moment of the request, so the page has
data at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from meshd.admin.view import MetricsView
from meshd.pipeline.stats import BUCKETS, AttemptStats

INTERVAL_S: Final = 10.0
WINDOW: Final = 30

Key = tuple[str, str, str]  # router, client, endpoint


@dataclass(frozen=True, slots=True)
class Reading:
    """Cumulative counters of one endpoint at one moment."""

    requests: int
    failures: int
    buckets: tuple[int, ...]

    @staticmethod
    def of(stats: AttemptStats) -> Reading:
        return Reading(stats.requests, stats.failures, tuple(stats.buckets))


def quantile(q: float, counts: Iterable[int]) -> float | None:
    """The q-quantile of a latency histogram given per-bucket counts (BUCKETS and +Inf), by linear
    interpolation inside the bucket, as Prometheus's `histogram_quantile` does; None when empty.
    A quantile in the +Inf bucket is the largest finite bound."""
    per_bucket = list(counts)
    total = sum(per_bucket)
    if total <= 0:
        return None
    rank = q * total
    cumulative = 0
    for i, n in enumerate(per_bucket):
        if n and cumulative + n >= rank:
            if i >= len(BUCKETS):
                return BUCKETS[-1]
            lower = BUCKETS[i - 1] if i > 0 else 0.0
            return lower + (BUCKETS[i] - lower) * ((rank - cumulative) / n)
        cumulative += n
    return BUCKETS[-1]


def point(at: float, seconds: float, before: Reading | None, now: Reading) -> dict[str, Any]:
    """One interval's point: the increase from `before` (None: from zero) to `now`."""
    if before is None or now.requests < before.requests:  # new, or its counters started over
        before = Reading(0, 0, (0,) * len(now.buckets))
    requests = now.requests - before.requests
    failures = now.failures - before.failures
    buckets = [a - b for a, b in zip(now.buckets, before.buckets, strict=True)]
    return {
        "at": at,
        "seconds": seconds,
        "requests": requests,
        "failures": failures,
        "success": None if requests == 0 else (requests - failures) / requests,
        "p50": quantile(0.5, buckets),
        "p99": quantile(0.99, buckets),
    }


def readings(daemon: MetricsView) -> Iterator[tuple[Key, Reading]]:
    """Every labelled endpoint's counters (and each client's `_other`), now."""
    for router in list(daemon.routers):
        for client in list(router.clients.values()):
            for label, stats in client.endpoint_stats():
                yield (router.label, client.label, label), Reading.of(stats)


class ReplicaHistory:
    """The points of every endpoint; `sample()` adds one interval, `to_json()` answers the page."""

    def __init__(
        self,
        read: Callable[[], Iterable[tuple[Key, Reading]]],
        *,
        interval_s: float = INTERVAL_S,
        window: int = WINDOW,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._read = read
        self.interval_s = interval_s
        self.window = window
        self._wall = wall
        self._last: dict[Key, Reading] = {}
        self._points: dict[Key, deque[dict[str, Any]]] = {}
        self._last_at: float | None = None
        self._seen: dict[Key, float] = {}

    def sample(self) -> None:
        """Close the interval under way: one point per endpoint (added to its deque)."""
        now = self._wall()
        seconds = now - self._last_at if self._last_at is not None else self.interval_s
        current = dict(self._read())
        for key, reading in current.items():
            points = self._points.get(key)
            if points is None:
                points = self._points[key] = deque(maxlen=self.window)
            points.append(point(now, seconds, self._last.get(key), reading))
            self._seen[key] = now
        self._last = current
        self._last_at = now
        horizon = now - self.window * self.interval_s
        for key in [k for k, seen in self._seen.items() if seen < horizon]:
            del self._seen[key]
            self._points.pop(key, None)

    def to_json(self) -> list[dict[str, Any]]:
        """Per endpoint: its points, oldest first, then the interval under way up to now."""
        now = self._wall()
        seconds = now - self._last_at if self._last_at is not None else 0.0
        current = dict(self._read())
        out: list[dict[str, Any]] = []
        for key in sorted(set(self._points) | set(current)):
            router, client, endpoint = key
            points = list(self._points.get(key, ()))
            reading = current.get(key)
            if reading is not None:
                points.append({**point(now, seconds, self._last.get(key), reading), "partial": True})
            out.append({"router": router, "client": client, "endpoint": endpoint, "points": points})
        return out

    async def run(self) -> None:
        """Sample every `interval_s` until cancelled (the admin server's cleanup cancels it)."""
        self.sample()
        while True:
            await asyncio.sleep(self.interval_s)  # a cadence, not a limit (docs/architecture.md, "Time")
            self.sample()
