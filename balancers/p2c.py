"""Power of two choices: `p2c` (least loaded) and `ewma` (P2C over Peak EWMA).

How a pick works (Finagle 21.4.0 `p2c/P2CPick.scala` and `Balancer.scala`, weighted as its
`aperture/WeightedP2CPick.scala`):

1. Draw two distinct candidates, in proportion to their weights (uniformly when all weights
   are equal; see `alias.py`).
2. If both are available (live, or with an open probe) and neither is `avoid` (the retry's
   previous node), take the one with the lower `load / weight`; on a tie, the first drawn.
3. Otherwise draw again, up to `max_effort` (5) pairs. After that, run the same comparison
   over two nodes drawn uniformly from the available ones (an O(1) list), preferring any
   node over `avoid`. If the draws met no available node at all although one exists, count
   `max_effort_exhausted` (Finagle's counter of the same name).
4. When no node is available at all, compare any two as if none were ejected and count it
   in `all_ejected_picks` (linkerd behaviour: never fail a request because of ejections). The
   same, counted in `panic_picks`, while fewer nodes than the panic threshold are available
   (`set_health_limits`, Envoy's panic mode; by default the threshold is "none available").
   The same when the only available node is `avoid`: a retry never goes back to the node that
   just failed it while any other node exists, ejected or not (the two drawn are distinct, so
   one of them is not `avoid`). An `avoid` from another balancer (the previous attempt took
   another union branch) is ignored.

Where this departs from Finagle, and why: Finagle takes the healthier of the two at once
(`Status.best`), so an ejected candidate hands the pick to its partner whatever the
partner's load: with one node ejected out of ten, 2 % of all picks go to each other node
unexamined, the slowest included (the simulation shows it: the 100 ms-slow replica's share
under `ewma` rises from 0.1 % to 2 % while a failing replica is ejected). Redrawing keeps
every pick a real comparison of two available nodes, and the fallback over the list of
available nodes means an ejected node is never chosen while another is available (Finagle
then picks whatever its last draw gave).

Why weights both skew the draw and divide the load: the two rules have the same fixed point.
Idle nodes all tie at load 0, so the first draw decides and a node of weight w is chosen
with probability w / total; under load, comparing `load / weight` settles where in-flight
attempts are proportional to weights, which at equal latency is again a share proportional
to weight. Using only the division would let the idle case ignore weights; using only the
draw would let the loaded case pull shares back toward equal.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

from balancers.accrual import AccrualPolicyFactory
from balancers.alias import AliasTable, draw_pair
from balancers.base import Clock, M, NoNodesAvailable
from balancers.membership import Membership, NodeFactory
from balancers.node import PROBE_OPEN, Node

__all__ = ["P2CBalancer"]


class P2CBalancer(Membership[M]):
    def __init__(
        self,
        *,
        kind: str,
        clock: Clock,
        rng: random.Random,
        accrual: AccrualPolicyFactory,
        node_factory: NodeFactory[M],
        max_effort: int = 5,
    ) -> None:
        super().__init__(kind=kind, clock=clock, rng=rng, accrual=accrual, node_factory=node_factory)
        self._max_effort = max_effort
        self._draw: Callable[[], tuple[int, int]] = partial(draw_pair, self._random, 2)

    def pick(self, avoid: Node[M] | None = None) -> Node[M]:
        nodes = self._nodes
        n = len(nodes)
        if n == 0:
            raise NoNodesAvailable(f"the {self._kind} balancer has no endpoints")
        if avoid is not None and avoid._owner is not self:
            avoid = None  # the previous attempt went to another replica set (a union branch)
        now = self._clock()
        deadlines = self._deadlines
        if deadlines and deadlines[0][0] <= now:
            self._wake(now)
        self._picks += 1
        if len(self._available) < self._panic_below:
            # Panic mode (fewer available than the panic threshold; by default: none): health is
            # ignored and the pick compares any two nodes, as if none were ejected.
            self._panic_picks += 1
            if not self._available:
                self._all_ejected_picks += 1
            if n == 1:
                return nodes[0]
            i, j = self._draw()
            return _lighter(nodes[i], nodes[j], avoid, now)
        if n == 1:
            return nodes[0]
        draw = self._draw
        seen_one = False
        for _ in range(self._max_effort):
            i, j = draw()
            a = nodes[i]
            b = nodes[j]
            a_ok = a._slot >= 0 and a is not avoid
            b_ok = b._slot >= 0 and b is not avoid
            if a_ok and b_ok:
                return _better(a, b, now)
            seen_one = seen_one or a_ok or b_ok
        available = self._available
        if not seen_one and len(available) > (1 if avoid is not None and avoid._slot >= 0 else 0):
            self._max_effort_exhausted += 1
        return self._lighter_available(avoid, now)

    def _lighter_available(self, avoid: Node[M] | None, now: float) -> Node[M]:
        available = self._available
        m = len(available)
        if m == 1:
            only = available[0]
            if only is avoid and len(self._nodes) > 1:
                # The node that just failed this request is the only available one: every other
                # node is ejected. Pick among those as when all are (step 4), never `avoid` again.
                self._all_ejected_picks += 1
                nodes = self._nodes
                i, j = self._draw()
                return _lighter(nodes[i], nodes[j], avoid, now)
            return only
        i, j = draw_pair(self._random, m)
        return _lighter(available[i], available[j], avoid, now)

    def _rebuilt(self) -> None:
        nodes = self._nodes
        first = nodes[0]._weight if nodes else 1.0
        if any(node._weight != first for node in nodes):
            self._draw = partial(AliasTable([node._weight for node in nodes]).pair, self._random)
        else:
            self._draw = partial(draw_pair, self._random, max(len(nodes), 2))


def _lighter(a: Node[M], b: Node[M], avoid: Node[M] | None, now: float) -> Node[M]:
    """The candidate other than `avoid`, else the better of the two (see `_better`)."""
    if a is avoid:
        return b
    if b is avoid:
        return a
    return _better(a, b, now)


def _better(a: Node[M], b: Node[M], now: float) -> Node[M]:
    """A node waiting for its one probe wins; otherwise the lower load (`a` on a tie).

    Failure accrual promises an ejected node one probe request once its backoff is over. Under
    Peak EWMA a node's cost still carries its failures then (its success-rate factor only
    recovers with successes), so by load alone it would never win a comparison, never be probed
    and never come back. Giving the probe priority costs one request per backoff period.
    """
    if a._state == PROBE_OPEN:
        return a
    if b._state == PROBE_OPEN:
        return b
    return a if a._load(now) <= b._load(now) else b
