"""The adaptive concurrency limit (meshd/adaptive.py) on its own, fed latencies from a model of
upstreams that serve C requests at once in S seconds each: with L requests admitted, a request
takes S while L <= C and S x L / C past that (the rest queue). No socket, no clock: `now` is
passed in. And the admission queue's side of a moving limit."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.adaptive import GradientLimit
from meshd.admission import Admission
from meshd.errors import Overloaded


def run_model(limit: GradientLimit, admission: Admission, *, capacity: int, service_s: float, demand: int,
              windows: int, now: float = 0.0) -> float:
    """`demand` callers keep a request each outstanding; every window takes 20 requests."""
    per_request = limit.window_s / 20
    for _ in range(windows):
        admitted = min(demand, admission.max_concurrent)
        latency = service_s * max(1.0, admitted / capacity)
        for _ in range(20):
            admission.inflight = admitted - 1  # the request being sampled has just left
            now += per_request
            limit.sample(latency, now)
    return now


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(4, 64), service_ms=st.integers(1, 50))
def test_the_limit_settles_near_what_the_upstreams_serve_without_queueing(capacity: int, service_ms: int) -> None:
    admission = Admission("r", max_concurrent=10_000)
    limit = GradientLimit(admission, min_limit=3, window_ms=100)
    demand = 8 * capacity
    run_model(limit, admission, capacity=capacity, service_s=service_ms / 1000, demand=demand, windows=600)
    assert limit.min_latency == pytest.approx(service_ms / 1000)  # measured at 3 at once: no queueing
    # 1.25 x C plus the square-root headroom: about 1.7 C; far below the 8 C callers
    assert capacity <= admission.max_concurrent <= 2.5 * capacity + 3


def test_with_no_queueing_the_limit_grows_only_as_far_as_it_is_used() -> None:
    admission = Admission("r", max_concurrent=10_000)
    limit = GradientLimit(admission, window_ms=100)
    run_model(limit, admission, capacity=10_000, service_s=0.01, demand=200, windows=300)
    assert 200 <= admission.max_concurrent <= 450  # grew to the demand; not while half of it idles


def test_the_no_load_latency_is_measured_again_and_follows_the_upstreams() -> None:
    admission = Admission("r", max_concurrent=10_000)
    limit = GradientLimit(admission, window_ms=100, min_latency_interval_s=10.0)
    now = run_model(limit, admission, capacity=16, service_s=0.010, demand=100, windows=100)
    assert limit.min_latency == pytest.approx(0.010)
    settled = admission.max_concurrent
    # the upstreams get twice as slow (a new version): the next measurement learns it, and the
    # limit stays where it was rather than halving for ever against a stale minimum
    run_model(limit, admission, capacity=16, service_s=0.020, demand=100, windows=300, now=now)
    assert limit.measurements >= 3
    assert limit.min_latency == pytest.approx(0.020)
    assert 0.6 * settled <= admission.max_concurrent <= 1.6 * settled


@settings(max_examples=60, deadline=None)
@given(latencies=st.lists(st.floats(0.0, 10.0), min_size=1, max_size=400), inflight=st.integers(0, 500))
def test_whatever_the_latencies_the_limit_stays_between_its_floor_and_ceiling(
    latencies: list[float], inflight: int
) -> None:
    admission = Admission("r", max_concurrent=300)
    limit = GradientLimit(admission, min_limit=5, window_ms=10, min_samples=1, min_latency_samples=3)
    now = 0.0
    for latency in latencies:
        admission.inflight = inflight
        now += 0.004
        limit.sample(latency, now)
        assert 5 <= admission.max_concurrent <= 300
        assert admission.max_concurrent == (5 if limit.measuring else int(limit.limit))


async def test_a_lowered_limit_lets_the_count_drop_and_a_raised_one_admits_waiters_at_once() -> None:
    admission = Admission("r", max_concurrent=2, max_pending=10)
    assert admission.enter() and admission.enter()
    waiting = [asyncio.ensure_future(admission.wait()) for _ in range(3)]
    await asyncio.sleep(0)  # let them queue
    assert admission.pending == 3

    admission.max_concurrent = 1  # lowered below the two in flight
    admission.leave()  # the leaving request's turn is not handed over: the count drops
    assert (admission.inflight, admission.pending) == (1, 3)

    admission.max_concurrent = 3  # raised: two waiters take the new turns now
    admission.admit_waiting()
    await asyncio.sleep(0)
    assert (admission.inflight, admission.pending) == (3, 1)
    assert [w.done() for w in waiting] == [True, True, False]
    waiting[2].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting[2]
    assert admission.pending == 0


def test_a_refusal_names_the_current_limit() -> None:
    admission = Admission("r", max_concurrent=100, max_pending=0)
    GradientLimit(admission, min_limit=4)  # pinned to 4 until the no-load latency is measured
    for _ in range(4):
        assert admission.enter()
    assert not admission.enter()
    with pytest.raises(Overloaded, match="4 requests in flight"):
        asyncio.run(admission.wait())
