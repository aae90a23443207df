"""Member updates: stayers keep all their state, leavers are returned, returners start fresh."""

from __future__ import annotations

import pytest

from balancers.backoff import ConstantBackoffConfig
from balancers.base import Balancer, NoNodesAvailable
from balancers.configs import ConsecutiveFailuresConfig
from balancers.node import Node

from .fakes import KINDS, FakeClock, Member, build, fail, members, state

EJECT_AT_ONCE = ConsecutiveFailuresConfig(failures=1, backoff=ConstantBackoffConfig(ms=60000))


def by_key(balancer: Balancer[Member]) -> dict[object, Node[Member]]:
    return {node.key: node for node in balancer.nodes()}


@pytest.mark.parametrize("kind", KINDS)
def test_update_returns_the_members_that_left(kind):
    balancer = build(kind, FakeClock(), n=4)
    old = members(4)
    removed = balancer.update([old[0], old[2], Member("new")])
    assert sorted(m.key for m in removed) == ["n1", "n3"]
    assert [node.key for node in balancer.nodes()] == ["n0", "n2", "new"]
    stats = balancer.statistics()
    assert (stats.nodes, stats.removed, stats.updates) == (3, 2, 2)


@pytest.mark.parametrize("kind", KINDS)
def test_stayers_keep_pending_ewma_and_accrual_and_take_the_new_weight(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=3, accrual=EJECT_AT_ONCE)
    busy, ejected, _ = balancer.nodes()
    started = busy.start()
    clock.advance(0.050)
    busy.finish(started, failure=False)
    busy.start()
    ewma_before = busy.ewma_seconds
    ejected.finish(ejected.start(), failure=True)

    fresh_object = Member("n0", weight=3.0)
    balancer.update([fresh_object, Member("n1"), Member("n2")])
    nodes = by_key(balancer)
    assert nodes["n0"] is busy
    assert busy.member is fresh_object and busy.weight == 3.0
    assert busy.pending == 1
    assert busy.ewma_seconds == ewma_before
    assert state(nodes["n1"]) == "ejected" and nodes["n1"].ejections == 1
    assert all(balancer.pick() is not nodes["n1"] for _ in range(200))


@pytest.mark.parametrize("kind", KINDS)
def test_a_member_removed_and_re_added_starts_fresh(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=3, accrual=EJECT_AT_ONCE)
    old = by_key(balancer)["n1"]
    started = old.start()
    old.finish(old.start(), failure=True)
    balancer.update([Member("n0"), Member("n2")])
    balancer.update(members(3))
    new = by_key(balancer)["n1"]
    assert new is not old
    assert (new.pending, new.state, new.ejections, new.ewma_seconds) == (0, "live", 0, 0.0)
    # the old node's in-flight attempt still finishes cleanly and touches nothing current
    old.finish(started, failure=True)
    assert new.state == "live"
    assert balancer.statistics().live == 3


@pytest.mark.parametrize("kind", KINDS)
def test_a_removed_ejected_node_never_comes_back_through_its_old_deadline(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=2, accrual=EJECT_AT_ONCE)
    gone = by_key(balancer)["n1"]
    gone.finish(gone.start(), failure=True)
    balancer.update([Member("n0")])
    clock.advance(120.0)
    assert all(balancer.pick().key == "n0" for _ in range(20))
    assert balancer.statistics().nodes == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_weight_is_refused_and_changes_nothing(kind):
    balancer = build(kind, FakeClock(), n=2)
    before = list(balancer.nodes())
    with pytest.raises(ValueError):
        balancer.update([Member("n0"), Member("x", weight=0.0)])
    assert list(balancer.nodes()) == before


@pytest.mark.parametrize("kind", KINDS)
def test_duplicate_keys_collapse_to_one_node_with_the_last_object(kind):
    balancer = build(kind, FakeClock())
    last = Member("a", weight=2.0)
    balancer.update([Member("a"), Member("b"), last])
    nodes = balancer.nodes()
    assert [node.key for node in nodes] == ["a", "b"]
    assert nodes[0].member is last


@pytest.mark.parametrize("kind", KINDS)
def test_emptying_the_set_makes_picks_fail_and_refilling_restores_them(kind):
    balancer = build(kind, FakeClock(), n=2)
    removed = balancer.update([])
    assert len(removed) == 2
    with pytest.raises(NoNodesAvailable):
        balancer.pick()
    balancer.update(members(1))
    assert balancer.pick().key == "n0"


@pytest.mark.parametrize("kind", KINDS)
def test_a_stayers_failure_count_carries_across_updates(kind):
    accrual = ConsecutiveFailuresConfig(failures=3, backoff=ConstantBackoffConfig(ms=1000))
    balancer = build(kind, FakeClock(), n=2, accrual=accrual)
    node = by_key(balancer)["n0"]
    fail(node, 2)
    balancer.update([Member("n0", weight=2.0), Member("n1"), Member("n2")])
    assert state(node) == "live"
    fail(node)
    assert state(node) == "ejected"
