"""The listener's request-body idle timer and a client leaving, on a fake clock and a fake transport.

The timer is lazy (armed once, re-armed on firing if reads moved the deadline) and armed on the
listener's clock: advancing the fake clock runs it at its exact due time, so the tests assert the
instant a timeout happens, not a window around it.
"""

from __future__ import annotations

import asyncio

from meshd.errors import BodyTimeout
from meshd.http.body import Body
from meshd.http.messages import Request, Response
from meshd.listener import CLIENT_CLOSED_REQUEST, Listener, ListenerLimits, ServerProtocol
from meshd.pipeline.context import RouteContext
from tests.support.clock import FakeClock
from tests.support.transport import FakeTransport, connect

HEAD = b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\n"


class HangingService:
    """Takes each request and answers only when released; records cancellations. With `name`, it
    first names the request's logical service on its route context, as the identify stage does."""

    def __init__(self, name: str = "") -> None:
        self.requests: list[Request] = []
        self.cancelled = 0
        self.release = asyncio.Event()
        self.name = name

    async def __call__(self, ctx: RouteContext) -> Response:
        self.requests.append(ctx.request)
        if self.name:
            ctx.logical_name = self.name
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return Response(200, b"OK", [], Body.of(b"done"))


class Conn:
    def __init__(self, timeout_s: float = 1.0, name: str = "") -> None:
        self.clock = FakeClock()
        self.service = HangingService(name)
        self.observed: list[tuple[str, int, float]] = []
        listener = Listener(
            self.service,
            ListenerLimits(body_idle_timeout_s=timeout_s),
            clock=self.clock,
            observe=lambda name, status, seconds: self.observed.append((name, status, seconds)),
        )
        self.protocol: ServerProtocol = listener.protocol_factory()
        self.transport: FakeTransport = connect(self.protocol)

    def advance(self, seconds: float) -> None:
        """Move the fake clock on; the timers that fall due run, each at its own instant."""
        self.clock.advance(seconds)


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_no_body_timer_for_bodiless_or_whole_body_requests() -> None:
    conn = Conn()
    conn.protocol.data_received(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert conn.protocol._body_timer is None
    conn.service.release.set()
    await _settle()
    conn.protocol.data_received(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n\r\nabc")
    assert conn.protocol._body_timer is None


async def test_body_timer_fires_after_the_configured_silence_not_the_body_duration() -> None:
    conn = Conn(timeout_s=1.0)
    conn.protocol.data_received(HEAD + b"a")
    await _settle()  # the request is being served (its body streams)
    assert len(conn.service.requests) == 1
    conn.clock.advance(0.6)
    conn.protocol.data_received(b"b")
    conn.advance(0.6)  # 1.2 s since the body began, 0.6 s since the last read
    assert conn.transport.take() == b"" and not conn.transport.closing
    assert conn.protocol._body_timer is not None  # re-armed for the moved deadline
    assert conn.clock.pending[0].when == 1000.0 + 0.6 + 1.0  # the last read plus the timeout
    conn.advance(0.399)  # 0.999 s of silence
    assert conn.transport.take() == b"" and not conn.transport.closing
    conn.advance(0.001)  # 1 s of silence, exactly
    written = conn.transport.take()
    assert written.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"l5d-err: request body: nothing received for 1000 ms (bodyIdleTimeoutMs)\r\n" in written
    assert conn.transport.closing
    await _settle()
    assert conn.service.cancelled == 1  # the request (and so its upstream attempt) was cancelled
    assert isinstance(conn.service.requests[0].body.error, BodyTimeout)
    assert (conn.observed[-1][0], conn.observed[-1][1]) == ("_unidentified", 408)


async def test_time_with_reading_paused_by_meshd_does_not_count() -> None:
    conn = Conn(timeout_s=1.0)
    conn.protocol.data_received(HEAD + b"a")
    await _settle()
    conn.protocol.pause_reading()  # back-pressure from the upstream side
    conn.advance(5.0)
    assert conn.transport.take() == b"" and not conn.transport.closing
    assert conn.protocol._body_timer is None  # not re-armed while paused
    conn.protocol.resume_reading()
    assert conn.protocol._body_timer is not None
    conn.advance(0.9)
    assert not conn.transport.closing
    conn.advance(0.099)
    assert not conn.transport.closing
    conn.advance(0.001)  # 1 s since reading resumed, exactly
    assert conn.transport.take().startswith(b"HTTP/1.1 408 ")
    assert conn.transport.closing


async def test_fin_before_the_response_cancels_the_request_and_counts_499() -> None:
    conn = Conn()
    conn.protocol.data_received(b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\nGET /b HTTP/1.1\r\nHost: svc\r\n\r\n")
    await _settle()
    conn.clock.advance(2.0)
    conn.protocol.eof_received()
    await _settle()
    assert conn.transport.closing and conn.transport.take() == b""
    assert conn.service.cancelled == 1
    assert [r.target for r in conn.service.requests] == ["/a"]  # /b, pipelined, was dropped
    assert [(name, status) for name, status, _ in conn.observed] == [("_unidentified", CLIENT_CLOSED_REQUEST)]


async def test_a_client_leaving_an_identified_request_is_counted_under_its_logical_name() -> None:
    # the listener reads the name from the RouteContext it made for the request (`_client_left`),
    # and answers with it when the service returns (`_serve`)
    conn = Conn(name="/svc/up")
    conn.protocol.data_received(b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n")
    await _settle()
    conn.clock.advance(2.0)
    conn.protocol.eof_received()
    await _settle()
    assert conn.service.cancelled == 1
    assert [(name, status) for name, status, _ in conn.observed] == [("/svc/up", CLIENT_CLOSED_REQUEST)]
    assert conn.protocol._route is None  # nothing of the request is kept
    served = Conn(name="/svc/up")
    served.protocol.data_received(b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n")
    served.service.release.set()
    await _settle()
    assert [(name, status) for name, status, _ in served.observed] == [("/svc/up", 200)]
    assert served.protocol._route is None


async def test_fin_on_an_idle_connection_closes_it_and_counts_nothing() -> None:
    conn = Conn()
    conn.protocol.data_received(b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n")
    conn.service.release.set()
    await _settle()
    assert conn.transport.take().startswith(b"HTTP/1.1 200 OK\r\n")
    assert conn.protocol.eof_received() is False  # the transport closes itself
    assert [status for _, status, _ in conn.observed] == [200]


# -- the header and keep-alive idle timers, at their exact instants ---------------------------------
# (Times in 1/1024 s steps, so that the sums are exact floats.)
STEP = 1 / 1024


def open_conn(limits: ListenerLimits) -> tuple[ServerProtocol, FakeTransport, FakeClock, HangingService]:
    clock = FakeClock(start=0.0)
    service = HangingService()
    protocol: ServerProtocol = Listener(service, limits, clock=clock).protocol_factory()
    return protocol, connect(protocol), clock, service


async def test_a_head_in_pieces_gets_its_408_at_the_header_timeout_exactly() -> None:
    protocol, transport, clock, _ = open_conn(ListenerLimits(header_timeout_s=1.0))
    clock.advance(0.5)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: sv")  # the head begins at 0.5 s
    clock.advance(0.5)
    protocol.data_received(b"c\r\nX-Slow: 1\r\n")  # progress does not move the deadline
    clock.advance(0.5 - STEP)
    assert transport.take() == b"" and not transport.closing
    clock.advance(STEP)  # 1.5 s: the head began 1 s ago
    written = transport.take()
    assert written.startswith(b"HTTP/1.1 408 ")
    assert transport.closing


async def test_the_header_timer_applies_the_deadline_of_the_head_pending_when_it_fires() -> None:
    protocol, transport, clock, service = open_conn(ListenerLimits(header_timeout_s=1.0))
    protocol.data_received(b"GET /1 HTTP/1.1\r\nHost: svc\r\n")  # at 0: the timer is armed for 1 s
    clock.advance(0.25)
    protocol.data_received(b"\r\n")
    service.release.set()
    await _settle()
    assert transport.take().startswith(b"HTTP/1.1 200 OK\r\n")
    clock.advance(0.5)
    protocol.data_received(b"GET /2 HTTP/1.1\r\nHost: svc\r\n")  # the second head begins at 0.75 s
    clock.advance(0.5)  # the timer fired at 1 s and moved itself to 1.75 s
    assert not transport.closing and clock.next_due() == 1.75
    clock.advance(0.5 - STEP)
    assert not transport.closing
    clock.advance(STEP)
    assert transport.take().startswith(b"HTTP/1.1 408 ") and transport.closing


async def test_an_idle_keep_alive_connection_closes_at_the_idle_timeout_exactly() -> None:
    protocol, transport, clock, service = open_conn(ListenerLimits(idle_timeout_s=2.0))
    clock.advance(1.0)
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")  # busy at 1 s
    clock.advance(5.0)  # the idle timer fires at 2 s while busy: nothing happens
    assert not transport.closing
    service.release.set()
    await _settle()  # answered at 6 s: idle from now
    assert transport.take().startswith(b"HTTP/1.1 200 OK\r\n")
    clock.advance(2.0 - STEP)
    assert not transport.closing
    clock.advance(STEP)  # 2 s idle, exactly
    assert transport.closing and transport.take() == b""
