"""A retry's `avoid`: the node that just failed a request is never picked for it again while any
other node exists, whatever the other nodes' accrual states; an `avoid` from another balancer
(the previous attempt took another union branch) never leaks into this balancer's picks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from balancers.backoff import ConstantBackoffConfig
from balancers.configs import ConsecutiveFailuresConfig
from balancers.node import Node

from .fakes import KINDS, FakeClock, Member, build, fail, members

EJECT_AT_ONCE = ConsecutiveFailuresConfig(failures=1, backoff=ConstantBackoffConfig(ms=60000))

LIVE, EJECTED, PROBE_OPEN, PROBE_TAKEN = range(4)


def set_states(nodes: list[Node[Member]], states: list[int], clock: FakeClock) -> None:
    """Put each node in its state: probing ones are ejected first and their backoff runs out."""
    for node, s in zip(nodes, states, strict=True):
        if s in (PROBE_OPEN, PROBE_TAKEN):
            fail(node)
    clock.advance(61.0)
    for node, s in zip(nodes, states, strict=True):
        if s == EJECTED:
            fail(node)
        elif s == PROBE_TAKEN:
            node.start()  # the probe is now in flight: unavailable


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_avoid_is_never_picked_while_another_node_exists(kind, seed, data):
    n = data.draw(st.integers(1, 7), label="n")
    weights = data.draw(st.lists(st.sampled_from([1.0, 1.0, 2.0, 5.0, 0.5]), min_size=n, max_size=n), label="weights")
    states = data.draw(st.lists(st.sampled_from([LIVE, EJECTED, PROBE_OPEN, PROBE_TAKEN]), min_size=n, max_size=n))
    clock = FakeClock()
    balancer = build(kind, clock, seed=seed, accrual=EJECT_AT_ONCE)
    balancer.update([Member(f"n{i}", w) for i, w in enumerate(weights)])
    nodes = list(balancer.nodes())
    set_states(nodes, states, clock)
    avoid = nodes[data.draw(st.integers(0, n - 1), label="avoid")]
    others_available = [node for node in nodes if node is not avoid and node.is_available()]
    for _ in range(20):
        picked = balancer.pick(avoid=avoid)
        assert picked in nodes
        if n > 1:
            assert picked is not avoid
        if others_available:
            assert picked.is_available()  # an ejected node only when no other is available


@settings(max_examples=100, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**32), n=st.integers(1, 4), ejected=st.integers(0, 4))
def test_an_avoid_from_another_balancer_is_ignored(kind, seed, n, ejected):
    clock = FakeClock()
    balancer = build(kind, clock, seed=seed, accrual=EJECT_AT_ONCE, n=n)
    nodes = list(balancer.nodes())
    for node in nodes[: min(ejected, n - 1)]:
        fail(node)  # at least one node stays available
    other = build(kind, clock, seed=seed, n=3)
    for foreign in other.nodes():
        for _ in range(10):
            assert balancer.pick(avoid=foreign) in nodes


def test_a_retry_goes_to_an_ejected_node_rather_than_back_to_the_one_that_just_failed():
    for kind in KINDS:
        clock = FakeClock()
        balancer = build(kind, clock, accrual=EJECT_AT_ONCE)
        balancer.update(members(3))
        a, b, c = balancer.nodes()
        fail(b)
        fail(c)  # only `a` is available, and it has just failed this request
        picks = [balancer.pick(avoid=a) for _ in range(200)]
        assert a not in picks, kind
        assert {b, c} == set(picks), kind  # spread over the others
        assert balancer.statistics().all_ejected_picks == 200, kind
        assert balancer.pick() is a  # a first attempt still goes to the available node
