"""Ejection cap and panic mode (`set_health_limits`), for every balancer kind, on the fake clock.

`maxEjectionPercent` keeps failure accrual from taking more than that share of a replica set out
(at least one node may go); below `panicThresholdPercent` available the balancer ignores health
and spreads over every node, as Envoy's panic mode does.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancers.backoff import ConstantBackoffConfig
from balancers.configs import ConsecutiveFailuresConfig
from tests.balancers.fakes import KINDS, FakeClock, build, fail, state, succeed

ACCRUAL = ConsecutiveFailuresConfig(failures=1, backoff=ConstantBackoffConfig(ms=10_000))


def limited(kind: str, n: int, *, max_ejection: float, panic: float, seed: int = 0):  # type: ignore[no-untyped-def]
    clock = FakeClock(start=0.0)
    balancer = build(kind, clock, accrual=ACCRUAL, n=n, seed=seed)
    balancer.set_health_limits(max_ejection_percent=max_ejection, panic_threshold_percent=panic)
    return balancer, clock


@pytest.mark.parametrize("kind", KINDS)
def test_no_more_than_max_ejection_percent_are_ejected(kind):
    balancer, _ = limited(kind, 10, max_ejection=30, panic=0)
    nodes = list(balancer.nodes())
    for node in nodes:
        fail(node)
    assert sum(state(node) == "ejected" for node in nodes) == 3
    stats = balancer.statistics()
    assert stats.ejected == 3 and stats.ejections == 3 and stats.ejections_prevented == 7
    # a node kept in starts its count over: one more failure asks again, and is refused again
    fail(nodes[-1])
    assert state(nodes[-1]) == "live" and balancer.statistics().ejections_prevented == 8


@pytest.mark.parametrize("kind", KINDS)
def test_at_least_one_node_may_be_ejected_however_small_the_share(kind):
    balancer, _ = limited(kind, 3, max_ejection=10, panic=0)  # 10% of 3 rounds down to 0
    a, b, _c = balancer.nodes()
    fail(a)
    fail(b)
    assert (state(a), state(b)) == ("ejected", "live")


@pytest.mark.parametrize("kind", KINDS)
def test_a_revived_node_frees_its_place_under_the_cap(kind):
    balancer, clock = limited(kind, 4, max_ejection=25, panic=0)
    a, b, *_ = balancer.nodes()
    fail(a)
    fail(b)
    assert (state(a), state(b)) == ("ejected", "live")
    clock.advance(10.0)  # a's probe opens
    probe = None
    for _ in range(100):  # the probe has priority: the next picks find it
        probe = balancer.pick()
        if probe is a:
            break
    assert probe is a
    succeed(a)
    assert state(a) == "live"
    fail(b)
    assert state(b) == "ejected"


@pytest.mark.parametrize("kind", KINDS)
def test_below_the_panic_threshold_picks_spread_over_every_node(kind):
    balancer, _ = limited(kind, 4, max_ejection=100, panic=50)
    nodes = list(balancer.nodes())
    fail(nodes[0])
    assert not balancer.statistics().panic  # 3 of 4 available: above 50%
    picks = Counter(balancer.pick().member.key for _ in range(400))
    assert nodes[0].member.key not in picks
    fail(nodes[1])
    fail(nodes[2])  # 1 of 4 available: panic
    stats = balancer.statistics()
    assert stats.panic and stats.live == 1
    before = balancer.statistics().panic_picks
    picks = Counter(balancer.pick().member.key for _ in range(400))
    assert set(picks) == {n.member.key for n in nodes}  # the ejected ones too
    assert balancer.statistics().panic_picks == before + 400


@pytest.mark.parametrize("kind", KINDS)
def test_by_default_health_is_ignored_only_when_nothing_is_available(kind):
    clock = FakeClock(start=0.0)
    balancer = build(kind, clock, accrual=ACCRUAL, n=3)
    a, b, c = balancer.nodes()
    fail(a)
    fail(b)
    assert not balancer.statistics().panic
    assert {balancer.pick() for _ in range(50)} == {c}
    fail(c)
    stats = balancer.statistics()
    assert stats.panic and stats.all_ejected_picks == 0
    balancer.pick()
    assert balancer.statistics().all_ejected_picks == 1 == balancer.statistics().panic_picks


@pytest.mark.parametrize("kind", KINDS)
def test_a_replica_set_that_shrinks_keeps_its_counts(kind):
    balancer, _ = limited(kind, 4, max_ejection=50, panic=0)
    a, b, c, d = balancer.nodes()
    fail(a)
    fail(b)
    balancer.update([c.member, d.member, a.member])  # b (ejected) leaves
    fail(c)  # 1 of 3 out now: 50% of 3 rounds down to 1, the cap
    assert state(c) == "live" and state(a) == "ejected"


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    n=st.integers(min_value=1, max_value=12),
    max_ejection=st.sampled_from([0.0, 10.0, 25.0, 50.0, 100.0]),
    failures=st.lists(st.integers(min_value=0, max_value=11), max_size=40),
)
def test_the_cap_holds_for_any_sequence_of_failures(kind, n, max_ejection, failures):
    balancer, _ = limited(kind, n, max_ejection=max_ejection, panic=0)
    nodes = list(balancer.nodes())
    cap = max(1, int(n * max_ejection / 100)) if max_ejection < 100 else n
    for i in failures:
        fail(nodes[i % n])
        out = sum(state(node) != "live" for node in nodes)
        assert out <= cap
