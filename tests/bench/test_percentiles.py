"""Nearest-rank percentiles: the p-th percentile of n sorted samples is the ceil(p/100 * n)-th smallest."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.percentiles import (
    CURVE_PERCENTILES,
    STANDARD_PERCENTILES,
    key,
    percentile,
    percentiles,
    rank,
    summarize,
)


def test_known_latencies_give_exact_percentiles():
    latencies = [float(ms) for ms in range(1, 101)]  # 1..100 ms, shuffled order must not matter
    shuffled = latencies[::2] + latencies[1::2]
    result = percentiles(shuffled, (0, 1, 50, 90, 99, 99.9, 100))
    assert result == {0: 1.0, 1: 1.0, 50: 50.0, 90: 90.0, 99: 99.0, 99.9: 100.0, 100: 100.0}


def test_decimal_percentiles_are_not_bent_by_binary_rounding():
    # 0.999 * 1000 is 999.0000000000001 in floating point; nearest rank must still be 999.
    assert rank(99.9, 1000) == 999
    assert rank(99.99, 10_000) == 9_999
    assert rank(99.999, 100_000) == 99_999
    values = list(range(1, 1001))
    assert percentile(values, 99.9) == 999


def test_with_too_few_samples_a_high_percentile_is_the_maximum():
    assert percentile([1.0, 2.0, 3.0], 99.999) == 3.0
    assert percentile([5.0], 50) == 5.0


def test_out_of_range_percentile_or_no_samples_is_an_error():
    with pytest.raises(ValueError):
        rank(100.1, 10)
    with pytest.raises(ValueError):
        rank(50, 0)


def test_summarize_reports_milliseconds_from_seconds():
    stats = summarize([0.001, 0.002, 0.003, 0.004])
    assert stats.count == 4
    assert stats.percentiles_ms[key(50)] == pytest.approx(2.0)
    assert stats.percentiles_ms[key(99)] == pytest.approx(4.0)
    assert stats.max_ms == pytest.approx(4.0)
    assert stats.mean_ms == pytest.approx(2.5)
    assert set(stats.percentiles_ms) == {key(p) for p in STANDARD_PERCENTILES}
    assert [p for p, _ in stats.curve] == list(CURVE_PERCENTILES)


def test_summarize_of_nothing_is_empty():
    stats = summarize([])
    assert stats.count == 0 and stats.percentiles_ms == {}


def test_keys_name_percentiles_without_trailing_zeros():
    assert [key(p) for p in (50.0, 99.9, 99.999)] == ["50", "99.9", "99.999"]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=300),
    p=st.sampled_from([0.0, 1.0, 25.0, 50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0]),
)
def test_percentile_is_the_smallest_sample_with_at_least_p_percent_at_or_below_it(values, p):
    ordered = sorted(values)
    result = percentile(ordered, p)
    n = len(ordered)
    assert result in ordered
    at_or_below = sum(1 for v in ordered if v <= result)
    below = sum(1 for v in ordered if v < result)
    assert at_or_below >= max(1, math.ceil(p / 100 * n - 1e-9))
    # Minimal: the samples strictly below it are fewer than p% of all (else a smaller one would do).
    assert below < max(1, math.ceil(p / 100 * n - 1e-9))


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=200))
def test_percentiles_never_decrease_with_p(values):
    ordered = sorted(values)
    results = [percentile(ordered, p) for p in CURVE_PERCENTILES]
    assert results == sorted(results)
