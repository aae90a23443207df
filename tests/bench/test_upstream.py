"""The programmable upstream's per-request decisions (pure) and its spec format."""

import random

import pytest

from bench.upstream import Behaviour, InstanceSpec, parse_specs, spec_json


def test_a_plain_replica_answers_200_at_once_and_counts():
    behaviour = Behaviour.from_spec(InstanceSpec(name="r0"))
    decisions = [behaviour.decide(now=float(i)) for i in range(5)]
    assert all(d.status == 200 and d.delay_secs == 0.0 for d in decisions)
    stats = behaviour.statistics()
    assert (stats.requests, stats.failures, stats.stalled) == (5, 0, 0)


def test_fixed_latency_is_added_to_every_answer():
    behaviour = Behaviour.from_spec(InstanceSpec(name="slow", latency_ms=100))
    assert behaviour.decide(0.0).delay_secs == pytest.approx(0.1)


def test_failure_rate_fails_that_share_of_requests_with_its_status():
    behaviour = Behaviour(spec=InstanceSpec(name="r2", failure_rate=0.5, failure_status=503), rng=random.Random(1))
    statuses = [behaviour.decide(0.0).status for _ in range(10_000)]
    failures = statuses.count(503)
    assert set(statuses) == {200, 503}
    assert 4_800 <= failures <= 5_200  # binomial(10000, 0.5): sd 50, so this is +-4 sd
    assert behaviour.statistics().failures == failures


def test_spread_is_log_normal_around_its_median():
    behaviour = Behaviour(spec=InstanceSpec(name="r", spread_median_ms=4.0, spread_sigma=0.5), rng=random.Random(3))
    delays = sorted(behaviour.decide(0.0).delay_secs for _ in range(4001))
    assert delays[2000] == pytest.approx(0.004, rel=0.05)
    assert all(d > 0 for d in delays)


def test_a_stall_window_delays_only_requests_that_arrive_inside_it():
    behaviour = Behaviour.from_spec(InstanceSpec(name="r0", latency_ms=1))
    behaviour.add_stall(now=100.0, after_secs=10.0, for_secs=30.0, latency_secs=2.0)
    assert behaviour.decide(109.9).delay_secs == pytest.approx(0.001)
    assert behaviour.decide(110.0).delay_secs == pytest.approx(2.0)
    assert behaviour.decide(139.9).delay_secs == pytest.approx(2.0)
    assert behaviour.decide(140.0).delay_secs == pytest.approx(0.001)
    assert behaviour.statistics().stalled == 2


def test_reset_zeroes_the_counters():
    behaviour = Behaviour.from_spec(InstanceSpec(name="r0", failure_rate=1.0))
    behaviour.decide(0.0)
    behaviour.reset()
    stats = behaviour.statistics()
    assert (stats.requests, stats.failures, stats.stalled) == (0, 0, 0)


def test_specs_round_trip_through_json():
    specs = [InstanceSpec(name="r0", latency_ms=1.5, spread_median_ms=2, spread_sigma=0.5, failure_rate=0.25, seed=4)]
    assert parse_specs(spec_json(specs)) == specs


@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '[{"name": "r0", "latencyMS": 1}]',
        '[{"name": "r0"}, {"name": "r0"}]',
        '[{"name": "r0", "failureRate": 2}]',
        '[{"name": "a/b"}]',
    ],
)
def test_bad_specs_are_refused(text):
    with pytest.raises(ValueError):
        parse_specs(text)
