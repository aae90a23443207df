"""ReplicaHistory (the dashboard's per-replica latency and success over the last minutes):
points are the counters' increase per interval, quantiles interpolate inside buckets as
Prometheus's `histogram_quantile` does, old endpoints are forgotten after a window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshd.admin.history import Key, Reading, ReplicaHistory, quantile
from meshd.pipeline.stats import BUCKETS, AttemptStats

N = len(BUCKETS) + 1


def test_quantile_interpolates_inside_the_bucket_like_prometheus():
    counts = [0] * N
    counts[BUCKETS.index(0.1)] = 10  # 10 attempts in (0.05, 0.1]
    assert quantile(0.5, counts) == 0.05 + (0.1 - 0.05) * 0.5
    counts[-1] = 10  # 10 more past the last bound: the top half is reported as the last bound
    assert quantile(0.99, counts) == BUCKETS[-1]
    assert quantile(0.5, [0] * N) is None


@given(st.lists(st.integers(0, 50), min_size=N, max_size=N), st.floats(0.01, 0.99), st.floats(0.01, 0.99))
def test_quantiles_are_monotonic_and_within_the_bounds(counts, q1, q2):
    lo, hi = sorted((q1, q2))
    a, b = quantile(lo, counts), quantile(hi, counts)
    if sum(counts) == 0:
        assert a is None and b is None
    else:
        assert a is not None and b is not None and 0.0 <= a <= b <= BUCKETS[-1]


class Fake:
    def __init__(self) -> None:
        self.now = 1000.0
        self.stats: dict[Key, AttemptStats] = {}

    def read(self) -> list[tuple[Key, Reading]]:
        return [(k, Reading.of(s)) for k, s in self.stats.items()]


def test_points_are_increases_per_interval_and_old_endpoints_are_forgotten():
    fake = Fake()
    key = ("outgoing", "/#/fs/a", "10.0.0.1:80")
    fake.stats[key] = s = AttemptStats()
    history = ReplicaHistory(fake.read, interval_s=10.0, window=3, wall=lambda: fake.now)
    history.sample()  # at start: nothing yet
    for _ in range(8):
        s.observe(0.002, False)
    for _ in range(2):
        s.observe(0.02, True)
    fake.now += 10
    history.sample()
    s.observe(0.002, False)
    fake.now += 4
    (entry,) = history.to_json()
    first, second, partial = entry["points"]
    assert first["requests"] == 0 and first["success"] is None
    assert (second["requests"], second["failures"], second["success"], second["seconds"]) == (10, 2, 0.8, 10.0)
    assert 0.001 < second["p50"] <= 0.0025 and 0.01 < second["p99"] <= 0.025
    assert partial == {**partial, "partial": True, "requests": 1, "failures": 0, "seconds": 4.0}
    # the endpoint goes away: its points stay for a window, then it is forgotten
    del fake.stats[key]
    for _ in range(2):
        fake.now += 10
        history.sample()
    assert [len(e["points"]) for e in history.to_json()] == [2]  # seen 24 s ago: within the 30 s window
    fake.now += 10
    history.sample()
    assert history.to_json() == []


def test_counters_that_started_over_count_from_zero():
    fake = Fake()
    key = ("outgoing", "/#/fs/a", "10.0.0.1:80")
    fake.stats[key] = s = AttemptStats()
    for _ in range(5):
        s.observe(0.001, False)
    history = ReplicaHistory(fake.read, wall=lambda: fake.now)
    history.sample()
    fake.stats[key] = s = AttemptStats()  # a new client for the same name after an idle eviction
    s.observe(0.001, False)
    fake.now += 10
    history.sample()
    closed = [p for p in history.to_json()[0]["points"] if not p.get("partial")]
    assert [p["requests"] for p in closed] == [5, 1]
