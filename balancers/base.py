"""The balancer interface meshd calls: members in, nodes out, statistics for metrics and admin.

A *member* is meshd's endpoint object, opaque here except for `key` (identity across
updates) and `weight`. The balancer wraps each member in a `Node` (see `node.py`) that
carries its load and failure-accrual state; meshd calls `node.start()` when an attempt is
sent and `node.finish(...)` exactly once when it ends. Time comes from an injected `Clock`
(monotonic seconds) and randomness from an injected `random.Random`, so every decision can
be replayed in tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from balancers.member import Clock, M, Member
from balancers.node import Node, NodeState

# `Clock`, `M`, `Member` (balancers/member.py) and `NodeState` (balancers/node.py) are defined
# below this interface, which names them for meshd and the balancer kinds.
__all__ = ["Balancer", "BalancerStatistics", "Clock", "M", "Member", "NoNodesAvailable", "Node", "NodeState"]


class NoNodesAvailable(Exception):
    """`pick()` on a balancer whose member set is empty (Finagle's NoBrokersAvailable)."""


@dataclass(frozen=True, slots=True)
class BalancerStatistics:
    """A snapshot of one balancer: node counts per state and cumulative counters.

    `ejections` counts live -> ejected transitions (Finagle's `removals`); a failed probe that
    ejects a node again counts in `probe_failures` instead, and a successful one in `revivals`.
    `all_ejected_picks` counts picks made while no node was available, which then went to a
    node as if none were ejected (linkerd behaviour). `max_effort_exhausted` counts P2C picks
    whose random draws found no available node although one existed (it was then found
    directly). Cumulative counters include nodes that have since been removed.
    """

    kind: str
    nodes: int
    live: int
    ejected: int
    probing: int
    pending: int
    picks: int
    all_ejected_picks: int
    max_effort_exhausted: int
    ejections: int
    revivals: int
    probe_failures: int
    updates: int
    removed: int
    #: picks made in panic mode (fewer than the panic threshold available: health ignored)
    panic_picks: int = 0
    #: ejections failure accrual asked for and `max_ejection_percent` refused
    ejections_prevented: int = 0
    #: the balancer is in panic mode now
    panic: bool = False


class Balancer(Protocol[M]):
    """Chooses a node per attempt. Synchronous, never blocks; O(1) per pick, O(n) per update."""

    @property
    def kind(self) -> str: ...

    def update(self, members: Sequence[M]) -> list[M]:
        """Replace the member set; return the members that left (meshd drains their pools).

        Members whose key stays keep all their state (pending, EWMA, accrual) and take the new
        object and weight. A member that leaves and later returns starts fresh.
        """
        ...

    def pick(self, avoid: Node[M] | None = None) -> Node[M]:
        """Choose a node for one attempt; raise `NoNodesAvailable` if the member set is empty.

        `avoid` (a retry's previous node) is passed over when another available node exists,
        and is never returned while any other node exists: if it is the only available one,
        the pick goes to an ejected node (counted in `all_ejected_picks`). A node of another
        balancer (a retry that took another union branch) is ignored.
        """
        ...

    def nodes(self) -> Sequence[Node[M]]: ...

    def statistics(self) -> BalancerStatistics: ...

    def set_health_limits(self, *, max_ejection_percent: float, panic_threshold_percent: float) -> None:
        """Cap ejections and set the panic threshold (see `Membership.set_health_limits`)."""
        ...
