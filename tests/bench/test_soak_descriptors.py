"""How the soak judges descriptors: the median over one kill cycle at the steady mark against the
median over the last cycle, so a stall under way at one sampling instant is not a step, a real
step is, and a short run with no sample in a window falls back to the single sample."""

from __future__ import annotations

from bench.scenarios.soak import _median_fds, _Sample


def samples(fds: list[float], every: float = 10.0) -> list[_Sample]:
    return [_Sample(t_secs=i * every, rss_mb=30.0, fds=f) for i, f in enumerate(fds)]


def test_a_stall_at_the_steady_instant_is_not_counted_but_a_step_is():
    # 0..290 s warm-up, a stall's connections at the 300 s sample only, flat afterwards
    flat = samples([40.0] * 30 + [210.0] + [41.0] * 11 + [40.0] * 18)
    assert _median_fds(flat, 300.0, 420.0, None) == 41.0
    assert _median_fds(flat, 480.0, 600.0, None) == 40.0
    stepped = samples([40.0] * 42 + [85.0] * 18)
    assert _median_fds(stepped, 300.0, 420.0, None) == 40.0
    assert _median_fds(stepped, 480.0, 600.0, None) == 85.0


def test_an_empty_window_falls_back_to_the_given_sample():
    few = samples([30.0, 33.0])
    assert _median_fds(few, 100.0, 200.0, few[-1]) == 33.0
    assert _median_fds([], 0.0, 1.0, None) == 0.0
