"""Node: one member inside a balancer, with its in-flight count, load metric and accrual state.

How this works. meshd calls `start()` when it sends an attempt to the node and `finish()`
exactly once when that attempt ends. `finish` feeds the load metric (subclasses: requests in
flight for P2C and round robin, Peak EWMA for `ewma`) and the failure-accrual state machine:

    LIVE         counts outcomes in the policy; a failure the policy rejects -> EJECTED
    EJECTED      until `until`; outcomes are ignored (they say nothing new about recovery)
    PROBE_OPEN   `until` has passed: available again, for exactly one request
    PROBE_TAKEN  the probe is in flight: unavailable; the first attempt started at or after the
                 probe ends the probe: success -> LIVE (policy revived), failure -> EJECTED for
                 the policy's next backoff. Attempts started before the probe are ignored.

There are no timers: EJECTED becomes PROBE_OPEN when anything looks at the clock (a pick, a
start, a finish, `state`). The owning balancer is told of every change of availability, so it
can keep an O(1) set of available nodes. A node removed from its balancer is detached: it
still counts its in-flight attempts but tells nobody.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Final, Generic, Literal, Protocol

from balancers.accrual import AccrualPolicy
from balancers.member import Clock, M

__all__ = ["Node", "NodeOwner", "NodeState"]

NodeState = Literal["live", "ejected", "probing"]


class NodeOwner(Protocol):
    """What a node tells its balancer (`Membership`, balancers/membership.py) when its availability changes.

    A protocol rather than the `Membership` class, so that the node sits below the membership
    that holds it (no import cycle). The calls happen only on transitions (ejection, probe,
    revival), never on a request's common path, which stays native calls on `Node`.
    """

    def _node_available(self, node: Node[Any]) -> None: ...

    def _node_unavailable(self, node: Node[Any]) -> None: ...

    def _node_ejected(self, node: Node[Any], *, from_live: bool) -> None: ...

    def _node_revived(self, node: Node[Any]) -> None: ...

    def _may_eject(self) -> bool: ...

LIVE: Final = 0
EJECTED: Final = 1
PROBE_OPEN: Final = 2
PROBE_TAKEN: Final = 3
_STATE_NAMES: Final[tuple[NodeState, ...]] = ("live", "ejected", "probing", "probing")


class Node(Generic[M]):
    """Base node; subclasses define the load metric through `_load` and `_observe`."""

    __slots__ = (
        "_member",
        "_key",
        "_weight",
        "_pending",
        "_clock",
        "_policy",
        "_owner",
        "_state",
        "_until",
        "_probe_started",
        "_ejections",
        "_slot",
    )

    def __init__(self, member: M, clock: Clock, policy: AccrualPolicy, owner: NodeOwner | None) -> None:
        self._member = member
        self._key = member.key
        self._weight = _check_weight(member.weight)
        self._pending = 0
        self._clock = clock
        self._policy = policy
        self._owner = owner
        self._state: int = LIVE
        self._until = 0.0
        self._probe_started = 0.0
        self._ejections = 0
        self._slot = -1  # index in the owner's list of available nodes, -1 when not in it

    # -- public read-only view ------------------------------------------------------------

    @property
    def member(self) -> M:
        return self._member

    @property
    def key(self) -> Hashable:
        return self._key

    @property
    def weight(self) -> float:
        return self._weight

    @property
    def pending(self) -> int:
        """Attempts started and not yet finished."""
        return self._pending

    @property
    def ewma_seconds(self) -> float:
        """The Peak EWMA round-trip time, decayed to now; 0 for kinds that do not track it."""
        return 0.0

    @property
    def cost(self) -> float:
        """The value P2C compares for this node now: its load divided by its weight."""
        return self._load(self._clock())

    @property
    def state(self) -> NodeState:
        self._refresh(self._clock())
        return _STATE_NAMES[self._state]

    @property
    def ejections(self) -> int:
        """How many times failure accrual took this node from live to ejected."""
        return self._ejections

    @property
    def ejected_until(self) -> float | None:
        """Clock time at which an ejected node becomes probeable; None unless ejected."""
        self._refresh(self._clock())
        return self._until if self._state == EJECTED else None

    def is_available(self) -> bool:
        """Whether a pick may choose this node without overriding accrual (live or probe open)."""
        self._refresh(self._clock())
        return self._state == LIVE or self._state == PROBE_OPEN

    # -- attempt lifecycle ----------------------------------------------------------------

    def start(self) -> float:
        """Count an attempt before it is sent, so concurrent picks see this node as busier.

        On a node whose probe is open this attempt becomes the probe, and the node admits no
        other until it ends. Returns the start time to hand back to `finish`.
        """
        now = self._clock()
        self._pending += 1
        if self._state != LIVE:
            self._refresh(now)
            if self._state == PROBE_OPEN:
                self._state = PROBE_TAKEN
                self._probe_started = now
                if self._owner is not None:
                    self._owner._node_unavailable(self)
        return now

    def finish(self, started: float, *, failure: bool) -> float:
        """Record the end of an attempt begun at `started` (the value `start()` returned).

        Returns the attempt's round-trip time, the one the load metric has just observed, so
        that the caller can record it too without reading the clock again (meshd's client
        keeps per-endpoint latency histograms with it)."""
        if self._pending <= 0:
            raise RuntimeError(f"finish() without a matching start() on {self!r}")
        now = self._clock()
        self._pending -= 1
        rtt = now - started
        if rtt < 0.0:
            rtt = 0.0
        self._observe(rtt, failure, now)
        state = self._state
        if state == LIVE:
            if failure:
                delay = self._policy.record_failure()
                if delay is not None:
                    owner = self._owner
                    if owner is not None and not owner._may_eject():
                        # `maxEjectionPercent` of the set is out already: this node stays in and
                        # its policy starts over, as after a revival (counted by the owner)
                        self._policy.revived()
                    else:
                        self._ejections += 1
                        self._eject(now, delay, from_live=True)
            else:
                self._policy.record_success()
        elif state == PROBE_TAKEN:
            if started >= self._probe_started:
                if failure:
                    self._eject(now, self._policy.next_backoff(), from_live=False)
                else:
                    self._state = LIVE
                    self._policy.revived()
                    if self._owner is not None:
                        self._owner._node_revived(self)
        else:
            self._refresh(now)
        return rtt

    # -- load metric, defined by subclasses ------------------------------------------------

    def _load(self, now: float) -> float:
        raise NotImplementedError

    def _observe(self, rtt: float, failure: bool, now: float) -> None:
        raise NotImplementedError

    # -- internals --------------------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        """Lazily end an ejection whose time has come."""
        if self._state == EJECTED and now >= self._until:
            self._state = PROBE_OPEN
            if self._owner is not None:
                self._owner._node_available(self)

    def _eject(self, now: float, delay: float, *, from_live: bool) -> None:
        self._state = EJECTED
        self._until = now + delay
        if self._owner is not None:
            self._owner._node_ejected(self, from_live=from_live)

    def _replace_member(self, member: M) -> None:
        self._member = member
        self._weight = _check_weight(member.weight)

    def _detach(self) -> None:
        self._owner = None
        self._slot = -1

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._key!r}, weight={self._weight:g}, pending={self._pending}, "
            f"state={_STATE_NAMES[self._state]})"
        )


def _check_weight(weight: float) -> float:
    w = float(weight)
    if not w > 0.0 or w == float("inf"):
        raise ValueError(f"endpoint weight must be a positive finite number, got {weight!r}")
    return w
