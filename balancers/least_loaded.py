"""Least-loaded load metric: a node's load is its number of attempts in flight.

Finagle `loadbalancer/LeastLoaded.scala`: an outstanding-request counter, raised when an
attempt starts and lowered when it ends. P2C compares `pending / weight`, so a node of
weight 2 is as attractive as a node of weight 1 with half its in-flight attempts.
"""

from __future__ import annotations

from balancers.base import M
from balancers.node import Node

__all__ = ["LeastLoadedNode"]


class LeastLoadedNode(Node[M]):
    __slots__ = ()

    def _load(self, now: float) -> float:
        return self._pending / self._weight

    def _observe(self, rtt: float, failure: bool, now: float) -> None:
        pass
