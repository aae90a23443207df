"""Decaying averages: Finagle's peak-sensitive RTT EWMA and its sample-stamped `Ema`.

Both are plain arithmetic; the caller passes the time (or the sample stamp) in, so tests can
check every value against the formula.

PeakEwma (Finagle `loadbalancer/PeakEwma.scala`, 21.4.0), times in seconds:

    observe(rtt, now):
        w = exp(-max(now - stamp, 0) / tau)
        cost = rtt                       if rtt > cost     # a peak is followed at once
             = cost * w + rtt * (1 - w)  otherwise         # otherwise decay toward the sample
        stamp = now

`tau` is the decay time (10 s by default): with no new samples the cost falls by a factor e
every tau seconds, so its half-life is tau * ln 2 (about 6.9 s).

Ema (Finagle `util/Ema.scala`): `w = exp(-(stamp - last_stamp) / window)`,
`ema = x * (1 - w) + ema * w`; the first sample sets the value unless an initial value is given.
"""

from __future__ import annotations

import math

__all__ = ["Ema", "PeakEwma"]


class PeakEwma:
    """A round-trip-time average that jumps up to any higher sample and decays down slowly."""

    __slots__ = ("_tau", "_stamp", "_cost")

    def __init__(self, decay_time_s: float, now: float) -> None:
        if not decay_time_s > 0:
            raise ValueError("decay time must be positive")
        self._tau = decay_time_s
        self._stamp = now
        self._cost = 0.0

    @property
    def cost(self) -> float:
        """The value as of the last observation (no decay applied since)."""
        return self._cost

    @property
    def stamp(self) -> float:
        return self._stamp

    def observe(self, rtt: float, now: float) -> float:
        """Fold one sample in at time `now` and return the new cost.

        `observe(0.0, now)` is how Finagle applies the decay for the time that passed without a
        sample: it pulls the cost toward zero and moves the stamp, so the next real sample is
        weighted by the time since that look, not since the previous sample.
        """
        td = now - self._stamp
        if td < 0.0:
            td = 0.0
        cost = self._cost
        if rtt > cost:
            cost = rtt
        else:
            w = math.exp(-td / self._tau)
            cost = cost * w + rtt * (1.0 - w)
        self._cost = cost
        self._stamp = now
        return cost

    def decayed(self, now: float) -> float:
        """What `observe(0.0, now)` would return, without changing anything (for metrics)."""
        td = now - self._stamp
        if td <= 0.0:
            return self._cost
        return self._cost * math.exp(-td / self._tau)


class Ema:
    """Exponential moving average over stamped samples (stamps are times or sample counts)."""

    __slots__ = ("_window", "_initial", "_stamp", "_value", "_empty")

    def __init__(self, window: float, initial: float | None = None) -> None:
        if not window > 0:
            raise ValueError("window must be positive")
        self._window = window
        self._initial = initial
        self._stamp = 0.0
        self._value = 0.0 if initial is None else initial
        self._empty = initial is None

    @property
    def value(self) -> float:
        return self._value

    def update(self, stamp: float, x: float) -> float:
        if self._empty:
            self._empty = False
            self._value = x
        else:
            w = math.exp(-(stamp - self._stamp) / self._window)
            self._value = x * (1.0 - w) + self._value * w
        self._stamp = stamp
        return self._value

    def reset(self) -> None:
        self._stamp = 0.0
        self._value = 0.0 if self._initial is None else self._initial
        self._empty = self._initial is None
