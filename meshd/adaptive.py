"""An adaptive concurrency limit: the router's `maxConcurrentRequests` found from latency.

How this works (the gradient method of Envoy's adaptive concurrency filter and Netflix's
concurrency-limits). Two measurements:

- **The no-load latency** (`minLatency`): every `minLatencyIntervalSecs` the limit is pinned to
  `minLimit` until `minLatencySamples` requests have ended that were served with no more than
  `minLimit` in flight; their mean latency is what the upstreams take when nothing queues. A
  latency learnt under load would drift up with the load it is meant to detect (a limit that
  creeps up for ever), hence the pinning, as Envoy does; it costs a short spell of queueing or
  503s under heavy load every interval (about 50 requests at `minLimit` at once).
- **The current latency**: the mean over each window of `windowMs` (at least `minSamples`
  requests).

When a window closes:

    gradient  = clamp(tolerance x minLatency / windowLatency, 0.5, 2)
    new limit = limit x gradient + sqrt(limit)        (smoothed: limit += smoothing x (new - limit))

While latency stays within `tolerance` of the no-load latency the limit grows (about 5% a
window with the defaults); once requests queue somewhere (the upstreams, their pools, meshd's own
loop) latency rises and the limit shrinks, settling where latency is a little above
`tolerance` times the no-load latency: for an upstream set that serves C requests at once, near
1.7 x C. The limit never grows while fewer than half of it are in use (an idle router learns
nothing about its capacity), and stays within [`minLimit`, `maxConcurrentRequests`].

Cost: the listener calls `sample()` once per request when the router has `adaptiveConcurrency`
(two additions and two comparisons; the arithmetic above once a window); without it the listener
checks one attribute for None. The limit is applied to the router's `Admission`, so requests past
it wait in its queue or are refused with 503 `Overloaded`, as with a static limit.
"""

from __future__ import annotations

import math
from typing import Final

from meshd.admission import Admission

#: a window can at most halve the limit, or double it (before smoothing)
MIN_GRADIENT: Final = 0.5
MAX_GRADIENT: Final = 2.0


class GradientLimit:
    """One router's adaptive limit. `sample(latency, now)` per request; `limit` is the current value."""

    __slots__ = (
        "admission",
        "limit",
        "min_limit",
        "max_limit",
        "tolerance",
        "window_s",
        "min_samples",
        "smoothing",
        "min_latency",
        "window_latency",
        "windows",
        "measurements",
        "measuring",
        "_interval_s",
        "_min_latency_samples",
        "_next_measurement",
        "_sum",
        "_count",
        "_window_end",
        "_max_inflight",
    )

    def __init__(
        self,
        admission: Admission,
        *,
        initial_limit: int = 20,
        min_limit: int = 3,
        tolerance: float = 1.25,
        window_ms: int = 250,
        min_samples: int = 10,
        min_latency_interval_s: float = 60.0,
        min_latency_samples: int = 50,
        smoothing: float = 0.2,
    ) -> None:
        self.admission = admission
        #: the router's static `maxConcurrentRequests`: the ceiling
        self.max_limit = admission.max_concurrent
        self.min_limit = min(min_limit, self.max_limit)
        self.limit = float(max(self.min_limit, min(initial_limit, self.max_limit)))
        self.tolerance = tolerance
        self.window_s = window_ms / 1000.0
        self.min_samples = min_samples
        self.smoothing = smoothing
        #: seconds: the no-load latency (0 until first measured) and the last window's mean
        self.min_latency = 0.0
        self.window_latency = 0.0
        #: windows closed and no-load measurements made (counters)
        self.windows = 0
        self.measurements = 0
        #: the limit is pinned to `min_limit` while the no-load latency is measured
        self.measuring = True
        self._interval_s = min_latency_interval_s
        self._min_latency_samples = min_latency_samples
        self._next_measurement = 0.0
        self._sum = 0.0
        self._count = 0
        self._window_end = -1.0
        self._max_inflight = 0
        admission.max_concurrent = self.min_limit
        admission.sampler = self

    def sample(self, latency: float, now: float) -> None:
        """One request ended after `latency` seconds, at `now` (the same monotonic clock)."""
        # after this request left: one less, or as many when its turn went to a waiter
        inflight = self.admission.inflight
        if self.measuring:
            if inflight <= self.min_limit:  # served with (about) `min_limit` at once at most
                self._sum += latency
                self._count += 1
                if self._count >= self._min_latency_samples:
                    self._end_measurement(now)
            return
        self._sum += latency
        self._count += 1
        if inflight > self._max_inflight:
            self._max_inflight = inflight
        if now >= self._window_end and self._count >= self.min_samples:
            self._close_window(now)

    def _end_measurement(self, now: float) -> None:
        self.min_latency = self._sum / self._count
        self.measurements += 1
        self.measuring = False
        self._next_measurement = now + self._interval_s
        self._reset(now)
        self._apply(self.limit)

    def _reset(self, now: float) -> None:
        self._sum = 0.0
        self._count = 0
        self._max_inflight = 0
        self._window_end = now + self.window_s

    def _close_window(self, now: float) -> None:
        latency = self._sum / self._count
        busy = self._max_inflight
        self._reset(now)
        self.windows += 1
        self.window_latency = latency
        if now >= self._next_measurement:
            self.measuring = True  # pinned until the no-load latency is measured again
            self.admission.max_concurrent = self.min_limit
            return
        if latency <= 0:
            return
        gradient = max(MIN_GRADIENT, min(MAX_GRADIENT, self.tolerance * self.min_latency / latency))
        limit = self.limit
        target = limit * gradient + math.sqrt(limit)
        if target > limit and busy < limit / 2:
            return  # the router does not use half of it: no evidence that more would do
        limit += (target - limit) * self.smoothing
        self._apply(max(float(self.min_limit), min(float(self.max_limit), limit)))

    def _apply(self, limit: float) -> None:
        self.limit = limit
        admission = self.admission
        raised = int(limit) > admission.max_concurrent
        admission.max_concurrent = int(limit)
        if raised:
            admission.admit_waiting()
