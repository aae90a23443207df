"""Weights skew picks in proportion, for every kind, idle and under load."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancers.base import Balancer
from balancers.configs import NoAccrualConfig
from balancers.registry import BALANCERS
from balancers.simulation import ReplicaModel, simulate

from .fakes import KINDS, FakeClock, Member

# Chi-squared critical values at p = 1e-6 by degrees of freedom. Hypothesis draws many seeds,
# so the bound must be strict enough never to flake; ignoring weights gives values in the
# hundreds or thousands.
CHI2_CRITICAL = {1: 23.93, 2: 27.63, 3: 30.66, 4: 33.38, 5: 35.89}


def chi2(counts: list[int], weights: list[float]) -> float:
    total_picks = sum(counts)
    total_weight = sum(weights)
    expected = [total_picks * w / total_weight for w in weights]
    return sum((c - e) ** 2 / e for c, e in zip(counts, expected, strict=True))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0, 5.0]), min_size=2, max_size=6),
)
def test_idle_picks_follow_weights(kind, seed, weights):
    """Requests that finish at once: every kind's shares pass a chi-squared test (p = 1e-6)."""
    balancer: Balancer[Member] = BALANCERS[kind]().build(FakeClock(), random.Random(seed), NoAccrualConfig())
    balancer.update([Member(f"n{i}", w) for i, w in enumerate(weights)])
    index = {node.key: i for i, node in enumerate(balancer.nodes())}
    counts = [0] * len(weights)
    for _ in range(6000):
        node = balancer.pick()
        node.finish(node.start(), failure=False)
        counts[index[node.key]] += 1
    assert chi2(counts, weights) < CHI2_CRITICAL[len(weights) - 1]


def test_round_robin_shares_are_exact_over_a_period():
    balancer: Balancer[Member] = BALANCERS["roundRobin"]().build(
        FakeClock(), random.Random(0), NoAccrualConfig()
    )
    balancer.update([Member("a", 1.5), Member("b", 0.5), Member("c", 2.0)])
    counts = {"a": 0, "b": 0, "c": 0}
    for _ in range(400):  # total weight 4: 100 whole periods
        counts[str(balancer.pick().key)] += 1
    assert counts == {"a": 150, "b": 50, "c": 200}


@pytest.mark.parametrize(("kind", "rate"), [("roundRobin", 1000.0), ("p2c", 1000.0), ("ewma", 5000.0)])
def test_loaded_shares_follow_weights_within_15_percent(kind, rate):
    """Identical replicas weighted 1:2:3:4 share 1:2:3:4 under load.

    P2C compares load / weight, whose fixed point is in-flight attempts proportional to
    weight. For `ewma` the load is latency x (pending + 1), so below ~5 in flight per node the
    latency term dominates and heavier nodes get more than their share (docs/load-balancing.md
    gives the numbers); this test runs it where in-flight counts dominate.
    """
    weights = [1.0, 2.0, 3.0, 4.0]
    replicas = [ReplicaModel(name=f"w{w:g}", weight=w) for w in weights]
    result = simulate(kind, replicas, rate=rate, duration_s=20000 / rate, seed=5, accrual=NoAccrualConfig())
    for replica in replicas:
        expected = replica.weight / sum(weights)
        assert result.shares[replica.name] == pytest.approx(expected, rel=0.15)


def test_ewma_at_low_load_still_orders_shares_by_weight():
    weights = [1.0, 2.0, 3.0, 4.0]
    replicas = [ReplicaModel(name=f"w{w:g}", weight=w) for w in weights]
    result = simulate("ewma", replicas, rate=100.0, duration_s=200.0, seed=5, accrual=NoAccrualConfig())
    shares = [result.shares[r.name] for r in replicas]
    assert shares == sorted(shares)
    assert shares[0] > 0.005
