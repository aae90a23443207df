"""The HTTP/2 upstream pool (meshd/pool/h2.py) against a real `h2` library server on loopback.

Time is a FakeClock: PING intervals and timeouts are driven by `sweep(now)` at exact instants.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from meshd.errors import ResponseHeadTimeout, StreamRefused
from meshd.http.body import Body
from meshd.http.messages import Request
from meshd.http2.codec import REFUSED_STREAM, H2Settings
from meshd.http2.guard import H2Stats
from meshd.pool.dialer import TcpDialer
from meshd.pool.h2 import MAX_STREAM_ID, H2Pool, H2PoolSettings
from tests.support.clock import FakeClock
from tests.support.h2peer import H2Reply, H2Server
from tests.support.waiting import wait_until

# each test runs on both HTTP/2 codec backends (tests/conftest.py h2_codec)
pytestmark = pytest.mark.usefixtures("h2_codec")

HEAD = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/")]


async def _ok(reply: H2Reply) -> None:
    reply.head(200, [(b"content-length", b"2")])
    await reply.data(b"ok", end_stream=True)


@pytest.fixture
async def server() -> AsyncIterator[H2Server]:
    up = await H2Server(_ok).start()
    yield up
    await up.close()


def _pool(up: H2Server, clock: FakeClock, stats: H2Stats, codec: H2Settings | None = None) -> H2Pool:
    return H2Pool("127.0.0.1", up.port, dialer=TcpDialer(1.0), clock=clock, stats=stats,
                  settings=H2PoolSettings(settings=codec or H2Settings(), ping_interval_s=10.0,
                                          ping_timeout_s=5.0, idle_time_s=600.0))


async def _get(pool: H2Pool) -> bytes:
    response = await pool.send(Request("GET", "/", "2", [], Body.empty(), host="svc"), HEAD)
    chunks: list[bytes] = []
    done = asyncio.get_running_loop().create_future()

    class Sink:
        def on_data(self, data: bytes) -> None:
            chunks.append(data)

        def on_end(self, trailers: object) -> None:
            done.set_result(None)

        def on_error(self, exc: BaseException) -> None:
            done.set_exception(exc)

    response.body.attach(Sink())
    await asyncio.wait_for(done, 5)
    return b"".join(chunks)


async def test_a_quiet_connection_is_pinged_and_kept_when_it_answers(server):
    clock, stats = FakeClock(), H2Stats()
    pool = _pool(server, clock, stats)
    assert await _get(pool) == b"ok"
    conn = pool.conns[0]
    pool.sweep(clock.now() + 5.0)
    assert conn.ping_sent < 0  # not quiet long enough
    clock.advance(10.0)
    pool.sweep(clock.now())
    assert conn.ping_sent == clock.now()
    await wait_until(lambda: conn.ping_sent < 0, timeout=5, message="the PING's ACK")
    clock.advance(5.0)
    pool.sweep(clock.now())
    assert pool.conns == [conn] and stats.ping_timeouts == 0
    pool.close()


async def test_an_unanswered_ping_closes_the_connection_and_the_next_request_dials_again(server):
    clock, stats = FakeClock(), H2Stats()
    pool = _pool(server, clock, stats)
    assert await _get(pool) == b"ok"
    conn = pool.conns[0]
    transport = server.conns[0].transport
    assert transport is not None
    transport.pause_reading()  # the upstream hangs: it reads nothing, answers nothing
    clock.advance(10.0)
    pool.sweep(clock.now())
    clock.advance(4.9)
    pool.sweep(clock.now())
    assert pool.conns == [conn]
    clock.advance(0.1)
    pool.sweep(clock.now())
    assert pool.conns == [] and conn.closed and stats.ping_timeouts == 1
    assert await _get(pool) == b"ok"
    assert pool.opened == 2
    pool.close()


async def test_a_connection_out_of_stream_ids_is_replaced(server):
    clock, stats = FakeClock(), H2Stats()
    # each connection starts two ids from the end: one request uses the last id it may
    pool = _pool(server, clock, stats, H2Settings(first_stream_id=MAX_STREAM_ID - 2))
    assert await _get(pool) == b"ok"
    old = pool.conns[0]
    assert old.streams == {} and pool.opened == 1
    assert await _get(pool) == b"ok"
    assert pool.opened == 2
    await wait_until(lambda: old.closed, timeout=5, message="the exhausted connection to close")
    assert pool.conns != [old]
    pool.close()


async def test_refused_stream_is_a_never_written_error_and_counted():
    async def refuse(reply: H2Reply) -> None:
        reply.reset(REFUSED_STREAM)

    up = await H2Server(refuse).start()
    try:
        clock, stats = FakeClock(), H2Stats()
        pool = _pool(up, clock, stats)
        with pytest.raises(StreamRefused) as refused:
            await _get(pool)
        assert refused.value.written is False
        assert stats.streams_refused == 1
        pool.close()
    finally:
        await up.close()


async def test_streams_multiplex_on_one_connection_up_to_the_peer_limit():
    release = asyncio.Event()

    async def slow(reply: H2Reply) -> None:
        await release.wait()
        await _ok(reply)

    up = await H2Server(slow, settings={0x3: 3}).start()
    try:
        pool = _pool(up, FakeClock(), H2Stats())
        first = asyncio.ensure_future(_get(pool))
        await wait_until(lambda: len(up.received) == 1, timeout=5)  # the upstream's SETTINGS are known now
        rest = [asyncio.ensure_future(_get(pool)) for _ in range(4)]
        await wait_until(lambda: len(up.received) == 5, timeout=5)
        assert len(pool.conns) == 2
        assert sorted(len(c.streams) for c in pool.conns) == [2, 3]
        stats = pool.statistics()
        assert (stats.busy, stats.idle) == (2, 0)
        release.set()
        assert await asyncio.gather(first, *rest) == [b"ok"] * 5
        pool.close()
    finally:
        await up.close()


async def test_a_stream_without_a_response_head_times_out_and_is_reset():
    async def silent(reply: H2Reply) -> None:
        await asyncio.Event().wait()

    up = await H2Server(silent).start()
    try:
        clock, stats = FakeClock(), H2Stats()
        pool = H2Pool("127.0.0.1", up.port, dialer=TcpDialer(1.0), clock=clock, stats=stats,
                      settings=H2PoolSettings(response_head_timeout_s=2.0, ping_interval_s=100.0))
        sending = asyncio.ensure_future(_get(pool))
        await wait_until(lambda: len(up.received) == 1, timeout=5)
        clock.advance(1.9)
        pool.sweep(clock.now())
        assert not sending.done()
        clock.advance(0.1)
        pool.sweep(clock.now())
        with pytest.raises(ResponseHeadTimeout):
            await sending
        await wait_until(lambda: bool(up.resets), timeout=5, message="the stream reset at the upstream")
        assert pool.conns and not pool.conns[0].streams  # the connection stays, the stream is gone
        pool.close()
    finally:
        await up.close()


async def test_a_response_body_the_upstream_stops_sending_fails_after_the_idle_timeout():
    async def stall(reply: H2Reply) -> None:
        reply.head(200)
        await reply.data(b"part")
        await asyncio.Event().wait()

    up = await H2Server(stall).start()
    try:
        clock = FakeClock()
        pool = H2Pool("127.0.0.1", up.port, dialer=TcpDialer(1.0), clock=clock, stats=H2Stats(),
                      settings=H2PoolSettings(response_idle_timeout_s=3.0, ping_interval_s=100.0))
        response = await pool.send(Request("GET", "/", "2", [], Body.empty(), host="svc"), HEAD)
        failed = asyncio.get_running_loop().create_future()

        class Sink:
            def on_data(self, data: bytes) -> None:
                pass

            def on_end(self, trailers: object) -> None:
                failed.set_result(None)

            def on_error(self, exc: BaseException) -> None:
                failed.set_result(exc)

        response.body.attach(Sink())
        await wait_until(lambda: response.body.received == 4, timeout=5)
        clock.advance(2.9)
        pool.sweep(clock.now())
        assert not failed.done()
        clock.advance(0.1)
        pool.sweep(clock.now())
        error = await asyncio.wait_for(failed, 5)
        assert "responseIdleTimeoutMs" in str(error)
        await wait_until(lambda: bool(up.resets), timeout=5, message="the stream reset at the upstream")
        pool.close()
    finally:
        await up.close()


async def test_waiting_for_a_stream_counts_against_max_pending_requests():
    from meshd.errors import CircuitOpen
    from meshd.pool.pool import Pending

    release = asyncio.Event()

    async def slow(reply: H2Reply) -> None:
        await release.wait()
        await _ok(reply)

    up = await H2Server(slow, settings={0x3: 1}).start()
    try:
        pending = Pending("/#/fs/svc", 1)
        pool = H2Pool("127.0.0.1", up.port, dialer=TcpDialer(1.0), clock=FakeClock(), stats=H2Stats(),
                      settings=H2PoolSettings(max_connections=1, queue_timeout_s=None), pending=pending)
        first = asyncio.ensure_future(_get(pool))
        await wait_until(lambda: len(up.received) == 1, timeout=5)
        second = asyncio.ensure_future(_get(pool))  # waits for the one stream the upstream allows
        await wait_until(lambda: pending.count == 1, timeout=5)
        with pytest.raises(CircuitOpen):
            await _get(pool)
        assert pending.overflows == 1
        release.set()
        assert await asyncio.gather(first, second) == [b"ok", b"ok"]
        assert pending.count == 0
        pool.close()
    finally:
        await up.close()


class _CountingTransport:
    """The connection's real transport, with its writes counted."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self.inner = inner
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1
        self.inner.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


async def test_requests_sent_in_one_loop_iteration_leave_in_one_write(server):
    pool = _pool(server, FakeClock(), H2Stats())
    assert await _get(pool) == b"ok"  # connected, the upstream's SETTINGS known
    conn = pool.conns[0]
    counting = _CountingTransport(conn._transport)  # type: ignore[arg-type]
    conn._transport = counting  # type: ignore[assignment]
    assert await asyncio.gather(*(_get(pool) for _ in range(10))) == [b"ok"] * 10
    assert pool.opened == 1
    # ten HEADERS frames and the WINDOW_UPDATEs for the answers: a few writes, not one per frame
    assert counting.writes <= 4, counting.writes
    pool.close()
