"""P2C picks: distinct candidates, never the more loaded one, health first, maxEffort, avoid."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancers.alias import AliasTable, draw_pair
from balancers.backoff import ConstantBackoffConfig
from balancers.base import NoNodesAvailable
from balancers.configs import ConsecutiveFailuresConfig

from .fakes import FakeClock, Member, build, members

P2C_KINDS = ("p2c", "ewma")
EJECT_AT_ONCE = ConsecutiveFailuresConfig(failures=1, backoff=ConstantBackoffConfig(ms=60000))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(2, 50))
def test_uniform_pairs_are_distinct_and_in_range(seed, n):
    rng = random.Random(seed)
    for _ in range(50):
        a, b = draw_pair(rng.random, n)
        assert a != b
        assert 0 <= a < n and 0 <= b < n


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), weights=st.lists(st.floats(0.001, 1000.0), min_size=2, max_size=30))
def test_weighted_pairs_are_distinct_and_in_range(seed, weights):
    rng = random.Random(seed)
    table = AliasTable(weights)
    for _ in range(50):
        a, b = table.pair(rng.random)
        assert a != b
        assert 0 <= a < len(weights) and 0 <= b < len(weights)


def test_alias_table_samples_in_proportion_to_weights():
    weights = [1.0, 2.0, 3.0, 10.0]
    table = AliasTable(weights)
    rng = random.Random(7)
    draws = 40000
    counts = [0] * len(weights)
    for _ in range(draws):
        counts[table.sample(rng.random)] += 1
    total = sum(weights)
    chi2 = sum(
        (c - draws * w / total) ** 2 / (draws * w / total) for c, w in zip(counts, weights, strict=True)
    )
    assert chi2 < 30.66  # chi-squared, 3 degrees of freedom, p = 1e-6


@pytest.mark.parametrize("kind", P2C_KINDS)
def test_empty_balancer_raises(kind):
    balancer = build(kind, FakeClock())
    with pytest.raises(NoNodesAvailable):
        balancer.pick()


@pytest.mark.parametrize("kind", P2C_KINDS)
def test_single_node_is_always_picked(kind):
    balancer = build(kind, FakeClock(), n=1)
    only = balancer.nodes()[0]
    only.start()
    assert all(balancer.pick() is only for _ in range(10))


@pytest.mark.parametrize("kind", P2C_KINDS)
@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), pending=st.tuples(st.integers(0, 6), st.integers(0, 6)))
def test_of_two_nodes_the_more_loaded_is_never_picked(kind, seed, pending):
    """With two nodes the pair is always both, so the pick must be the less loaded one."""
    clock = FakeClock()
    balancer = build(kind, clock, seed=seed, n=2)
    a, b = balancer.nodes()
    for node, count in zip((a, b), pending, strict=True):
        # give both some history so Peak EWMA compares costs, not the first-probe penalty
        started = node.start()
        clock.advance(0.010)
        node.finish(started, failure=False)
        for _ in range(count):
            node.start()
    for _ in range(20):
        picked = balancer.pick()
        other = b if picked is a else a
        assert picked.cost <= other.cost


@pytest.mark.parametrize("kind", P2C_KINDS)
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), pending=st.lists(st.integers(0, 8), min_size=3, max_size=12))
def test_a_strictly_most_loaded_node_is_never_picked(kind, seed, pending):
    """Whatever pair is drawn, a node loaded more than every other loses its comparison."""
    clock = FakeClock()
    balancer = build(kind, clock, seed=seed, n=len(pending))
    nodes = balancer.nodes()
    for node, count in zip(nodes, pending, strict=True):
        for _ in range(count):
            node.start()
    # least loaded compares pending counts; Peak EWMA without history compares the penalty+pending
    top = max(pending)
    heaviest = [node for node, count in zip(nodes, pending, strict=True) if count == top]
    for _ in range(50):
        picked = balancer.pick()
        if len(heaviest) == 1:
            assert picked is not heaviest[0]
        assert picked.pending <= top


@pytest.mark.parametrize("kind", P2C_KINDS)
def test_an_ejected_node_is_never_picked_while_others_are_live(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=10, accrual=EJECT_AT_ONCE)
    bad = balancer.nodes()[3]
    bad.finish(bad.start(), failure=True)
    assert bad.state == "ejected"
    assert all(balancer.pick() is not bad for _ in range(2000))
    assert balancer.statistics().all_ejected_picks == 0


@pytest.mark.parametrize("kind", P2C_KINDS)
def test_the_only_live_node_is_found_even_when_random_draws_miss_it(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=50, accrual=EJECT_AT_ONCE)
    nodes = balancer.nodes()
    for node in nodes[1:]:
        node.finish(node.start(), failure=True)
    survivor = nodes[0]
    assert all(balancer.pick() is survivor for _ in range(200))
    stats = balancer.statistics()
    assert stats.max_effort_exhausted > 100  # 5 pairs out of 50 rarely include it
    assert stats.all_ejected_picks == 0


@pytest.mark.parametrize("kind", P2C_KINDS)
def test_avoid_is_passed_over_when_another_live_node_exists(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=2)
    a, b = balancer.nodes()
    for _ in range(3):
        b.start()  # b is far busier, yet a retry that avoids a must still go to b
    assert all(balancer.pick(avoid=a) is b for _ in range(50))


@pytest.mark.parametrize("kind", P2C_KINDS)
def test_avoid_is_not_picked_even_when_it_is_the_only_live_node(kind):
    # (issue 13: a retry never goes back to the node that just failed it while another exists;
    # the others are ejected, so the pick overrides accrual as when every node is ejected)
    clock = FakeClock()
    balancer = build(kind, clock, n=3, accrual=EJECT_AT_ONCE)
    a, b, c = balancer.nodes()
    for node in (b, c):
        node.finish(node.start(), failure=True)
    assert all(balancer.pick(avoid=a) in (b, c) for _ in range(20))
    stats = balancer.statistics()
    assert stats.max_effort_exhausted == 0
    assert stats.all_ejected_picks == 20


@pytest.mark.parametrize("kind", P2C_KINDS)
def test_avoid_among_many_is_never_returned(kind):
    balancer = build(kind, FakeClock(), n=5)
    avoid = balancer.nodes()[2]
    assert all(balancer.pick(avoid=avoid) is not avoid for _ in range(500))


def test_ewma_probes_a_new_node_once_instead_of_flooding_it():
    clock = FakeClock()
    balancer = build("ewma", clock, n=5)
    for node in balancer.nodes():
        started = node.start()
        clock.advance(0.020)
        node.finish(started, failure=False)
    balancer.update([*members(5), Member("new")])
    new = next(node for node in balancer.nodes() if node.key == "new")
    picks = []
    for _ in range(200):
        node = balancer.pick()
        node.start()  # none finish: the new node's first request stays in flight
        picks.append(node)
    assert picks.count(new) == 1


def test_least_loaded_spreads_outstanding_requests_evenly():
    balancer = build("p2c", FakeClock(), n=4)
    for _ in range(400):
        balancer.pick().start()
    counts = [node.pending for node in balancer.nodes()]
    assert max(counts) - min(counts) <= 2
