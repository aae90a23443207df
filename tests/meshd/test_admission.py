"""Admission control on its own, on the fake clock: turns, the FIFO queue, refusals, timeouts."""

from __future__ import annotations

import asyncio

import pytest

from meshd.admission import Admission
from meshd.errors import Overloaded
from tests.support.clock import FakeClock


def make(max_concurrent: int = 2, max_pending: int = 2, timeout_s: float = 1.0) -> tuple[Admission, FakeClock]:
    clock = FakeClock(start=0.0)
    return Admission("r", max_concurrent=max_concurrent, max_pending=max_pending, pending_timeout_s=timeout_s,
                     clock=clock), clock


async def test_requests_within_the_limit_are_admitted_at_once_and_counted_in_flight():
    adm, _ = make()
    assert adm.enter() and adm.enter()
    assert adm.inflight == 2
    assert not adm.enter()  # the third must wait
    adm.leave()
    assert adm.inflight == 1 and adm.enter()


async def test_a_turn_goes_to_the_oldest_waiter_and_newcomers_do_not_overtake():
    adm, _ = make(max_concurrent=1, max_pending=2)
    assert adm.enter()
    first = asyncio.ensure_future(adm.wait())
    second = asyncio.ensure_future(adm.wait())
    await asyncio.sleep(0)
    assert adm.pending == 2 and adm.queued == 2
    adm.leave()  # the turn passes to `first`: the count never dips
    assert adm.inflight == 1
    assert not adm.enter()  # a newcomer still waits behind `second`
    await first
    assert not second.done()
    adm.leave()
    await second
    assert adm.inflight == 1 and adm.pending == 0


async def test_a_full_queue_is_refused_at_once_with_the_limits_named():
    adm, _ = make(max_concurrent=1, max_pending=1)
    assert adm.enter()
    waiting = asyncio.ensure_future(adm.wait())
    await asyncio.sleep(0)
    with pytest.raises(Overloaded) as refused:
        await adm.wait()
    err = refused.value
    assert err.status == 503 and not err.written and err.headers == ((b"Retry-After", b"1"),)
    assert "1 requests in flight (maxConcurrentRequests) and 1 waiting (maxPendingRequests)" in err.l5d_err
    assert adm.rejected_full == 1
    waiting.cancel()


async def test_no_queue_refuses_past_the_limit_at_once():
    adm, _ = make(max_concurrent=1, max_pending=0)
    assert adm.enter()
    with pytest.raises(Overloaded):
        await adm.wait()


async def test_a_waiter_is_refused_exactly_at_the_pending_timeout():
    adm, clock = make(max_concurrent=1, max_pending=5, timeout_s=0.5)
    assert adm.enter()
    early = asyncio.ensure_future(adm.wait())
    await asyncio.sleep(0)
    clock.advance(0.25)
    late = asyncio.ensure_future(adm.wait())  # starts waiting at 0.25
    await asyncio.sleep(0)
    clock.advance(0.5 - 0.25 - 1 / 1024)
    await asyncio.sleep(0)
    assert not early.done()
    clock.advance(1 / 1024)  # 0.5: the first waiter's limit
    with pytest.raises(Overloaded, match="waited 500 ms for one of 1 request slots"):
        await early
    assert not late.done() and adm.rejected_timeout == 1
    clock.advance(0.25)  # 0.75: the second's
    with pytest.raises(Overloaded):
        await late
    assert adm.rejected_timeout == 2 and adm.pending == 0 and adm.inflight == 1


async def test_a_cancelled_waiter_leaves_the_queue_and_a_turn_handed_to_it_is_passed_on():
    adm, _ = make(max_concurrent=1, max_pending=3)
    assert adm.enter()
    gone = asyncio.ensure_future(adm.wait())
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    assert adm.pending == 0
    # handed a turn and cancelled before it ran: the turn goes on to the next waiter
    handed = asyncio.ensure_future(adm.wait())
    nxt = asyncio.ensure_future(adm.wait())
    await asyncio.sleep(0)
    adm.leave()
    handed.cancel()
    await asyncio.gather(handed, return_exceptions=True)
    await nxt
    assert adm.inflight == 1 and adm.pending == 0
    adm.leave()
    assert adm.inflight == 0
