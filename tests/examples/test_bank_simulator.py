"""The card-network simulator: an open-loop schedule fixed in advance, latency from the intended send time."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given
from hypothesis import strategies as st

from examples.bank.authorisation import AuthRequest
from examples.bank.simulator import (
    Cardholders,
    PlannedAuth,
    Reply,
    Simulator,
    arrival_offsets,
    percentile,
    plan_traffic,
)
from tests.support.clock import FakeClock


def request(n: int) -> AuthRequest:
    return AuthRequest(auth_id=f"a-{n}", account_id="c-1", merchant_id="m-001", amount=100)


def plan(*times: float) -> list[PlannedAuth]:
    return [PlannedAuth(send_at=t, request=request(n)) for n, t in enumerate(times)]


async def test_a_stall_shows_up_in_the_latency_of_every_request_it_delayed():
    clock = FakeClock(start=0.0)  # the simulator sleeps until each send on it
    first_answered = asyncio.Event()

    class Immediate:
        async def authorise(self, auth: AuthRequest) -> Reply:
            first_answered.set()
            return Reply(outcome="approved")

    run = asyncio.create_task(Simulator(Immediate(), clock).run(plan(0.0, 0.1, 0.2)))
    await first_answered.wait()
    await clock.wait_sleeps(1)
    clock.advance(1.0)  # the process stalls for a second: the sends due at 0.1 and 0.2 leave at 1.0
    results = await run
    assert [round(result.latency_ms) for result in results] == [0, 900, 800]


async def test_a_slow_answer_does_not_delay_later_sends():
    clock = FakeClock(start=0.0)  # the simulator sleeps until each send on it
    release, all_sent = asyncio.Event(), asyncio.Event()
    sent_at: list[float] = []

    class SlowFirst:
        async def authorise(self, auth: AuthRequest) -> Reply:
            sent_at.append(clock.now())
            if len(sent_at) == 3:
                all_sent.set()
            if auth.auth_id == "a-0":
                await release.wait()
            return Reply(outcome="declined", reason="insufficient_funds")

    run = asyncio.create_task(Simulator(SlowFirst(), clock).run(plan(0.0, 0.5, 1.0)))
    for sleeps in (1, 2):
        await clock.wait_sleeps(sleeps)
        clock.advance(0.5)
    await all_sent.wait()
    clock.advance(0.25)
    release.set()
    results = await run
    assert sent_at == [0.0, 0.5, 1.0]
    assert [(result.request.auth_id, round(result.latency_ms)) for result in results] == [
        ("a-0", 1250),
        ("a-1", 0),
        ("a-2", 0),
    ]
    assert {result.outcome for result in results} == {"declined"}


async def test_stop_event_ends_the_run_early():
    clock = FakeClock(start=0.0)  # the simulator sleeps until each send on it
    stop = asyncio.Event()

    class Stopper:
        async def authorise(self, auth: AuthRequest) -> Reply:
            stop.set()
            return Reply(outcome="approved")

    run = asyncio.create_task(Simulator(Stopper(), clock).run(plan(0.0, 1.0, 2.0), stop=stop))
    await clock.wait_sleeps(1)
    clock.advance(1.0)
    assert len(await run) == 1


@given(st.integers(0, 2**32 - 1))
def test_arrivals_are_sorted_inside_the_window_at_about_the_rate(seed):
    offsets = arrival_offsets(50.0, 100.0, random.Random(seed))
    assert offsets == sorted(offsets)
    assert all(0 <= offset < 100.0 for offset in offsets)
    assert abs(len(offsets) - 5_000) < 5 * 5_000**0.5


def test_the_plan_is_fixed_by_the_seed_and_ids_are_unique():
    cardholders = Cardholders.generate(10, random.Random(3))
    first = plan_traffic(
        rate_per_sec=20,
        duration_secs=5,
        start=100.0,
        cardholders=cardholders,
        rng=random.Random(9),
        run_id="r",
    )
    again = plan_traffic(
        rate_per_sec=20,
        duration_secs=5,
        start=100.0,
        cardholders=cardholders,
        rng=random.Random(9),
        run_id="r",
    )
    assert first == again
    assert len({p.request.auth_id for p in first}) == len(first)
    assert all(100.0 <= p.send_at < 105.0 for p in first)
    known = [p.request for p in first if p.request.account_id in cardholders.opening_balances]
    assert len(known) >= len(first) * 0.9


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 1.0)) == (50.0, 99.0, 100.0)
