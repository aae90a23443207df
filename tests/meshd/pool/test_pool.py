"""The per-endpoint pool with a scripted dialer: limits, FIFO waiters, cancellation, idle sweep, drain.

The dialer is scripted per dial: accept (a connection on an in-memory transport), refuse, hang
until the test lets it go, or accept a connection that the upstream closes at once. Exchanges
are ended by calling `release()` as the connection itself does when a response is over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.errors import ConnectFailed, PoolExhausted
from meshd.pool.connection import UpstreamConnection
from meshd.pool.pool import Pool, PoolLimits, PoolStatistics
from tests.support.clock import FakeClock
from tests.support.transport import FakeTransport, connect

pytestmark = pytest.mark.timeout(20)

T = TypeVar("T")
P = TypeVar("P", bound=asyncio.Protocol)


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one hypothesis example on a fresh uvloop loop (hypothesis cannot drive async tests)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())


class ScriptedDialer:
    """Each dial takes the next action from `script` ("accept" when it runs out)."""

    def __init__(self, *script: str) -> None:
        self.script: deque[str] = deque(script)
        self.dials = 0
        self.transports: list[FakeTransport] = []
        self.hanging: deque[asyncio.Future[None]] = deque()

    async def dial(self, host: str, port: int, factory: Callable[[], P]) -> P:
        self.dials += 1
        action = self.script.popleft() if self.script else "accept"
        if action == "refuse":
            raise ConnectFailed(f"connect to {host}:{port} failed: connection refused")
        if action == "hang":
            gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.hanging.append(gate)
            await gate  # the test resolves it (accept), fails it (refuse) or cancels the dialler
        conn = factory()
        self.transports.append(connect(conn))
        if action == "close-early":
            self.transports[-1].peer_closes()
        return conn

    def let_go(self) -> None:
        self.hanging.popleft().set_result(None)


def make_pool(
    dialer: ScriptedDialer,
    clock: FakeClock | None = None,
    *,
    max_connections: int = 1000,
    max_waiters: int = 10_000,
    idle_time_s: float = 10.0,
) -> Pool:
    limits = PoolLimits(max_connections=max_connections, max_waiters=max_waiters, idle_time_s=idle_time_s)
    return Pool("10.0.0.1", 80, dialer=dialer, limits=limits, clock=clock or FakeClock())


def stats(pool: Pool) -> tuple[int, int, int, int]:
    s = pool.statistics()
    return (s.idle, s.busy, s.dialing, s.waiters)


async def turn() -> None:
    """Let every ready callback and task step run."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_first_acquire_dials_and_a_released_connection_is_reused():
    dialer = ScriptedDialer()
    pool = make_pool(dialer)
    conn = await pool.acquire()
    assert stats(pool) == (0, 1, 0, 0)
    pool.release(conn, True)
    assert stats(pool) == (1, 0, 0, 0)
    again = await pool.acquire()
    assert again is conn and dialer.dials == 1
    pool.release(again, True)
    assert pool.statistics() == PoolStatistics(idle=1, busy=0, dialing=0, waiters=0, opened=1, closed=0)


async def test_most_recently_used_idle_connection_is_reused_first():
    pool = make_pool(ScriptedDialer())
    a = await pool.acquire()
    b = await pool.acquire()
    pool.release(a, True)
    pool.release(b, True)
    assert await pool.acquire() is b


async def test_a_connection_not_reusable_is_closed_and_its_slot_freed():
    dialer = ScriptedDialer()
    pool = make_pool(dialer, max_connections=1)
    conn = await pool.acquire()
    pool.release(conn, False)
    assert dialer.transports[0].closing
    assert pool.statistics().closed == 1 and stats(pool) == (0, 0, 0, 0)
    assert await pool.acquire() is not conn


async def test_waiters_are_served_in_arrival_order_by_released_connections():
    pool = make_pool(ScriptedDialer(), max_connections=1)
    conn = await pool.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        got = await pool.acquire()
        order.append(i)
        pool.release(got, True)

    waiters = [asyncio.create_task(wait(i)) for i in range(3)]
    await turn()
    assert stats(pool) == (0, 1, 0, 3)
    pool.release(conn, True)
    await asyncio.gather(*waiters)
    assert order == [0, 1, 2]
    assert stats(pool) == (1, 0, 0, 0)


async def test_a_freed_slot_lets_the_oldest_waiter_dial():
    dialer = ScriptedDialer()
    pool = make_pool(dialer, max_connections=1)
    conn = await pool.acquire()
    first = asyncio.create_task(pool.acquire())
    second = asyncio.create_task(pool.acquire())
    await turn()
    pool.release(conn, False)  # closed: the slot, not the connection, goes to the first waiter
    got = await first
    assert got is not conn and dialer.dials == 2
    assert stats(pool) == (0, 1, 0, 1)
    pool.release(got, True)
    assert await second is got


async def test_waiters_beyond_max_waiters_are_refused_at_once_as_not_written():
    pool = make_pool(ScriptedDialer(), max_connections=1, max_waiters=1)
    conn = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    with pytest.raises(PoolExhausted) as info:
        await pool.acquire()
    assert info.value.written is False and info.value.status == 503
    assert "1 connections busy and 1 requests waiting" in info.value.l5d_err
    pool.release(conn, True)
    pool.release(await waiting, True)


async def test_zero_max_waiters_refuses_as_soon_as_every_connection_is_busy():
    pool = make_pool(ScriptedDialer(), max_connections=2, max_waiters=0)
    a, b = await pool.acquire(), await pool.acquire()
    with pytest.raises(PoolExhausted):
        await pool.acquire()
    pool.release(a, True)
    pool.release(b, True)


async def test_a_slot_being_dialled_counts_as_taken():
    dialer = ScriptedDialer("hang")
    pool = make_pool(dialer, max_connections=1)
    dialling = asyncio.create_task(pool.acquire())
    await turn()
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    assert stats(pool) == (0, 0, 1, 1) and dialer.dials == 1
    dialer.let_go()
    conn = await dialling
    pool.release(conn, True)
    assert await waiting is conn


async def test_refused_dial_frees_the_slot_for_the_next_waiter():
    dialer = ScriptedDialer("hang", "accept")
    pool = make_pool(dialer, max_connections=1)
    dialling = asyncio.create_task(pool.acquire())
    await turn()
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    dialer.hanging.popleft().set_exception(ConnectFailed("connect to 10.0.0.1:80 failed: connection refused"))
    with pytest.raises(ConnectFailed) as info:
        await dialling
    assert info.value.written is False
    conn = await waiting  # the waiter dialled with the freed slot
    assert dialer.dials == 2 and stats(pool) == (0, 1, 0, 0)
    pool.release(conn, True)


async def test_cancelled_waiter_leaves_the_queue():
    pool = make_pool(ScriptedDialer(), max_connections=1)
    conn = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert stats(pool) == (0, 1, 0, 0)
    pool.release(conn, True)
    assert stats(pool) == (1, 0, 0, 0)


async def test_waiter_cancelled_just_as_it_was_handed_a_connection_gives_it_back():
    pool = make_pool(ScriptedDialer(), max_connections=1)
    conn = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    pool.release(conn, True)  # handed to the waiter, which has not run yet
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert stats(pool) == (1, 0, 0, 0)
    assert await pool.acquire() is conn


async def test_waiter_cancelled_just_as_it_was_handed_a_slot_gives_it_back():
    dialer = ScriptedDialer()
    pool = make_pool(dialer, max_connections=1)
    conn = await pool.acquire()
    waiting = asyncio.create_task(pool.acquire())
    behind = asyncio.create_task(pool.acquire())
    await turn()
    pool.release(conn, False)  # the slot goes to `waiting`, which is cancelled before it dials
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    got = await behind  # so the slot passed on to the next waiter
    assert dialer.dials == 2 and stats(pool) == (0, 1, 0, 0)
    pool.release(got, True)


async def test_cancelled_dial_frees_its_slot():
    dialer = ScriptedDialer("hang")
    pool = make_pool(dialer, max_connections=1)
    dialling = asyncio.create_task(pool.acquire())
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    dialling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await dialling
    conn = await waiting
    assert stats(pool) == (0, 1, 0, 0)
    pool.release(conn, True)


async def test_connection_the_upstream_closes_while_idle_is_dropped_at_once():
    dialer = ScriptedDialer()
    pool = make_pool(dialer, max_connections=1)
    conn = await pool.acquire()
    pool.release(conn, True)
    dialer.transports[0].peer_closes()
    assert stats(pool) == (0, 0, 0, 0) and pool.statistics().closed == 1
    fresh = await pool.acquire()
    assert fresh is not conn and dialer.dials == 2
    pool.release(fresh, True)


async def test_idle_connection_whose_transport_is_closing_is_never_handed_out():
    dialer = ScriptedDialer()
    pool = make_pool(dialer)
    conn = await pool.acquire()
    pool.release(conn, True)
    dialer.transports[0].closing = True  # the FIN is known to the transport, connection_lost not yet run
    fresh = await pool.acquire()
    assert fresh is not conn and dialer.dials == 2
    pool.release(fresh, True)


async def test_connection_closed_right_after_connect_is_not_reused():
    dialer = ScriptedDialer("close-early")
    pool = make_pool(dialer)
    conn = await pool.acquire()
    assert not conn.usable
    pool.release(conn, True)  # even if called as reusable
    assert stats(pool) == (0, 0, 0, 0)
    assert await pool.acquire() is not conn


async def test_sweep_closes_connections_idle_for_the_idle_time():
    clock = FakeClock()
    dialer = ScriptedDialer()
    pool = make_pool(dialer, clock, idle_time_s=10.0)
    a, b = await pool.acquire(), await pool.acquire()
    pool.release(a, True)
    clock.advance(5)
    pool.release(b, True)
    assert pool.sweep(clock.now() + 4.9) == 0
    assert pool.sweep(clock.now() + 5.0) == 1  # a: idle 10 s
    assert dialer.transports[0].closing and not dialer.transports[1].closing
    assert stats(pool) == (1, 0, 0, 0)
    assert pool.sweep(clock.now() + 10.0) == 1
    assert pool.statistics().closed == 2


async def test_surplus_connections_after_a_burst_are_closed_after_the_idle_time_while_steady_use_keeps_one():
    """A burst of 8 concurrent requests opens 8 connections; then one request a second. Reused
    most-recent-first, the same connection carries them all and the other 7 stay idle until the
    sweep closes them 10 s (idleTimeMs) after the burst. Reused oldest-first, each would carry a
    request every 8 s and none would ever be idle for 10 s (issue #17's soak: descriptors flat)."""
    clock = FakeClock()
    dialer = ScriptedDialer()
    pool = make_pool(dialer, clock, idle_time_s=10.0)
    burst = [await pool.acquire() for _ in range(8)]
    for conn in burst:
        pool.release(conn, True)
    carriers: set[UpstreamConnection] = set()
    for second in range(1, 16):
        clock.advance(1.0)
        conn = await pool.acquire()
        carriers.add(conn)
        pool.release(conn, True)
        pool.sweep(clock.now())
        expected_idle = 8 if second < 10 else 1
        assert stats(pool) == (expected_idle, 0, 0, 0), second
    assert len(carriers) == 1 and dialer.dials == 8
    assert [t.closing for t in dialer.transports].count(True) == 7
    assert pool.statistics().closed == 7


async def test_fresh_acquire_at_the_limit_replaces_the_oldest_idle_connection():
    dialer = ScriptedDialer()
    pool = make_pool(dialer, max_connections=2)
    a, b = await pool.acquire(), await pool.acquire()
    pool.release(a, True)
    fresh = await pool.acquire(fresh=True)
    assert fresh not in (a, b) and dialer.transports[0].closing
    assert stats(pool) == (0, 2, 0, 0)
    pool.release(b, True)
    pool.release(fresh, True)


async def test_close_drains_idle_now_fails_waiters_and_busy_connections_close_when_released():
    dialer = ScriptedDialer()
    pool = make_pool(dialer, max_connections=2)
    busy, idle = await pool.acquire(), await pool.acquire()
    pool.release(idle, True)
    extra = await pool.acquire()  # the idle one again
    waiting = asyncio.create_task(pool.acquire())
    await turn()
    pool.close()
    with pytest.raises(ConnectFailed, match="was removed"):
        await waiting
    drained = asyncio.create_task(pool.wait_drained())
    await turn()
    assert not drained.done()
    pool.release(busy, True)
    pool.release(extra, True)
    await asyncio.wait_for(drained, 1)
    assert all(t.closing for t in dialer.transports)
    assert stats(pool) == (0, 0, 0, 0)
    with pytest.raises(ConnectFailed, match="was removed"):
        await pool.acquire()
    assert pool.is_closed


async def test_dial_completing_after_close_is_closed_and_refused():
    dialer = ScriptedDialer("hang")
    pool = make_pool(dialer)
    dialling = asyncio.create_task(pool.acquire())
    await turn()
    pool.close()
    dialer.let_go()
    with pytest.raises(ConnectFailed, match="was removed"):
        await dialling
    assert dialer.transports[0].closing
    await asyncio.wait_for(pool.wait_drained(), 1)


async def test_wait_drained_returns_at_once_when_nothing_is_busy():
    pool = make_pool(ScriptedDialer())
    pool.close()
    await asyncio.wait_for(pool.wait_drained(), 1)


def test_repr_shows_the_counts():
    async def go() -> str:
        pool = make_pool(ScriptedDialer())
        conn = await pool.acquire()
        text = repr(pool)
        pool.release(conn, True)
        return text

    assert run(go) == "<Pool 10.0.0.1:80 idle=0 busy=1 dialing=0 waiters=0>"


# -- a model check: random operations never break the pool's invariants -------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("acquire"), st.just(0)),
        st.tuples(st.just("release"), st.integers(0, 7)),
        st.tuples(st.just("discard"), st.integers(0, 7)),
        st.tuples(st.just("cancel"), st.integers(0, 7)),
        st.tuples(st.just("lose-idle"), st.integers(0, 7)),
    ),
    max_size=40,
)


@given(ops=operations, max_connections=st.integers(1, 3), max_waiters=st.integers(0, 3))
@settings(max_examples=100, deadline=None)
def test_random_operations_keep_limits_and_fifo_order(ops, max_connections, max_waiters):
    async def go() -> None:
        dialer = ScriptedDialer()
        pool = make_pool(dialer, max_connections=max_connections, max_waiters=max_waiters)
        pending: list[tuple[int, asyncio.Task[UpstreamConnection]]] = []
        held: list[UpstreamConnection] = []
        served: list[int] = []
        ticket = 0
        for op, arg in ops:
            if op == "acquire":
                pending.append((ticket, asyncio.create_task(pool.acquire())))
                ticket += 1
            elif op in ("release", "discard") and held:
                pool.release(held.pop(arg % len(held)), op == "release")
            elif op == "cancel" and pending:
                pending[arg % len(pending)][1].cancel()
            elif op == "lose-idle":
                idle = [
                    t
                    for t, c in zip(dialer.transports, _conns(dialer), strict=True)
                    if c not in held and not t.closing
                ]
                if idle:
                    idle[arg % len(idle)].peer_closes()
            await turn()
            still: list[tuple[int, asyncio.Task[UpstreamConnection]]] = []
            for number, task in pending:
                if not task.done():
                    still.append((number, task))
                elif not task.cancelled() and task.exception() is None:
                    held.append(task.result())
                    served.append(number)
                elif not task.cancelled():
                    assert isinstance(task.exception(), PoolExhausted)
            pending = still
            s = pool.statistics()
            assert s.busy + s.idle + s.dialing <= max_connections
            assert s.waiters <= max_waiters
            assert s.busy == len(held)
            assert len({id(c) for c in held}) == len(held)  # never one connection for two requests
            assert all(c.usable for c in held)
        # liveness: once every holder lets go, every waiter is served in turn
        for _ in range(len(pending) + 1):
            for conn in held:
                pool.release(conn, True)
            held.clear()
            await turn()
            for number, task in pending:
                if task.done() and not task.cancelled() and task.exception() is None:
                    held.append(task.result())
                    served.append(number)
            pending = [(n, t) for n, t in pending if not t.done()]
        assert pending == []
        assert served == sorted(served)  # first come, first served
        for conn in held:
            pool.release(conn, True)

    run(go)


def _conns(dialer: ScriptedDialer) -> list[object]:
    return [t.get_protocol() for t in dialer.transports]
