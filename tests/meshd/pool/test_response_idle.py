"""The response idle timeout of an upstream connection (`client.responseIdleTimeoutMs`), on the
fake clock (tests/support/clock.py), which runs each timer at its exact due time: the timer is re-armed while body bytes keep coming, fires after a silence, and
does not count time the client spends not reading (back-pressure). The real-socket case, with a
stalled upstream and the client's connection cut, is in tests/integration/test_failures.py."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from meshd.http.body import Body, Trailers
from meshd.http.messages import Request, Response
from meshd.pool.connection import UpstreamConnection
from tests.support.clock import FakeClock
from tests.support.transport import FakeTransport, connect

TIMEOUT_S = 0.3


class _Collect:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.data = b""
        self.ended = False
        self.error: BaseException | None = None
        self.error_at: float | None = None  # the fake clock's reading when the body failed

    def on_data(self, data: bytes) -> None:
        self.data += data

    def on_end(self, trailers: Trailers | None) -> None:
        self.ended = True

    def on_error(self, exc: BaseException) -> None:
        self.error = exc
        self.error_at = self.clock.now()


@dataclass
class Exchange:
    conn: UpstreamConnection
    transport: FakeTransport
    clock: FakeClock
    releases: list[bool]
    response: Response
    body: _Collect


async def start(first: bytes) -> Exchange:
    """Send a GET and feed `first` (a head and some body) from the upstream."""
    releases: list[bool] = []
    clock = FakeClock()
    conn = UpstreamConnection(
        "up:80", lambda c, reusable: releases.append(reusable), lambda c: None,
        response_idle_timeout_s=TIMEOUT_S, response_head_timeout_s=None,  # the head timer: test_response_head.py
        clock=clock,
    )
    transport = connect(conn)
    future = conn.send(Request("GET", "/", "1.1", [], Body.empty()), b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(first)
    response = await future
    body = _Collect(clock)
    response.body.attach(body)
    return Exchange(conn, transport, clock, releases, response, body)


async def test_silence_after_part_of_the_body_fails_it_at_the_timeout():
    ex = await start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    assert ex.clock.armed == 1
    ex.clock.advance(TIMEOUT_S - 0.01)
    assert ex.body.error is None
    ex.clock.advance(0.02)
    assert ex.body.data == b"abc" and not ex.body.ended
    assert str(ex.body.error) == "up:80 sent nothing of the response body for 300 ms (responseIdleTimeoutMs)"
    assert ex.body.error_at == 1000.0 + TIMEOUT_S  # at the timeout exactly, from the last byte
    assert ex.transport.aborted and ex.releases == [False]


async def test_a_slow_but_steady_body_is_not_cut():
    ex = await start(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    for byte in b"hello":  # 5 x 200 ms: 1 s in all, each gap under the 300 ms timeout
        ex.clock.advance(0.2)
        ex.conn.data_received(bytes([byte]))
    assert ex.body.error is None and ex.body.ended and ex.body.data == b"hello"
    assert ex.releases == [True] and ex.clock.armed == 0  # the timer ended with the response


async def test_time_the_client_is_not_reading_does_not_count():
    ex = await start(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    ex.conn.pause_reading()  # the client's socket is full: meshd stops reading the upstream
    ex.clock.advance(10 * TIMEOUT_S)
    assert ex.body.error is None and not ex.transport.aborted
    ex.conn.resume_reading()
    resumed = ex.clock.now()
    ex.clock.advance(TIMEOUT_S - 0.01)
    assert ex.body.error is None
    ex.clock.advance(0.02)  # silence after reading resumed does count
    assert ex.body.error is not None and ex.transport.aborted
    assert ex.body.error_at == pytest.approx(resumed + TIMEOUT_S, abs=1e-9)  # exactly (but float sums)


async def test_a_response_that_arrives_whole_arms_no_timer():
    ex = await start(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert ex.body.ended and ex.clock.armed == 0 and ex.releases == [True]


async def test_no_timeout_configured_arms_no_timer():
    clock = FakeClock()
    conn = UpstreamConnection(
        "up:80", lambda c, r: None, lambda c: None, response_idle_timeout_s=None, response_head_timeout_s=None,
        clock=clock,
    )
    connect(conn)
    future = conn.send(Request("GET", "/", "1.1", [], Body.empty()), b"GET / HTTP/1.1\r\n\r\n")
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    await future
    assert clock.armed == 0
