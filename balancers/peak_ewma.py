"""Peak EWMA load metric: expected latency of one more request, failures priced in.

How this works. Finagle 21.4.0 `loadbalancer/PeakEwma.scala`, times in seconds here:

    on start:   pending += 1
    on finish:  pending -= 1; observe(now - started)        (see `ewma.PeakEwma`)
    load(now):  observe(0.0)                                 # decay for the time that passed
                if cost == 0 and pending != 0: PENALTY + pending   # no history, probe in flight
                else:                          cost * (pending + 1)

A new node has load 0 and is tried at once; while that first attempt is out it costs
PENALTY (2**47 - 1 ns, Finagle's `Long.MaxValue >> 16`, about 1.4e5 s), so it gets no second
attempt before the first RTT is known.

Failures (meshd's addition; Finagle counts a failure's RTT like any other, so a node that
fails fast looks fast and attracts traffic until failure accrual ejects it). Two rules:

1. A failure's RTT is only a lower bound on how long this node takes to produce a useful
   answer, so it may raise the cost (a slow failure, e.g. a timeout, is a peak like any
   other) but never lower it: it is observed as `max(rtt, cost)`.
2. The load is divided by the node's recent success rate `s`, an `Ema` over its last
   SUCCESS_WINDOW (10) outcomes, 1 per success and 0 per failure, starting at 1 (no evidence
   of failure yet) and floored at SUCCESS_FLOOR (0.01). If a failed attempt has to be made
   again, the expected number of attempts to get one success from this node is 1/s, so
   `cost * (pending + 1) / s` is the expected time to a success. A node failing half of its
   requests looks twice as expensive; a node answering only failures looks 100 times as
   expensive, yet its cost still decays with time, so it is tried again now and then.

With no failures `s` is 1 and the metric is exactly Finagle's. Finally, P2C compares
`load / weight`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

from balancers.accrual import AccrualPolicy
from balancers.base import Clock, M
from balancers.ewma import PeakEwma
from balancers.node import Node

if TYPE_CHECKING:
    from balancers.membership import Membership

__all__ = ["PENALTY_SECONDS", "SUCCESS_FLOOR", "SUCCESS_WINDOW", "PeakEwmaNode"]

PENALTY_SECONDS: Final = float((2**63 - 1) >> 16) / 1e9
"""Finagle's `Penalty = Long.MaxValue >> 16` nanoseconds, in seconds."""

SUCCESS_WINDOW: Final = 10
SUCCESS_FLOOR: Final = 0.01
_SUCCESS_KEEP: Final = math.exp(-1.0 / SUCCESS_WINDOW)


class PeakEwmaNode(Node[M]):
    __slots__ = ("_ewma", "_success")

    def __init__(
        self,
        member: M,
        clock: Clock,
        policy: AccrualPolicy,
        owner: Membership[M] | None,
        decay_time_s: float,
    ) -> None:
        super().__init__(member, clock, policy, owner)
        self._ewma = PeakEwma(decay_time_s, clock())
        self._success = 1.0

    @property
    def ewma_seconds(self) -> float:
        return self._ewma.decayed(self._clock())

    @property
    def success_rate(self) -> float:
        """The recent success rate that divides this node's load (1.0 until a failure)."""
        return self._success

    def _load(self, now: float) -> float:
        cost = self._ewma.observe(0.0, now)
        pending = self._pending
        if cost == 0.0 and pending != 0:
            return (PENALTY_SECONDS + pending) / self._weight
        success = self._success
        if success < SUCCESS_FLOOR:
            success = SUCCESS_FLOOR
        return cost * (pending + 1) / success / self._weight

    def _observe(self, rtt: float, failure: bool, now: float) -> None:
        ewma = self._ewma
        if failure:
            if rtt < ewma.cost:
                rtt = ewma.cost
            self._success = self._success * _SUCCESS_KEEP
        elif self._success != 1.0:
            self._success = 1.0 - (1.0 - self._success) * _SUCCESS_KEEP
        ewma.observe(rtt, now)
