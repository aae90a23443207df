"""RecentRequests: a fixed ring of reused slots; newest first; never more than its size."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshd.http.body import Body
from meshd.http.messages import Request
from meshd.pipeline.context import RouteContext
from meshd.pipeline.stats import RecentRequests


def _ctx(i: int) -> RouteContext:
    ctx = RouteContext(Request("GET", "/", "1.1", [], Body.empty()))
    ctx.attempts = i % 3 + 1
    ctx.trace_id = f"{i:032x}"
    ctx.reqid = f"r{i}"
    return ctx


@given(size=st.integers(1, 9), n=st.integers(0, 40))
def test_the_ring_keeps_the_newest_size_requests_newest_first(size, n):
    ring = RecentRequests(size)
    slots = list(ring.samples)
    for i in range(n):
        ring.record(_ctx(i), f"/svc/{i}", 200 + i, float(i), i / 1000.0)
    got = ring.newest_first()
    assert [s.service for s in got] == [f"/svc/{i}" for i in reversed(range(max(0, n - size), n))]
    assert ring.recorded == n
    assert ring.samples == slots and all(a is b for a, b in zip(ring.samples, slots, strict=True))  # reused, never made anew
    for s in got:
        i = int(s.service.rsplit("/", 1)[1])
        assert (s.status, s.at, s.seconds, s.attempts, s.trace_id, s.reqid) == (200 + i, float(i), i / 1000.0, i % 3 + 1, f"{i:032x}", f"r{i}")
