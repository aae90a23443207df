"""Membership: the node set every balancer kind shares, with O(1) availability bookkeeping.

How this works. `update()` maps members to nodes by key: a staying key keeps its node (and so
its pending count, EWMA and accrual state), a new key gets a fresh node, a leaving key's node
is detached and its member returned. Kinds rebuild their pick structures in `_rebuilt()`,
O(n) per update.

Picks must be O(1), so availability is kept incrementally rather than scanned:
- `_available` lists the nodes a pick may choose without overriding accrual (live, or with an
  open probe), each node knowing its slot, so adding and removing is O(1) (swap with last).
- `_deadlines` is a heap of (ejected-until, seq, node). There are no timers: each pick pops
  the deadlines that have passed and lets those nodes open their probe. Entries of nodes that
  were removed or ejected again are recognised and dropped when they surface.
Nodes report their own transitions through the `_node_*` methods.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Hashable, Sequence
from typing import Generic

from balancers.accrual import AccrualPolicyFactory
from balancers.alias import draw_pair
from balancers.base import BalancerStatistics, Clock, M
from balancers.node import EJECTED, LIVE, Node, _check_weight

__all__ = ["Membership", "NodeFactory"]

NodeFactory = Callable[[M, "Membership[M]", AccrualPolicyFactory], Node[M]]
"""Makes the kind's node for a new member: (member, owner, policy factory) -> node."""


class Membership(Generic[M]):
    def __init__(
        self,
        *,
        kind: str,
        clock: Clock,
        rng: random.Random,
        accrual: AccrualPolicyFactory,
        node_factory: NodeFactory[M],
    ) -> None:
        self._kind = kind
        self._clock = clock
        self._rng = rng
        self._random = rng.random
        self._accrual = accrual
        self._node_factory = node_factory
        self._nodes: list[Node[M]] = []
        self._by_key: dict[Hashable, Node[M]] = {}
        self._available: list[Node[M]] = []
        self._deadlines: list[tuple[float, int, Node[M]]] = []
        self._seq = 0
        self._picks = 0
        self._all_ejected_picks = 0
        self._max_effort_exhausted = 0
        self._ejections = 0
        self._revivals = 0
        self._probe_failures = 0
        self._updates = 0
        self._removed = 0
        # Health limits (`set_health_limits`): by default no cap on ejections and no panic mode
        # beyond "no node available" (Finagle's behaviour).
        self._max_ejection_percent = 100.0
        self._panic_threshold_percent = 0.0
        #: nodes not live now (ejected or probing), kept incrementally
        self._unhealthy = 0
        #: a pick ignores health while fewer than this many nodes are available (at least 1)
        self._panic_below = 1
        self._panic_picks = 0
        self._ejections_prevented = 0

    @property
    def kind(self) -> str:
        return self._kind

    def set_health_limits(self, *, max_ejection_percent: float, panic_threshold_percent: float) -> None:
        """Cap failure accrual's ejections and set the panic threshold (Envoy's outlier detection
        `max_ejection_percent` and `healthy_panic_threshold`).

        At most `max_ejection_percent` of the nodes (rounded down, but at least one) are out at
        once (ejected or probing); a node that would pass the cap stays in. While fewer than
        `panic_threshold_percent` of the nodes (rounded up, at least one) are available, a pick
        ignores health and spreads over all nodes (panic mode). 100 and 0 are Finagle's behaviour.
        """
        if not 0.0 <= max_ejection_percent <= 100.0 or not 0.0 <= panic_threshold_percent <= 100.0:
            raise ValueError("health limits are percentages between 0 and 100")
        self._max_ejection_percent = max_ejection_percent
        self._panic_threshold_percent = panic_threshold_percent
        self._set_panic_below()

    @property
    def in_panic(self) -> bool:
        """Whether a pick now ignores health (too few nodes available)."""
        self._wake(self._clock())
        return bool(self._nodes) and len(self._available) < self._panic_below

    def _set_panic_below(self) -> None:
        n = len(self._nodes)
        share = n * self._panic_threshold_percent / 100.0
        below = int(share)
        if below < share:
            below += 1  # rounded up: 50% of 3 nodes is 2 available
        self._panic_below = below if below > 1 else 1

    def update(self, members: Sequence[M]) -> list[M]:
        """Replace the member set; stayers keep their state, leavers are returned.

        If two members share a key, the last one's object and weight win. Weights are checked
        before anything changes, so a bad update leaves the balancer as it was.
        """
        for member in members:
            _check_weight(member.weight)
        old = self._by_key
        nodes: list[Node[M]] = []
        by_key: dict[Hashable, Node[M]] = {}
        for member in members:
            key = member.key
            node = by_key.get(key)
            if node is not None:
                node._replace_member(member)
                continue
            node = old.get(key)
            if node is None:
                node = self._node_factory(member, self, self._accrual)
                self._node_available(node)
            else:
                node._replace_member(member)
            by_key[key] = node
            nodes.append(node)
        removed = [node for key, node in old.items() if key not in by_key]
        for node in removed:
            self._node_unavailable(node)
            if node._state != LIVE:
                self._unhealthy -= 1
            node._detach()
        self._nodes = nodes
        self._by_key = by_key
        self._updates += 1
        self._removed += len(removed)
        self._set_panic_below()
        self._rebuilt()
        return [node.member for node in removed]

    def pick(self, avoid: Node[M] | None = None) -> Node[M]:
        """Each balancer's own (`Balancer.pick`). Declared here so that a caller holding a
        `Membership` calls it through mypyc's vtable (a C call) instead of a Python method call."""
        raise NotImplementedError

    def nodes(self) -> Sequence[Node[M]]:
        return tuple(self._nodes)

    def statistics(self) -> BalancerStatistics:
        now = self._clock()
        self._wake(now)
        live = ejected = pending = 0
        for node in self._nodes:
            node._refresh(now)
            pending += node._pending
            if node._state == LIVE:
                live += 1
            elif node._state == EJECTED:
                ejected += 1
        return BalancerStatistics(
            kind=self._kind,
            nodes=len(self._nodes),
            live=live,
            ejected=ejected,
            probing=len(self._nodes) - live - ejected,
            pending=pending,
            picks=self._picks,
            all_ejected_picks=self._all_ejected_picks,
            max_effort_exhausted=self._max_effort_exhausted,
            ejections=self._ejections,
            revivals=self._revivals,
            probe_failures=self._probe_failures,
            updates=self._updates,
            removed=self._removed,
            panic_picks=self._panic_picks,
            ejections_prevented=self._ejections_prevented,
            panic=bool(self._nodes) and len(self._available) < self._panic_below,
        )

    # -- for the kinds ----------------------------------------------------------------------

    def _rebuilt(self) -> None:
        """Called after every update, once `_nodes` holds the new set."""

    def _wake(self, now: float) -> None:
        """Open the probes of ejections that have run out. Cheap when none has."""
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            node = heapq.heappop(deadlines)[2]
            if node._owner is self:
                node._refresh(now)

    def _pick_available(self, avoid: Node[M] | None) -> Node[M]:
        """A uniformly random available node other than `avoid` (a node of this balancer).

        If `avoid` is the only available node, a random other node, ejected (counted in
        `all_ejected_picks`); `avoid` itself only when it is the only node. Callers make sure at
        least one node is available.
        """
        available = self._available
        n = len(available)
        if avoid is None or avoid._slot < 0:
            i = int(self._random() * n)
            return available[i if i < n else n - 1]
        if n == 1:
            if len(self._nodes) > 1:
                self._all_ejected_picks += 1
                return self._other_than(avoid)
            return avoid
        i = int(self._random() * (n - 1))
        if i >= n - 1:
            i = n - 2
        if i >= avoid._slot:
            i += 1
        return available[i]

    def _other_than(self, avoid: Node[M]) -> Node[M]:
        """A uniformly random node other than `avoid`, ejected or not; needs at least two nodes.

        Of two distinct uniform draws, the first unless it is `avoid`: each other node has
        probability 1/n + 1/n * 1/(n - 1) = 1/(n - 1).
        """
        nodes = self._nodes
        i, j = draw_pair(self._random, len(nodes))
        node = nodes[i]
        return nodes[j] if node is avoid else node

    # -- told by nodes ----------------------------------------------------------------------

    def _node_available(self, node: Node[M]) -> None:
        if node._slot < 0:
            node._slot = len(self._available)
            self._available.append(node)

    def _node_unavailable(self, node: Node[M]) -> None:
        slot = node._slot
        if slot < 0:
            return
        last = self._available.pop()
        if last is not node:
            self._available[slot] = last
            last._slot = slot
        node._slot = -1

    def _node_ejected(self, node: Node[M], *, from_live: bool) -> None:
        self._node_unavailable(node)
        self._seq += 1
        heapq.heappush(self._deadlines, (node._until, self._seq, node))
        if from_live:
            self._ejections += 1
            self._unhealthy += 1
        else:
            self._probe_failures += 1

    def _node_revived(self, node: Node[M]) -> None:
        self._node_available(node)
        self._revivals += 1
        self._unhealthy -= 1

    def _may_eject(self) -> bool:
        """May one more node be ejected under `max_ejection_percent`? Counts a refusal."""
        if self._max_ejection_percent >= 100.0:
            return True
        allowed = int(len(self._nodes) * self._max_ejection_percent / 100.0)
        if self._unhealthy < (allowed if allowed > 1 else 1):
            return True
        self._ejections_prevented += 1
        return False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(kind={self._kind}, nodes={len(self._nodes)}, "
            f"available={len(self._available)})"
        )
