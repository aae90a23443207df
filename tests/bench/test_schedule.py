"""The open-loop schedule and latency recording, driven by made-up instants (no real time)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.percentiles import percentiles
from bench.schedule import LatencyRecorder, OpenLoopSchedule, Pacer


def test_schedule_counts_and_spaces_requests_evenly():
    schedule = OpenLoopSchedule(rate_per_sec=1000, duration_secs=15)
    assert schedule.total == 15_000
    assert schedule.offset(0) == 0.0
    assert schedule.offset(1500) == pytest.approx(1.5)
    assert OpenLoopSchedule(rate_per_sec=3, duration_secs=1).total == 3
    assert OpenLoopSchedule(rate_per_sec=3, duration_secs=1.1).total == 4  # i/3 < 1.1 for i = 0..3


def test_schedule_rejects_bad_values():
    with pytest.raises(ValueError):
        OpenLoopSchedule(rate_per_sec=0, duration_secs=1)
    with pytest.raises(ValueError):
        OpenLoopSchedule(rate_per_sec=10, duration_secs=-1)


def test_pacer_issues_what_is_due_and_nothing_early():
    pacer = Pacer(OpenLoopSchedule(rate_per_sec=1000, duration_secs=0.005), start=100.0)
    assert pacer.take_due(99.999) == []
    assert pacer.take_due(100.0) == [100.0]
    assert pacer.take_due(100.0005) == []
    assert pacer.take_due(100.0025) == pytest.approx([100.001, 100.002])
    assert pacer.next_due() == pytest.approx(100.003)
    assert not pacer.is_finished()


def test_a_late_pacer_catches_up_with_every_missed_send_time():
    pacer = Pacer(OpenLoopSchedule(rate_per_sec=100, duration_secs=1), start=0.0)
    # The generator was stuck for half a second: all 51 requests due by then come out at once,
    # each still carrying its own intended time.
    due = pacer.take_due(0.5)
    assert len(due) == 51
    assert due[0] == 0.0 and due[-1] == pytest.approx(0.5)
    assert pacer.take_due(10.0)[-1] == pytest.approx(0.99)
    assert pacer.is_finished() and pacer.next_due() is None and pacer.issued == 100


def test_latency_is_measured_from_the_intended_send_time():
    """A request that should have gone at t=0 but went at t=0.2 and was answered at t=0.201 took 201 ms:
    the 200 ms spent waiting to be sent is latency, not a gap in the record (no coordinated omission)."""
    recorder = LatencyRecorder()
    recorder.on_response(intended=0.0, sent=0.2, finished=0.201, status=200)
    recorder.on_response(intended=0.01, sent=0.2, finished=0.202, status=200)
    recorder.on_response(intended=0.02, sent=0.02, finished=0.021, status=503)
    recorder.on_error(intended=0.03, sent=0.03, error="closed")
    recorder.on_error(intended=0.04, sent=None, error="timeout")
    run = recorder.result()
    assert run.latencies == pytest.approx((0.201, 0.192, 0.001))
    assert run.send_lags == pytest.approx((0.2, 0.19, 0.0, 0.0))
    assert run.statuses == {200: 2, 503: 1}
    assert run.errors == {"closed": 1, "timeout": 1}
    assert run.completed == 3 and run.outcomes == 5


def test_fake_clock_run_gives_exact_percentiles():
    """Drive pacer and recorder with a fake clock: 1000 req/s, each answered 1 ms after its intended
    time except every 100th, answered 50 ms late. Nearest rank then gives exact percentiles."""
    schedule = OpenLoopSchedule(rate_per_sec=1000, duration_secs=1)
    pacer = Pacer(schedule, start=10.0)
    recorder = LatencyRecorder()
    now = 10.0
    index = 0
    while not pacer.is_finished():
        for intended in pacer.take_due(now):
            delay = 0.050 if index % 100 == 99 else 0.001
            recorder.on_response(intended, intended, intended + delay, 200)
            index += 1
        now += 0.0004
    run = recorder.result()
    assert len(run.latencies) == 1000
    result = percentiles(run.latencies, (50, 99, 99.1, 100))
    assert result[50] == pytest.approx(0.001)
    assert result[99] == pytest.approx(0.001)  # 990 of 1000 are 1 ms
    assert result[99.1] == pytest.approx(0.050)
    assert result[100] == pytest.approx(0.050)


@settings(max_examples=100, deadline=None)
@given(
    rate=st.integers(min_value=1, max_value=2000),
    steps=st.lists(st.floats(min_value=0, max_value=0.05), min_size=1, max_size=200),
)
def test_pacer_issues_every_request_once_in_order_never_before_its_time(rate, steps):
    schedule = OpenLoopSchedule(rate_per_sec=rate, duration_secs=0.5)
    pacer = Pacer(schedule, start=0.0)
    now = 0.0
    issued: list[float] = []
    for step in steps:
        now += step
        due = pacer.take_due(now)
        assert all(t <= now for t in due)
        issued += due
    issued += pacer.take_due(1e9)
    assert issued == [schedule.offset(i) for i in range(schedule.total)]
