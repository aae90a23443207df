"""Round robin (`roundRobin`): rotation, weighted smoothly as nginx does.

How this works. nginx's smooth weighted round robin (`ngx_http_upstream_get_peer`): every
pick adds each node's weight to its `current`, chooses the node with the highest `current`
and subtracts the total weight from it. With weights 5, 1, 1 that gives a a b a c a a: each
node gets its share and picks of a heavy node are spread out rather than bunched.

Done literally that is O(n) per pick. Nodes of equal weight always move together, though:
their `current`s are all `v` or `v - total`, and they are chosen in rotation. So each *weight
class* keeps one value `v` and a rotation pointer, and a pick costs O(number of distinct
weights): O(1) for the usual all-equal case (plain rotation), and always the same sequence as
nginx when nodes are listed grouped by weight (tests compare with a literal implementation).

Ejections (Finagle `RoundRobinBalancer` skips non-Open nodes): when the node whose turn it is
is not available (ejected, or its probe is in flight), or is the retry's `avoid`, its turn goes
to a uniformly random available node, so the ejected node's share is spread evenly instead of
doubling its neighbour's. When no node is available the rotation continues as if none were
ejected, counted in `all_ejected_picks`; when the only available node is `avoid`, the pick goes
to a random other node, ejected, counted the same way: a retry never goes back to the node that
just failed it while another exists. The smooth state restarts from zero on every
update (as nginx does on reload); when all weights are equal the rotation restarts at a
random node, so frequent updates do not favour the first one.
"""

from __future__ import annotations

import random

from balancers.accrual import AccrualPolicyFactory
from balancers.base import Clock, M, NoNodesAvailable
from balancers.membership import Membership, NodeFactory
from balancers.node import Node

__all__ = ["RoundRobinBalancer"]


class RoundRobinBalancer(Membership[M]):
    def __init__(
        self,
        *,
        kind: str,
        clock: Clock,
        rng: random.Random,
        accrual: AccrualPolicyFactory,
        node_factory: NodeFactory[M],
    ) -> None:
        super().__init__(kind=kind, clock=clock, rng=rng, accrual=accrual, node_factory=node_factory)
        self._total = 0.0
        self._class_weights: list[float] = []
        self._class_values: list[float] = []
        self._class_members: list[list[Node[M]]] = []
        self._class_next: list[int] = []

    def pick(self, avoid: Node[M] | None = None) -> Node[M]:
        if not self._nodes:
            raise NoNodesAvailable(f"the {self._kind} balancer has no endpoints")
        if avoid is not None and avoid._owner is not self:
            avoid = None  # the previous attempt went to another replica set (a union branch)
        now = self._clock()
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] <= now:
            self._wake(now)
        self._picks += 1
        node = self._next_turn()
        available = len(self._available)
        if available >= self._panic_below and node._slot >= 0 and node is not avoid:
            return node
        if available < self._panic_below:
            # panic mode (by default: no node available): the turn is taken whatever its health
            self._panic_picks += 1
            if not available:
                self._all_ejected_picks += 1
            if node is avoid and len(self._nodes) > 1:
                node = self._next_turn()
                if node is avoid:  # a heavy node can have two turns in a row
                    node = self._other_than(avoid)
            return node
        return self._pick_available(avoid)

    def _next_turn(self) -> Node[M]:
        """One step of smooth weighted round robin over the weight classes."""
        values = self._class_values
        if len(values) == 1:
            members = self._class_members[0]
            i = self._class_next[0]
            self._class_next[0] = i + 1 if i + 1 < len(members) else 0
            return members[i]
        weights = self._class_weights
        best = 0
        best_value = float("-inf")
        for g in range(len(values)):
            v = values[g] + weights[g]
            values[g] = v
            if v > best_value:
                best_value = v
                best = g
        members = self._class_members[best]
        i = self._class_next[best] + 1
        if i == len(members):
            i = 0
            values[best] -= self._total
        self._class_next[best] = i
        return members[i - 1 if i else len(members) - 1]

    def _rebuilt(self) -> None:
        classes: dict[float, list[Node[M]]] = {}
        for node in self._nodes:
            classes.setdefault(node._weight, []).append(node)
        self._class_weights = list(classes)
        self._class_members = list(classes.values())
        self._class_values = [0.0] * len(classes)
        self._total = sum(node._weight for node in self._nodes)
        if len(classes) == 1:
            # Plain rotation: start anywhere, so frequent updates do not favour one node.
            self._class_next = [int(self._random() * len(self._nodes)) % len(self._nodes)]
        else:
            self._class_next = [0] * len(classes)
