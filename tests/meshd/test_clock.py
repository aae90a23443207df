"""The one clock: the production MonotonicClock and the tests' FakeClock implement one interface."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from meshd.clock import MONOTONIC, Clock
from tests.support.clock import FakeClock

delays = st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=30)
steps = st.lists(st.integers(min_value=0, max_value=3_000), min_size=1, max_size=20)


def _as_clock(clock: Clock) -> Clock:
    return clock


def test_both_clocks_satisfy_the_interface() -> None:
    assert _as_clock(MONOTONIC) is MONOTONIC
    fake = FakeClock()
    assert _as_clock(fake) is fake


@given(delays, steps)
def test_fake_timers_run_in_due_order_at_their_exact_instant(ms: list[int], advances: list[int]) -> None:
    # units of 1/1024 s: sums of these floats are exact, so the assertions can be too
    clock = FakeClock(start=0.0)
    ran: list[tuple[int, float]] = []

    def record(index: int) -> Callable[[], None]:
        return lambda: ran.append((index, clock.now()))

    for index, delay in enumerate(ms):
        clock.call_later(delay / 1024, record(index))
    total = 0
    for step in advances:
        total += step
        clock.advance(step / 1024)
        assert clock.now() == total / 1024
    due = sorted((delay, index) for index, delay in enumerate(ms) if delay <= total)
    assert [index for _, index in due] == [index for index, _ in ran]  # due order, ties as armed
    for index, at in ran:
        assert at == ms[index] / 1024  # now() reads the timer's own due time while it runs
    assert len(clock.pending) == len(ms) - len(ran)


@given(delays, st.sets(st.integers(min_value=0, max_value=29)))
def test_cancelled_fake_timers_never_run(ms: list[int], cancel: set[int]) -> None:
    clock = FakeClock(start=0.0)
    ran: list[int] = []
    timers = [clock.call_later(d / 1000, functools.partial(ran.append, i)) for i, d in enumerate(ms)]
    for i in cancel:
        if i < len(timers):
            timers[i].cancel()
    clock.advance(10.0)
    assert sorted(ran) == [i for i in range(len(ms)) if i not in cancel]
    assert clock.pending == []


def test_a_timer_armed_by_a_timer_runs_in_the_same_advance_when_due() -> None:
    clock = FakeClock(start=0.0)
    seen: list[float] = []

    def first() -> None:
        seen.append(clock.now())
        clock.call_later(0.5, lambda: seen.append(clock.now()))

    clock.call_at(1.0, first)
    clock.advance(1.4)
    assert seen == [1.0]
    clock.advance(0.1)
    assert seen == [1.0, 1.5]
    assert clock.now() == 1.5


def test_a_timer_due_in_the_past_runs_at_the_next_advance() -> None:
    clock = FakeClock(start=10.0)
    seen: list[float] = []
    clock.call_at(5.0, lambda: seen.append(clock.now()))
    clock.advance(0)
    assert seen == [10.0]


def test_time_does_not_go_backwards() -> None:
    clock = FakeClock()
    try:
        clock.advance(-1)
    except ValueError:
        pass
    else:
        raise AssertionError("advance(-1) was accepted")


async def test_fake_sleep_resumes_when_advanced_to_its_due_time() -> None:
    clock = FakeClock(start=0.0)
    task = asyncio.create_task(clock.sleep(2.0))
    await asyncio.sleep(0)
    assert clock.next_due() == 2.0
    clock.advance(1.999)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.001)
    await asyncio.sleep(0)
    assert task.done()
    assert clock.pending == []


async def test_a_cancelled_fake_sleep_leaves_no_timer() -> None:
    clock = FakeClock(start=0.0)
    task = asyncio.create_task(clock.sleep(2.0))
    await asyncio.sleep(0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert clock.pending == []


async def test_monotonic_timers_run_on_the_loop_on_the_monotonic_base() -> None:
    fired = asyncio.Event()
    due = MONOTONIC.now() + 0.02
    MONOTONIC.call_at(due, fired.set)
    await asyncio.wait_for(fired.wait(), 5)
    assert time.monotonic() >= due - 0.005  # uvloop timers have millisecond resolution
    cancelled: list[int] = []
    MONOTONIC.call_later(0.0, lambda: cancelled.append(1)).cancel()
    await MONOTONIC.sleep(0.01)
    assert cancelled == []


# -- clock.timeout: a bounded await on the clock ----------------------------------------------------


async def test_a_timeout_block_ends_with_timeout_error_exactly_at_its_limit() -> None:
    clock = FakeClock(start=0.0)
    never = asyncio.Event()
    outcome: list[str] = []

    async def bounded() -> None:
        try:
            async with clock.timeout(0.25) as timeout:
                await never.wait()
        except TimeoutError:
            outcome.append(f"timed out at {clock.now()} expired={timeout.expired}")

    task = asyncio.create_task(bounded())
    await asyncio.sleep(0)
    assert clock.next_due() == 0.25
    clock.advance(0.25 - 1 / 1024)
    await asyncio.sleep(0)
    assert not task.done() and outcome == []
    clock.advance(1 / 1024)
    await task
    assert outcome == ["timed out at 0.25 expired=True"]
    assert task.cancelling() == 0  # the timer's own cancellation was taken back


async def test_a_block_that_finishes_in_time_disarms_its_timer() -> None:
    clock = FakeClock(start=0.0)
    async with clock.timeout(1.0) as timeout:
        await asyncio.sleep(0)
    assert clock.pending == [] and not timeout.expired
    clock.advance(2.0)  # nothing fires later


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    clock = FakeClock(start=0.0)
    never = asyncio.Event()

    async def bounded() -> None:
        async with clock.timeout(1.0):
            await never.wait()

    task = asyncio.create_task(bounded())
    await asyncio.sleep(0)
    task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert clock.pending == []


async def test_a_cancellation_from_elsewhere_at_the_same_instant_as_the_limit_goes_on() -> None:
    # as asyncio.timeout: when someone else also cancelled the task, the block must not swallow it
    clock = FakeClock(start=0.0)
    never = asyncio.Event()

    async def bounded() -> None:
        async with clock.timeout(1.0):
            await never.wait()

    task = asyncio.create_task(bounded())
    await asyncio.sleep(0)
    clock.advance(1.0)
    task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)


async def test_the_monotonic_clock_bounds_a_block_too() -> None:
    never = asyncio.Event()
    started = MONOTONIC.now()
    try:
        async with MONOTONIC.timeout(0.02):
            await never.wait()
    except TimeoutError:
        pass
    else:
        raise AssertionError("the block was not bounded")
    assert MONOTONIC.now() - started >= 0.02 - 0.005  # uvloop timers have millisecond resolution


async def test_sleep_until_and_wait_sleeps() -> None:
    clock = FakeClock(start=0.0)
    await clock.sleep_until(0.0)  # not in the future: at once, no sleep recorded
    assert clock.slept == []
    task = asyncio.create_task(clock.sleep_until(1.5))
    await clock.wait_sleeps(1)
    assert clock.slept == [1.5] and clock.next_due() == 1.5
    clock.advance_to(1.5)
    await task
    assert clock.now() == 1.5
