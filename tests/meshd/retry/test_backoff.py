"""Retries' backoff kinds: the one implementation (balancers/backoff.py) with retries' defaults.

The kinds' delays themselves are tested in tests/balancers/test_backoff.py; here: retries offer
the same kinds as failure accrual, each meaning the same thing, and only the defaults differ.
"""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from balancers.backoff import BACKOFFS as ACCRUAL_BACKOFFS
from balancers.backoff import DecorrelatedJitteredBackoff, EqualJitteredBackoff
from meshd.retry.backoff import (
    BACKOFFS,
    ExponentialBackoffConfig,
    RetryConstantBackoffConfig,
    RetryJitteredBackoffConfig,
)

MS = 1_000_000  # ns


def take_ns(policy, n: int) -> list[int]:
    return [round(d * 1e9) for d in itertools.islice(policy.delays(), n)]


def test_constant_default_is_linkerds_zero_delay():
    assert take_ns(RetryConstantBackoffConfig().build(random.Random(0)), 5) == [0] * 5


def test_jittered_defaults_are_ten_ms_to_one_second_and_start_at_min():
    config = RetryJitteredBackoffConfig()
    assert (config.min_ms, config.max_ms) == (10, 1000)
    assert isinstance(config.build(random.Random(1)), DecorrelatedJitteredBackoff)
    assert take_ns(config.build(random.Random(1)), 1) == [10 * MS]


def test_exponential_defaults_are_linkerds_failure_accrual_backoff():
    config = ExponentialBackoffConfig()
    assert (config.start_ms, config.max_ms) == (5_000, 300_000)
    assert isinstance(config.build(random.Random(1)), EqualJitteredBackoff)


def test_retries_offer_the_same_kinds_as_failure_accrual():
    assert list(BACKOFFS) == list(ACCRUAL_BACKOFFS)


@pytest.mark.parametrize("kind", sorted(BACKOFFS))
def test_each_kind_means_the_same_for_retries_and_failure_accrual(kind):
    retry_class, accrual_class = BACKOFFS[kind], ACCRUAL_BACKOFFS.get(kind)
    assert accrual_class is not None and issubclass(retry_class, accrual_class)  # only defaults differ
    assert retry_class.KIND == accrual_class.KIND == kind
    values = {f.name: getattr(accrual_class(), f.name) for f in dataclasses.fields(accrual_class)}
    for seed in range(5):
        from_retries = retry_class(**values).build(random.Random(seed))
        from_accrual = accrual_class(**values).build(random.Random(seed))
        assert type(from_retries) is type(from_accrual)
        assert take_ns(from_retries, 30) == take_ns(from_accrual, 30)


@pytest.mark.parametrize("kind", sorted(BACKOFFS))
def test_each_schedule_is_fresh_and_replays_with_the_same_seed(kind):
    config = BACKOFFS[kind]()
    policy = config.build(random.Random(42))
    first, second = take_ns(policy, 12), take_ns(policy, 12)
    assert first[0] == second[0], "a new request starts the schedule again"
    assert take_ns(config.build(random.Random(42)), 12) == first


@pytest.mark.parametrize("kind", sorted(BACKOFFS))
def test_registry_kind_matches_class(kind):
    assert BACKOFFS[kind].KIND == kind
