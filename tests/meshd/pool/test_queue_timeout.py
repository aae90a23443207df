"""`pool.queueTimeoutMs`: a request waits for a connection to its endpoint this long at most, then
fails with 503 `QueueTimeout` (never written, so the retry stage may requeue it elsewhere).

The waiters are expired by the pool's periodic `sweep(now)` (driven here by a FakeClock) and by
one lazy timer per pool (on the fake clock, to the exact instant; once more with the real clock and
a short limit, as a smoke test of the production clock's timers). The real-socket
case, slow request bodies holding every connection, is in tests/integration/test_pool.py.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.clock import MONOTONIC
from meshd.errors import PoolExhausted, QueueTimeout
from meshd.pool.connection import UpstreamConnection
from meshd.pool.pool import Pool, PoolLimits
from tests.meshd.pool.test_pool import ScriptedDialer, run, stats, turn
from tests.support.clock import FakeClock

pytestmark = pytest.mark.timeout(20)


def make_pool(clock: FakeClock, *, max_connections: int = 1, queue_timeout_s: float | None = 5.0) -> Pool:
    limits = PoolLimits(max_connections=max_connections, queue_timeout_s=queue_timeout_s)
    return Pool("10.0.0.1", 80, dialer=ScriptedDialer(), limits=limits, clock=clock)


async def test_a_waiter_older_than_the_queue_timeout_fails_with_503_not_written():
    clock = FakeClock()
    pool = make_pool(clock)
    conn = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    clock.advance(4.9)
    pool.sweep(clock.now())
    await turn()
    assert not waiting.done()  # 4.9 s: still waiting
    clock.advance(0.1)
    pool.sweep(clock.now())
    with pytest.raises(QueueTimeout) as info:
        await waiting
    error = info.value
    assert (error.status, error.written, error.kind) == (503, False, "queue_timeout")
    assert isinstance(error, PoolExhausted)  # the retry stage treats it as the pool refusing: requeue
    assert error.l5d_err == (
        "waited 5000 ms for a connection to 10.0.0.1:80: all 1 connections busy (pool.queueTimeoutMs)"
    )
    assert stats(pool) == (0, 1, 0, 0) and pool.statistics().queue_timeouts == 1
    pool.release(conn, True)  # nobody waits any more: the connection goes idle
    assert stats(pool) == (1, 0, 0, 0)


async def test_only_the_waiters_past_the_limit_expire_and_the_rest_keep_their_order():
    clock = FakeClock()
    pool = make_pool(clock)
    conn = await pool.acquire()
    old = asyncio.create_task(pool.acquire())
    await turn()
    clock.advance(3)
    young = [asyncio.create_task(pool.acquire()) for _ in range(2)]
    await turn()
    clock.advance(2)
    pool.sweep(clock.now())  # `old` has waited 5 s, the others 2 s
    with pytest.raises(QueueTimeout):
        await old
    assert stats(pool)[3] == 2 and pool.statistics().queue_timeouts == 1
    pool.release(conn, True)
    first = await young[0]
    assert first is conn and not young[1].done()
    pool.release(first, True)
    assert await young[1] is conn
    pool.release(conn, True)


async def test_without_sweeps_the_pools_own_timer_expires_the_waiters():
    pool = Pool(
        "10.0.0.1", 80, dialer=ScriptedDialer(), clock=MONOTONIC,
        limits=PoolLimits(max_connections=1, queue_timeout_s=0.05),
    )
    conn = await pool.acquire()
    waiters = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await turn()
    timer = pool._queue_timer
    assert timer is not None  # one timer for the pool, not one per waiter
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
    assert all(isinstance(r, QueueTimeout) for r in results)
    assert pool.statistics().queue_timeouts == 3 and stats(pool) == (0, 1, 0, 0)
    pool.release(conn, True)
    assert pool._queue_timer is None  # nobody waits: not re-armed


async def test_taking_an_idle_connection_arms_no_timer():
    pool = make_pool(FakeClock(), max_connections=2)
    a, b = await pool.acquire(), await pool.acquire()
    pool.release(a, True)
    pool.release(b, True)
    for _ in range(3):
        conn = await pool.acquire()
        pool.release(conn, True)
    assert pool._queue_timer is None


async def test_a_waiter_cancelled_as_it_expired_is_cancelled_and_gives_nothing_back():
    clock = FakeClock()
    pool = make_pool(clock)
    conn = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    clock.advance(5)
    pool.sweep(clock.now())  # fails the waiter's future...
    waiting.cancel()  # ...and the caller gives up before the task ran again
    with pytest.raises(asyncio.CancelledError):  # what a caller that gave up expects
        await waiting
    assert stats(pool) == (0, 1, 0, 0)
    pool.release(conn, True)
    assert stats(pool) == (1, 0, 0, 0)


async def test_no_queue_timeout_waits_for_a_connection():
    clock = FakeClock()
    pool = make_pool(clock, queue_timeout_s=None)
    conn = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    clock.advance(3600)
    pool.sweep(clock.now())
    await turn()
    assert not waiting.done() and pool._queue_timer is None
    pool.release(conn, True)
    assert await waiting is conn
    pool.release(conn, True)


async def test_close_cancels_the_timer_and_fails_the_waiters_as_removed():
    pool = make_pool(FakeClock())
    conn = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    assert pool._queue_timer is not None
    pool.close()
    assert pool._queue_timer is None
    with pytest.raises(Exception, match="was removed"):
        await waiting
    pool.release(conn, True)


# -- a model check: whatever the order of waits, releases and clock steps -----------------------

TIMEOUT_S = 3.0

operations = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.just(0)),
        st.tuples(st.just("release"), st.integers(0, 3)),
        st.tuples(st.just("advance"), st.integers(0, 4)),
        st.tuples(st.just("cancel"), st.integers(0, 7)),
    ),
    max_size=40,
)


@given(ops=operations, max_connections=st.integers(1, 2))
@settings(max_examples=100, deadline=None)
def test_every_waiter_is_served_in_order_or_expired_after_the_limit_never_before(ops, max_connections):
    async def go() -> None:
        clock = FakeClock()
        pool = make_pool(clock, max_connections=max_connections, queue_timeout_s=TIMEOUT_S)
        pending: list[tuple[int, float, asyncio.Task[UpstreamConnection]]] = []
        held: list[UpstreamConnection] = []
        served: list[int] = []
        expired = 0
        ticket = 0
        for op, arg in ops:
            if op == "acquire":
                pending.append((ticket, clock.now(), asyncio.create_task(pool.acquire())))
                ticket += 1
            elif op == "release" and held:
                pool.release(held.pop(arg % len(held)), True)
            elif op == "advance":
                clock.advance(arg)
                pool.sweep(clock.now())
            elif op == "cancel" and pending:
                pending[arg % len(pending)][2].cancel()
            await turn()
            still: list[tuple[int, float, asyncio.Task[UpstreamConnection]]] = []
            for number, since, task in pending:
                if not task.done():
                    # after a sweep, nobody still waits who has waited the limit
                    assert clock.now() - since < TIMEOUT_S
                    still.append((number, since, task))
                elif task.cancelled():
                    continue
                elif task.exception() is None:
                    held.append(task.result())
                    served.append(number)
                else:
                    assert isinstance(task.exception(), QueueTimeout)
                    assert clock.now() - since >= TIMEOUT_S  # never expired early
                    expired += 1
            pending = still
            s = pool.statistics()
            assert s.busy == len(held) and s.busy + s.idle + s.dialing <= max_connections
            assert s.queue_timeouts == expired
        assert served == sorted(served)  # first come, first served
        for _, _, task in pending:
            task.cancel()
        await turn()

    run(go)


async def test_the_pools_own_timer_expires_each_waiter_at_its_exact_deadline():
    # the same timer on the fake clock: each waiter fails at its own start + the queue timeout
    # (1/1024 s units, so the sums are exact floats)
    clock = FakeClock(start=0.0)
    pool = make_pool(clock, queue_timeout_s=5.0)
    conn = await pool.acquire()
    first = asyncio.create_task(pool.acquire())
    await turn()
    clock.advance(3.0)
    second = asyncio.create_task(pool.acquire())
    await turn()
    assert clock.armed == 1  # one timer for the pool, not one per waiter
    clock.advance(2.0 - 1 / 1024)
    await turn()
    assert not first.done() and not second.done()
    clock.advance(1 / 1024)  # 5 s after the first began waiting
    await turn()
    assert isinstance(first.exception(), QueueTimeout) and not second.done()
    assert clock.next_due() == 8.0  # re-armed for the second waiter's deadline
    clock.advance(3.0 - 1 / 1024)
    await turn()
    assert not second.done()
    clock.advance(1 / 1024)
    await turn()
    assert isinstance(second.exception(), QueueTimeout)
    assert pool.statistics().queue_timeouts == 2 and clock.armed == 0
    pool.release(conn, True)
