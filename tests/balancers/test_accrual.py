"""Failure accrual: policies, backoff streams, and the live -> ejected -> probing -> live cycle."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancers.backoff import ConstantBackoffConfig, ExponentialBackoffConfig, JitteredBackoffConfig
from balancers.configs import ConsecutiveFailuresConfig, NoAccrualConfig, SuccessRateConfig

from .fakes import KINDS, FakeClock, build, fail, state, succeed

# -- policies and backoff, alone -----------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), min_ms=st.integers(1, 10000), factor=st.integers(1, 200))
def test_equal_jittered_delays_double_with_half_jitter_up_to_the_maximum(seed, min_ms, factor):
    start, maximum = min_ms / 1000, min_ms * factor / 1000
    delays = list(
        itertools.islice(
            ExponentialBackoffConfig(start_ms=min_ms, max_ms=min_ms * factor)
            .build(random.Random(seed))
            .delays(),
            40,
        )
    )
    assert delays[0] == start
    for k, delay in enumerate(delays[1:], start=1):
        half = start * 2 ** (k - 1)
        assert min(maximum, half) <= delay <= min(maximum, 2 * half)
    assert delays[-1] == maximum


def test_linkerd_default_backoff_runs_5s_then_5_to_10s_then_10_to_20s():
    delays = ConsecutiveFailuresConfig().backoff.build(random.Random(1)).delays()
    first, second, third = next(delays), next(delays), next(delays)
    assert first == 5.0
    assert 5.0 <= second < 10.0
    assert 10.0 <= third < 20.0


class TopOfRange(random.Random):
    """Every draw at the top of its range (`randrange(n)` is n - 1, `random()` just below 1)."""

    def randrange(self, start, stop=None, step=1):
        assert stop is None and step == 1
        return start - 1

    def random(self):
        return 1.0 - 2**-53


def test_jittered_means_decorrelated_jitter_for_failure_accrual_as_for_retries_and_in_linkerd():
    # linkerd 1 builds `backoff: {kind: jittered}` as Backoff.decorrelatedJittered everywhere:
    # each delay in [previous, 3 * previous). Equal jitter would stay below 2 * previous.
    policy = ConsecutiveFailuresConfig(
        failures=1, backoff=JitteredBackoffConfig(min_ms=1000, max_ms=100_000)
    ).build(TopOfRange())()
    first = policy.record_failure()
    second, third = policy.next_backoff(), policy.next_backoff()
    assert first == 1.0
    assert second == pytest.approx(3.0) and third == pytest.approx(9.0)


def test_constant_backoff_repeats():
    delays = ConstantBackoffConfig(ms=1500).build(random.Random(0)).delays()
    assert list(itertools.islice(delays, 4)) == [1.5] * 4


def test_consecutive_failures_resets_on_success():
    policy = ConsecutiveFailuresConfig(failures=3, backoff=ConstantBackoffConfig(ms=1000)).build(
        random.Random(0)
    )()
    assert policy.record_failure() is None
    assert policy.record_failure() is None
    policy.record_success()
    assert policy.record_failure() is None
    assert policy.record_failure() is None
    assert policy.record_failure() == 1.0


def test_success_rate_waits_for_a_full_window_then_compares_its_ema():
    policy = SuccessRateConfig(success_rate=0.8, requests=10, backoff=ConstantBackoffConfig(ms=1000)).build(
        random.Random(0)
    )()
    results = [policy.record_failure() for _ in range(9)]
    assert results == [None] * 9  # fewer than `requests` requests: never ejects
    assert policy.record_failure() == 1.0


def test_success_rate_keeps_a_node_whose_ema_is_above_the_threshold():
    policy = SuccessRateConfig(success_rate=0.5, requests=10, backoff=ConstantBackoffConfig(ms=1000)).build(
        random.Random(0)
    )()
    for _ in range(30):
        policy.record_success()
    # ema after one failure following many successes: exp(-1/10) ~ 0.905, above 0.5
    assert policy.record_failure() is None
    ema = math.exp(-1 / 10)
    while ema >= 0.5:
        ema *= math.exp(-1 / 10)
        expected = None if ema >= 0.5 else 1.0
        assert policy.record_failure() == expected


def test_no_accrual_never_ejects():
    policy = NoAccrualConfig().build(random.Random(0))()
    assert all(policy.record_failure() is None for _ in range(1000))


@pytest.mark.parametrize(
    "make",
    [
        lambda: ConsecutiveFailuresConfig(failures=0),
        lambda: SuccessRateConfig(success_rate=1.5),
        lambda: SuccessRateConfig(requests=0),
        lambda: ExponentialBackoffConfig(start_ms=0),
        lambda: ExponentialBackoffConfig(start_ms=10, max_ms=5),
        lambda: JitteredBackoffConfig(min_ms=0),
        lambda: ConstantBackoffConfig(ms=-1),
    ],
)
def test_bad_accrual_settings_are_refused(make):
    with pytest.raises(ValueError):
        make()


# -- the state machine, through a balancer -------------------------------------------------

FIVE_THEN_10S = ConsecutiveFailuresConfig(failures=5, backoff=ConstantBackoffConfig(ms=10000))


@pytest.mark.parametrize("kind", KINDS)
def test_five_consecutive_failures_eject_and_four_do_not(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=3, accrual=FIVE_THEN_10S)
    node = balancer.nodes()[0]
    fail(node, 4)
    succeed(node)
    fail(node, 4)
    assert state(node) == "live"
    fail(node)
    assert state(node) == "ejected"
    assert node.ejected_until == clock.now() + 10.0
    assert node.ejections == 1
    stats = balancer.statistics()
    assert (stats.live, stats.ejected, stats.probing, stats.ejections) == (2, 1, 0, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_an_ejected_node_gets_no_traffic_until_its_backoff_ends(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=3, accrual=FIVE_THEN_10S)
    node = balancer.nodes()[0]
    fail(node, 5)
    clock.advance(9.999)
    assert all(balancer.pick() is not node for _ in range(300))
    clock.advance(0.001)
    assert state(node) == "probing"
    assert balancer.statistics().probing == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_probing_node_admits_exactly_one_request(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=4, accrual=FIVE_THEN_10S)
    node = balancer.nodes()[0]
    fail(node, 5)
    clock.advance(10.0)
    picked = []
    for _ in range(400):
        chosen = balancer.pick()
        chosen.start()  # nothing finishes: the probe stays in flight
        picked.append(chosen)
    assert picked.count(node) == 1
    assert state(node) == "probing"


@pytest.mark.parametrize("kind", KINDS)
def test_a_successful_probe_revives_and_resets_the_policy(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=2, accrual=FIVE_THEN_10S)
    node = balancer.nodes()[0]
    fail(node, 5)
    clock.advance(10.0)
    succeed(node)
    assert state(node) == "live"
    assert balancer.statistics().revivals == 1
    fail(node, 4)
    assert state(node) == "live"  # the failure count started again from zero
    fail(node)
    assert state(node) == "ejected"
    assert node.ejections == 2


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_probe_ejects_again_for_the_next_backoff(kind):
    clock = FakeClock()
    accrual = ConsecutiveFailuresConfig(
        failures=1, backoff=ExponentialBackoffConfig(start_ms=5000, max_ms=300000)
    )
    balancer = build(kind, clock, n=2, accrual=accrual)
    node = balancer.nodes()[0]
    fail(node)
    assert node.ejected_until == clock.now() + 5.0
    clock.advance(5.0)
    fail(node)
    until = node.ejected_until
    assert until is not None and 5.0 <= until - clock.now() < 10.0
    clock.advance(until - clock.now())
    fail(node)
    until = node.ejected_until
    assert until is not None and 10.0 <= until - clock.now() < 20.0
    stats = balancer.statistics()
    assert (stats.ejections, stats.probe_failures) == (1, 2)
    # a success after that restarts the stream at its first delay
    clock.advance(until - clock.now())
    succeed(node)
    fail(node)
    assert node.ejected_until == clock.now() + 5.0


@pytest.mark.parametrize("kind", KINDS)
def test_results_of_requests_sent_before_the_probe_do_not_decide_it(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=2, accrual=FIVE_THEN_10S)
    node = balancer.nodes()[0]
    old = node.start()  # in flight since before the ejection
    fail(node, 5)
    node.finish(old, failure=False)  # ignored: the node is ejected
    assert state(node) == "ejected"
    clock.advance(10.0)
    probe = node.start()
    clock.advance(0.5)
    assert state(node) == "probing"
    node.finish(probe, failure=False)
    assert state(node) == "live"


@pytest.mark.parametrize("kind", KINDS)
def test_when_every_node_is_ejected_picks_still_succeed_and_are_counted(kind):
    clock = FakeClock()
    balancer = build(kind, clock, n=3, accrual=FIVE_THEN_10S)
    for node in balancer.nodes():
        fail(node, 5)
    picked = {balancer.pick().key for _ in range(200)}
    assert picked == {"n0", "n1", "n2"}
    stats = balancer.statistics()
    assert stats.all_ejected_picks == 200
    assert stats.ejected == 3


@pytest.mark.parametrize("kind", KINDS)
def test_accrual_none_keeps_failing_nodes_live(kind):
    balancer = build(kind, FakeClock(), n=2, accrual=NoAccrualConfig())
    node = balancer.nodes()[0]
    fail(node, 100)
    assert state(node) == "live"
    assert balancer.statistics().ejections == 0


def test_finish_without_start_is_a_bug_and_says_so():
    balancer = build("ewma", FakeClock(), n=1)
    with pytest.raises(RuntimeError):
        balancer.nodes()[0].finish(0.0, failure=False)


@pytest.mark.parametrize("kind", ["p2c", "ewma"])
def test_a_node_waiting_for_its_probe_gets_it_although_its_cost_is_higher(kind):
    # Peak EWMA keeps a failing node's cost high until it succeeds; by load alone it would never
    # win a P2C comparison after its backoff, never be probed, and never come back.
    clock = FakeClock()
    balancer = build(kind, clock, n=2, accrual=FIVE_THEN_10S)
    bad, good = balancer.nodes()
    fail(bad, 5)
    assert state(bad) == "ejected"
    for _ in range(20):
        succeed(good)  # the healthy node builds a good history meanwhile
    clock.advance(10.0)
    picked = balancer.pick()
    assert picked is bad and state(bad) == "probing"
