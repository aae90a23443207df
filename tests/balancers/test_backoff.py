"""The one backoff module (balancers/backoff.py), used by retries, failure accrual and discovery.

Every kind is a pure sequence: for any seed and any valid config its delays stay within
[min, max], replay exactly for the same seed, restart with each `delays()` call, and grow as
docs/retries.md ("Backoff") says. Exact sequences use a generator pinned to the top or the
bottom of every jitter range.
"""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancers.backoff import (
    BACKOFFS,
    BackoffConfig,
    ConstantBackoff,
    ConstantBackoffConfig,
    DecorrelatedJitteredBackoff,
    EqualJitteredBackoff,
    ExponentialBackoffConfig,
    JitteredBackoffConfig,
    secs_to_ns,
)

MS = 1_000_000  # ns


def take_ns(policy, n: int) -> list[int]:
    """First n delays of a fresh sequence, back in integer nanoseconds (exact for these magnitudes)."""
    return [round(d * 1e9) for d in itertools.islice(policy.delays(), n)]


class Highest(random.Random):
    """randrange(n) always returns n - 1: the top of every jitter range."""

    def randrange(self, start, stop=None, step=1):
        assert stop is None and step == 1
        return start - 1


class Lowest(random.Random):
    """randrange(n) always returns 0: the bottom of every jitter range."""

    def randrange(self, start, stop=None, step=1):
        assert stop is None and step == 1
        return 0


# --- constant --------------------------------------------------------------------------------------


def test_constant_repeats_its_delay():
    assert take_ns(ConstantBackoffConfig(ms=250).build(random.Random(0)), 4) == [250 * MS] * 4


def test_constant_zero_is_allowed_and_negative_is_not():
    assert take_ns(ConstantBackoff(0), 3) == [0, 0, 0]
    with pytest.raises(ValueError):
        ConstantBackoff(-1)


# --- jittered (decorrelated) -----------------------------------------------------------------------


def test_jittered_top_of_range_triples_minus_one_tick_until_the_cap():
    # Finagle: next = cur + rand[0, upper - cur), upper = max if cur >= max / 3 else 3 * cur.
    policy = DecorrelatedJitteredBackoff(10 * MS, 1000 * MS, Highest())
    a = 10 * MS
    b = 3 * a - 1
    c = 3 * b - 1
    d = 3 * c - 1  # still below max / 3
    e = 3 * d - 1  # now above max / 3
    f = 1000 * MS - 1  # e >= max / 3, so upper = max and the draw stops one tick short of it
    assert take_ns(policy, 7) == [a, b, c, d, e, f, f]


def test_jittered_bottom_of_range_stays_at_min():
    assert take_ns(DecorrelatedJitteredBackoff(10 * MS, 1000 * MS, Lowest()), 5) == [10 * MS] * 5


def test_jittered_with_min_equal_to_max_is_constant():
    assert take_ns(JitteredBackoffConfig(min_ms=40, max_ms=40).build(random.Random(3)), 4) == [40 * MS] * 4


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), min_ms=st.integers(1, 5_000), spread=st.integers(0, 100_000))
def test_jittered_delays_grow_at_most_threefold_and_never_pass_max(seed, min_ms, spread):
    max_ms = min_ms + spread
    delays = take_ns(JitteredBackoffConfig(min_ms=min_ms, max_ms=max_ms).build(random.Random(seed)), 60)
    assert delays[0] == min_ms * MS
    for cur, nxt in itertools.pairwise(delays):
        assert cur <= nxt <= max_ms * MS
        assert nxt < 3 * cur or nxt == cur  # uniform in [cur, 3 * cur), or pinned at the cap


# --- exponential (equal jitter) --------------------------------------------------------------------


def test_exponential_bottom_of_range_doubles_from_start_then_holds_max():
    # start, then start * 2**(k-1) + rand[0, start * 2**(k-1)): with rand = 0 -> 5, 5, 10, 20, 40, ...
    policy = EqualJitteredBackoff(5_000 * MS, 300_000 * MS, Lowest())
    seconds = [5, 5, 10, 20, 40, 80, 160, 300, 300]
    assert take_ns(policy, len(seconds)) == [s * 1000 * MS for s in seconds]


def test_exponential_top_of_range_jumps_to_max_once_a_draw_would_reach_it():
    policy = EqualJitteredBackoff(5_000 * MS, 300_000 * MS, Highest())
    s = 1000 * MS
    # 5, then 2*5-tick, 2*10-tick, ... ; 160 + 159.99.. >= 300 -> max.
    assert take_ns(policy, 8) == [
        5 * s,
        10 * s - 1,
        20 * s - 1,
        40 * s - 1,
        80 * s - 1,
        160 * s - 1,
        300 * s,
        300 * s,
    ]


def test_exponential_with_start_equal_to_max_is_constant():
    assert take_ns(EqualJitteredBackoff(7 * MS, 7 * MS, random.Random(0)), 3) == [7 * MS] * 3


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), start_ms=st.integers(1, 10_000), spread=st.integers(0, 1_000_000))
def test_exponential_delays_stay_in_their_doubling_band_and_stick_at_max(seed, start_ms, spread):
    start, maximum = start_ms * MS, (start_ms + spread) * MS
    delays = take_ns(
        ExponentialBackoffConfig(start_ms=start_ms, max_ms=start_ms + spread).build(random.Random(seed)), 40
    )
    assert delays[0] == min(start, maximum)
    capped = False
    for k, delay in enumerate(delays[1:], start=1):
        assert delay <= maximum
        if capped:
            assert delay == maximum, "once at max, always max"
        elif delay == maximum:
            capped = True
        else:
            assert start * 2 ** (k - 1) <= delay < start * 2**k
    assert capped or start * 2**38 < maximum


# --- every kind ------------------------------------------------------------------------------------


def _ranged(cls: type[BackoffConfig], low: str) -> st.SearchStrategy[BackoffConfig]:
    return st.integers(1, 100_000).flatmap(
        lambda lo: st.integers(lo, lo + 1_000_000).map(lambda hi: cls(**{low: lo, "max_ms": hi}))
    )


CONFIGS: dict[str, st.SearchStrategy[BackoffConfig]] = {
    "constant": st.integers(0, 1_000_000).map(lambda ms: ConstantBackoffConfig(ms=ms)),
    "jittered": _ranged(JitteredBackoffConfig, "min_ms"),
    "exponential": _ranged(ExponentialBackoffConfig, "start_ms"),
}


def test_every_kind_has_a_config_strategy():
    assert set(CONFIGS) == set(BACKOFFS)


def _bounds_ns(config: BackoffConfig) -> tuple[int, int]:
    if isinstance(config, ConstantBackoffConfig):
        return config.ms * MS, config.ms * MS
    if isinstance(config, JitteredBackoffConfig):
        return config.min_ms * MS, config.max_ms * MS
    assert isinstance(config, ExponentialBackoffConfig)
    return config.start_ms * MS, config.max_ms * MS


@settings(max_examples=300, deadline=None)
@given(data=st.data(), kind=st.sampled_from(sorted(BACKOFFS)), seed=st.integers(0, 2**64))
def test_every_kind_starts_at_min_stays_within_bounds_never_shrinks_and_replays_per_seed(data, kind, seed):
    config = data.draw(CONFIGS[kind])
    assert config.KIND == kind
    low, high = _bounds_ns(config)
    policy = config.build(random.Random(seed))
    delays = take_ns(policy, 80)
    assert delays[0] == low
    assert all(low <= d <= high for d in delays)
    assert delays == sorted(delays), "no kind ever waits less after another failure"
    again = take_ns(policy, 80)  # a new streak: from the start, with the generator's next draws
    assert again[0] == low and all(low <= d <= high for d in again) and again == sorted(again)
    assert take_ns(config.build(random.Random(seed)), 80) == delays, "same seed, same delays"


@pytest.mark.parametrize("kind", sorted(BACKOFFS))
def test_defaults_build_and_the_registry_kind_matches_the_class(kind):
    config = BACKOFFS[kind]()
    assert config.KIND == kind
    assert next(config.build(random.Random(0)).delays()) >= 0


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: ConstantBackoffConfig(ms=-1), "ms"),
        (lambda: ConstantBackoffConfig(ms=1.5), "ms"),  # type: ignore[arg-type]
        (lambda: JitteredBackoffConfig(min_ms=0), "minMs"),
        (lambda: JitteredBackoffConfig(min_ms=-5), "minMs"),
        (lambda: JitteredBackoffConfig(min_ms=100, max_ms=99), "maxMs"),
        (lambda: JitteredBackoffConfig(min_ms=True), "minMs"),
        (lambda: ExponentialBackoffConfig(start_ms=0), "startMs"),
        (lambda: ExponentialBackoffConfig(start_ms=10, max_ms=5), "maxMs"),
    ],
)
def test_configs_reject_bad_values(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_policies_check_finagles_requirements():
    with pytest.raises(ValueError):
        DecorrelatedJitteredBackoff(0, 10, random.Random(0))
    with pytest.raises(ValueError):
        EqualJitteredBackoff(10, 5, random.Random(0))


def test_secs_to_ns_is_exact_for_config_values_and_never_zero():
    assert secs_to_ns(5.0) == 5_000_000_000
    assert secs_to_ns(0.25) == 250_000_000
    assert secs_to_ns(1e-12) == 1
