"""`UpstreamConnection.send_to`, the fast path's send (meshd/fastpath.py): the receiver is told of the
response head once the read that brought it is parsed (a small body has ended by then), of a failure
after the connection was released, exactly once, and never after `abort()`."""

from __future__ import annotations

from meshd.errors import MeshdError, ResponseHeadTimeout, UpstreamFailed
from meshd.http.body import Body
from meshd.http.messages import Request, Response
from meshd.pool.connection import HeadReceiver, StaleConnection, UpstreamConnection
from tests.support.clock import FakeClock
from tests.support.transport import FakeTransport, connect


class Receiver(HeadReceiver):
    def __init__(self, conn: UpstreamConnection, releases: list[bool]) -> None:
        self.conn = conn
        self.releases = releases
        self.events: list[object] = []

    def head_received(self, response: Response) -> None:
        # what the fast path reads at this moment: the body, and whether the connection is back
        self.events.append(("head", response.status, response.body.ended, list(self.releases)))

    def head_failed(self, error: MeshdError) -> None:
        self.events.append(("failed", type(error).__name__, list(self.releases)))


def open_conn(head_s: float | None = 2.0) -> tuple[UpstreamConnection, FakeTransport, FakeClock, list[bool]]:
    releases: list[bool] = []
    clock = FakeClock()
    conn = UpstreamConnection(
        "up:80", lambda c, reusable: releases.append(reusable), lambda c: None,
        response_head_timeout_s=head_s, clock=clock,
    )
    return conn, connect(conn), clock, releases


def get() -> Request:
    return Request("GET", "/", "1.1", [], Body.empty())


async def test_a_whole_response_is_told_once_its_read_is_parsed_with_its_body_ended():
    conn, transport, _, releases = open_conn()
    receiver = Receiver(conn, releases)
    conn.send_to(get(), b"GET / HTTP/1.1\r\n\r\n", receiver)
    assert bytes(transport.written) == b"GET / HTTP/1.1\r\n\r\n"
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    # the body had ended and the connection was already back in its pool (reusable)
    assert receiver.events == [("head", 200, True, [True])]


async def test_a_head_whose_body_follows_is_told_at_the_end_of_its_read():
    conn, _, _, releases = open_conn()
    receiver = Receiver(conn, releases)
    conn.send_to(get(), b"GET / HTTP/1.1\r\n\r\n", receiver)
    conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
    assert receiver.events == [("head", 200, False, [])]
    conn.data_received(b"!!")
    assert receiver.events == [("head", 200, False, [])]  # told once
    assert releases == [True]


async def test_a_connection_closed_before_a_byte_is_stale_on_reuse_and_told_after_release():
    conn, _, _, releases = open_conn()
    first = Receiver(conn, releases)
    conn.send_to(get(), b"GET / HTTP/1.1\r\n\r\n", first)
    conn.data_received(b"HTTP/1.1 204 No Content\r\n\r\n")
    second = Receiver(conn, releases)
    conn.send_to(get(), b"GET / HTTP/1.1\r\n\r\n", second)
    conn.connection_lost(None)
    assert second.events == [("failed", StaleConnection.__name__, [True, False])]


async def test_the_head_timeout_is_told_as_a_failure():
    conn, transport, clock, releases = open_conn(head_s=2.0)
    receiver = Receiver(conn, releases)
    conn.send_to(get(), b"GET / HTTP/1.1\r\n\r\n", receiver)
    clock.advance(2.0)
    assert receiver.events == [("failed", ResponseHeadTimeout.__name__, [False])]
    assert transport.aborted
    conn.connection_lost(None)
    assert len(receiver.events) == 1


async def test_a_malformed_response_is_told_as_a_failure():
    conn, _, _, releases = open_conn()
    receiver = Receiver(conn, releases)
    conn.send_to(get(), b"GET / HTTP/1.1\r\n\r\n", receiver)
    conn.data_received(b"NOT HTTP AT ALL\r\n\r\n")
    assert receiver.events == [("failed", UpstreamFailed.__name__, [False])]


async def test_after_abort_nothing_is_told():
    conn, transport, _, releases = open_conn()
    receiver = Receiver(conn, releases)
    conn.send_to(get(), b"GET / HTTP/1.1\r\n\r\n", receiver)
    conn.abort()
    conn.connection_lost(None)
    assert receiver.events == [] and transport.aborted and releases == [False]
