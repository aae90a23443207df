"""Latency buckets of the request stats: each observation lands in the first bucket whose bound is
at least the latency (Prometheus `le`), as `bisect_left` would place it."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from meshd.pipeline.stats import BUCKETS, RequestStats

latencies = st.one_of(st.sampled_from(BUCKETS), st.floats(min_value=0.0, max_value=100.0, allow_nan=False))


@given(st.lists(latencies, max_size=50))
def test_each_latency_lands_in_the_bucket_bisect_left_gives(seconds: list[float]) -> None:
    stats = RequestStats()
    expected = [0] * (len(BUCKETS) + 1)
    for s in seconds:
        stats.observe(200, s)
        expected[bisect_left(BUCKETS, s)] += 1
    assert stats.buckets == expected
    assert stats.count == len(seconds)


def test_a_latency_equal_to_a_bound_counts_in_that_bound_and_past_the_last_in_inf() -> None:
    stats = RequestStats()
    stats.observe(200, BUCKETS[1])
    stats.observe(503, BUCKETS[-1] + 1)
    assert stats.buckets[1] == 1 and stats.buckets[-1] == 1
    assert stats.by_class[2] == 1 and stats.by_class[5] == 1
