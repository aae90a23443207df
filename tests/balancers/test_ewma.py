"""Peak EWMA: the decay formula, peaks, the no-history penalty, and how failures are priced."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancers.base import Balancer
from balancers.configs import EwmaConfig, NoAccrualConfig
from balancers.ewma import Ema, PeakEwma
from balancers.node import Node
from balancers.peak_ewma import PENALTY_SECONDS, SUCCESS_WINDOW

from .fakes import FakeClock, Member

TAU = 10.0


def test_penalty_is_finagles_long_max_value_shifted_16_in_seconds():
    assert PENALTY_SECONDS == pytest.approx((2**47 - 1) / 1e9)


def test_a_peak_is_followed_at_once():
    ewma = PeakEwma(TAU, now=0.0)
    ewma.observe(0.010, now=0.0)
    assert ewma.observe(0.250, now=0.001) == 0.250


def test_a_lower_sample_is_blended_by_elapsed_time():
    ewma = PeakEwma(TAU, now=0.0)
    ewma.observe(0.100, now=0.0)
    got = ewma.observe(0.010, now=5.0)
    w = math.exp(-5.0 / TAU)
    assert got == pytest.approx(0.100 * w + 0.010 * (1 - w))


def test_cost_halves_after_tau_ln2_without_samples():
    ewma = PeakEwma(TAU, now=0.0)
    ewma.observe(0.200, now=0.0)
    assert ewma.observe(0.0, now=TAU * math.log(2)) == pytest.approx(0.100)


def test_decayed_reads_without_changing_state():
    ewma = PeakEwma(TAU, now=0.0)
    ewma.observe(0.200, now=0.0)
    assert ewma.decayed(TAU) == pytest.approx(0.200 / math.e)
    assert ewma.cost == 0.200
    assert ewma.stamp == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0.0, 30.0), st.floats(0.0, 2.0)), min_size=1, max_size=40))
def test_decay_matches_the_finagle_formula(steps):
    ewma = PeakEwma(TAU, now=0.0)
    now, stamp, cost = 0.0, 0.0, 0.0
    for dt, rtt in steps:
        now += dt
        w = math.exp(-(now - stamp) / TAU)
        cost = rtt if rtt > cost else cost * w + rtt * (1 - w)
        stamp = now
        assert ewma.observe(rtt, now) == pytest.approx(cost, rel=1e-12, abs=1e-15)


def test_time_going_backwards_counts_as_no_time():
    ewma = PeakEwma(TAU, now=5.0)
    ewma.observe(0.100, now=5.0)
    assert ewma.observe(0.0, now=1.0) == 0.100


def test_ema_first_sample_sets_value_then_blends_by_stamp_distance():
    ema = Ema(window=10)
    assert ema.update(1, 0.0) == 0.0
    w = math.exp(-1 / 10)
    assert ema.update(2, 1.0) == pytest.approx(1 - w)
    ema.reset()
    assert ema.update(7, 1.0) == 1.0


def test_ema_with_initial_value_treats_it_as_a_sample_at_stamp_zero():
    ema = Ema(window=4, initial=1.0)
    assert ema.update(1, 0.0) == pytest.approx(math.exp(-1 / 4))


# -- the node metric, through a balancer --------------------------------------------------


def ewma_node(clock: FakeClock, decay_time_ms: int = 10000) -> Node[Member]:
    balancer: Balancer[Member] = EwmaConfig(decay_time_ms=decay_time_ms).build(
        clock, random.Random(0), NoAccrualConfig()
    )
    balancer.update([Member("a")])
    return balancer.nodes()[0]


def test_a_new_node_costs_nothing_so_it_is_tried_at_once():
    clock = FakeClock()
    node = ewma_node(clock)
    assert node.cost == 0.0
    assert node.ewma_seconds == 0.0


def test_a_node_without_history_and_a_request_in_flight_costs_the_penalty():
    clock = FakeClock()
    node = ewma_node(clock)
    node.start()
    node.start()
    assert node.cost == pytest.approx(PENALTY_SECONDS + 2)


def test_load_is_cost_times_pending_plus_one():
    clock = FakeClock()
    node = ewma_node(clock)
    started = node.start()
    clock.advance(0.040)
    node.finish(started, failure=False)
    assert node.ewma_seconds == pytest.approx(0.040)
    node.start()
    node.start()
    assert node.cost == pytest.approx(0.040 * 3)


def test_load_decays_with_idle_time():
    clock = FakeClock()
    node = ewma_node(clock)
    started = node.start()
    clock.advance(0.100)
    node.finish(started, failure=False)
    clock.advance(TAU)
    assert node.ewma_seconds == pytest.approx(0.100 / math.e)
    assert node.cost == pytest.approx(0.100 / math.e)


def test_a_fast_failure_does_not_make_a_node_look_faster():
    clock = FakeClock()
    node = ewma_node(clock)
    started = node.start()
    clock.advance(0.100)
    node.finish(started, failure=False)
    started = node.start()
    clock.advance(0.001)
    node.finish(started, failure=True)
    # A 1 ms success would have pulled the cost down a little; a failure holds it where it was.
    assert node.ewma_seconds == pytest.approx(0.100, rel=1e-12)
    started = node.start()
    clock.advance(0.001)
    node.finish(started, failure=False)
    assert node.ewma_seconds < 0.100


def test_a_slow_failure_is_a_peak():
    clock = FakeClock()
    node = ewma_node(clock)
    started = node.start()
    clock.advance(0.010)
    node.finish(started, failure=False)
    started = node.start()
    clock.advance(2.0)
    node.finish(started, failure=True)
    assert node.ewma_seconds == pytest.approx(2.0)


def test_each_failure_raises_the_load_by_the_success_rate_factor():
    clock = FakeClock()
    node = ewma_node(clock)
    started = node.start()
    clock.advance(0.010)
    node.finish(started, failure=False)
    before = node.cost
    for k in range(1, 4):
        started = node.start()
        node.finish(started, failure=True)
        assert node.cost == pytest.approx(before / math.exp(-k / SUCCESS_WINDOW))


def test_successes_bring_the_failure_factor_back_toward_one():
    clock = FakeClock()
    node = ewma_node(clock)
    for failure in (False, True, True, True):
        started = node.start()
        clock.advance(0.010)
        node.finish(started, failure=failure)
    penalised = node.cost
    for _ in range(50):
        started = node.start()
        clock.advance(0.010)
        node.finish(started, failure=False)
    assert penalised == pytest.approx(0.010 / math.exp(-3 / SUCCESS_WINDOW), rel=1e-6)
    assert node.cost == pytest.approx(node.ewma_seconds, rel=0.01)
