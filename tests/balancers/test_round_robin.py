"""Round robin: plain rotation, nginx's smooth weighted sequence, ejections and avoid."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancers.backoff import ConstantBackoffConfig
from balancers.base import Balancer, NoNodesAvailable
from balancers.configs import ConsecutiveFailuresConfig, NoAccrualConfig, RoundRobinConfig

from .fakes import FakeClock, Member, build

EJECT_AT_ONCE = ConsecutiveFailuresConfig(failures=1, backoff=ConstantBackoffConfig(ms=60000))


def nginx_sequence(weights: list[int], picks: int) -> list[int]:
    """nginx's smooth weighted round robin, literally: O(n) per pick, first maximum wins."""
    current = [0] * len(weights)
    total = sum(weights)
    out = []
    for _ in range(picks):
        for i, w in enumerate(weights):
            current[i] += w
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= total
        out.append(best)
    return out


def rr(
    weights: list[float], clock: FakeClock | None = None, seed: int = 0
) -> tuple[Balancer[Member], dict[object, int]]:
    balancer: Balancer[Member] = RoundRobinConfig().build(
        clock or FakeClock(), random.Random(seed), NoAccrualConfig()
    )
    balancer.update([Member(f"n{i}", w) for i, w in enumerate(weights)])
    index: dict[object, int] = {node.key: i for i, node in enumerate(balancer.nodes())}
    return balancer, index


def test_empty_balancer_raises():
    with pytest.raises(NoNodesAvailable):
        build("roundRobin", FakeClock()).pick()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 20))
def test_equal_weights_rotate_through_every_node_in_order(seed, n):
    balancer, index = rr([1.0] * n, seed=seed)
    picks = [index[balancer.pick().key] for _ in range(3 * n)]
    first = picks[0]
    assert picks == [(first + k) % n for k in range(3 * n)]


def test_weights_5_1_1_give_nginx_smooth_sequence():
    balancer, index = rr([5.0, 1.0, 1.0])
    assert [index[balancer.pick().key] for _ in range(14)] == [0, 0, 1, 0, 2, 0, 0] * 2


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 4)), min_size=2, max_size=6, unique_by=lambda t: t[0]
    )
)
def test_weight_classes_give_the_same_sequence_as_literal_nginx(classes):
    """Listed grouped by weight, the O(distinct weights) version equals nginx pick for pick.

    (With a single weight the rotation starts at a random node; see the rotation test.)
    """
    weights = [w for w, count in classes for _ in range(count)]
    balancer, index = rr([float(w) for w in weights])
    got = [index[balancer.pick().key] for _ in range(3 * sum(weights))]
    assert got == nginx_sequence(weights, 3 * sum(weights))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=8))
def test_every_period_gives_each_node_exactly_its_weight(weights):
    balancer, index = rr([float(w) for w in weights])
    counts = [0] * len(weights)
    for _ in range(sum(weights)):
        counts[index[balancer.pick().key]] += 1
    assert counts == weights


def test_an_ejected_nodes_turns_are_spread_over_the_others():
    clock = FakeClock()
    balancer = build("roundRobin", clock, n=5, accrual=EJECT_AT_ONCE)
    nodes = balancer.nodes()
    bad = nodes[0]
    bad.finish(bad.start(), failure=True)
    counts = {node.key: 0 for node in nodes}
    for _ in range(5000):
        counts[balancer.pick().key] += 1
    assert counts[bad.key] == 0
    # each survivor gets its own 1000 plus about a quarter of the ejected node's 1000
    assert all(1150 <= counts[node.key] <= 1350 for node in nodes[1:])


def test_all_ejected_rotation_continues_and_is_counted():
    clock = FakeClock()
    balancer = build("roundRobin", clock, n=3, accrual=EJECT_AT_ONCE)
    for node in balancer.nodes():
        node.finish(node.start(), failure=True)
    picked = {balancer.pick().key for _ in range(6)}
    assert picked == {"n0", "n1", "n2"}
    stats = balancer.statistics()
    assert stats.all_ejected_picks == 6
    assert stats.ejected == 3


def test_avoid_gets_another_node():
    balancer = build("roundRobin", FakeClock(), n=3)
    avoid = balancer.nodes()[1]
    assert all(balancer.pick(avoid=avoid) is not avoid for _ in range(60))


def test_avoid_with_a_single_node_returns_it():
    balancer = build("roundRobin", FakeClock(), n=1)
    only = balancer.nodes()[0]
    assert balancer.pick(avoid=only) is only
