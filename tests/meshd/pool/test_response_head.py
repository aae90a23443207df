"""An upstream connection on an injected clock and an in-memory transport: the response head timeout
(`client.responseHeadTimeoutMs`), a request body the upstream stops reading (bounded by
`client.responseIdleTimeoutMs`), and the response head checks (`client.maxResponseHeaders`, an
impossible Content-Length). The real-socket cases are in tests/integration/test_failures.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from meshd.errors import AttemptTimeout, ResponseHeadTimeout, UpstreamFailed
from meshd.http.body import Body
from meshd.http.codec import MAX_CONTENT_LENGTH
from meshd.http.messages import Request, Response
from meshd.pipeline.retries import classify_error
from meshd.pool.connection import UpstreamConnection
from meshd.retry.classifiers import ResponseClass, RetryableIdempotent5XXConfig
from tests.support.clock import FakeClock
from tests.support.transport import FakeTransport, connect

HEAD_S = 2.0
IDLE_S = 0.5
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Conn:
    conn: UpstreamConnection
    transport: FakeTransport
    clock: FakeClock  # counts the timers armed (`calls`) and pending (`armed`)
    releases: list[bool]


def open_conn(*, head_s: float | None = HEAD_S, idle_s: float | None = IDLE_S, max_headers: int = 100) -> Conn:
    releases: list[bool] = []
    clock = FakeClock()
    conn = UpstreamConnection(
        "up:80", lambda c, reusable: releases.append(reusable), lambda c: None,
        response_idle_timeout_s=idle_s, response_head_timeout_s=head_s, max_headers=max_headers, clock=clock,
    )
    return Conn(conn, connect(conn), clock, releases)


def get(c: Conn) -> asyncio.Future[Response]:
    return c.conn.send(Request("GET", "/", "1.1", [], Body.empty()), b"GET / HTTP/1.1\r\n\r\n")


def post(c: Conn) -> tuple[Body, asyncio.Future[Response]]:
    """A POST whose 10-byte body the client is still sending."""
    body = Body(length=10)
    future = c.conn.send(Request("POST", "/", "1.1", [], body), b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
    return body, future


# -- responseHeadTimeoutMs --------------------------------------------------------------------------

async def test_no_response_head_within_the_timeout_fails_the_attempt_with_504():
    c = open_conn()
    future = get(c)
    c.clock.advance(HEAD_S - 0.01)
    assert not future.done()
    assert c.clock.next_due() == 1000.0 + HEAD_S  # the request was written at 1000.0
    c.clock.advance(0.01)  # the head timeout, exactly
    assert future.done()
    with pytest.raises(ResponseHeadTimeout) as info:
        await future
    error = info.value
    assert (error.status, error.written, error.kind) == (504, True, "response_head_timeout")
    assert isinstance(error, AttemptTimeout)  # counted and retried as an attempt timeout
    assert error.l5d_err == "up:80 sent no response head within 2000 ms of the request (responseHeadTimeoutMs)"
    assert c.transport.aborted and c.releases == [False]


async def test_written_so_a_get_may_be_retried_and_a_post_may_not():
    classifier = RetryableIdempotent5XXConfig().build()
    error = ResponseHeadTimeout("up:80 sent no response head")
    assert classify_error(classifier, "GET", error) is ResponseClass.RETRYABLE_FAILURE
    assert classify_error(classifier, "POST", error) is not ResponseClass.RETRYABLE_FAILURE


async def test_a_head_just_in_time_passes():
    c = open_conn()
    future = get(c)
    c.clock.advance(HEAD_S - 0.01)
    c.conn.data_received(OK)
    assert (await future).status == 200 and c.releases == [True]


async def test_the_timer_is_armed_once_per_connection_not_per_request():
    c = open_conn()
    for _ in range(50):  # 50 requests on one keep-alive connection over 5 s, each answered in 0.1 s
        future = get(c)
        c.clock.advance(0.1)
        c.conn.data_received(OK)
        assert (await future).status == 200
    assert c.releases == [True] * 50
    # One timer, armed for the first request; each time it fires (every 2 s or so) it moves itself
    # to the deadline of the request then waiting: 3 arms for 50 requests, not 50.
    assert c.clock.calls == 3 and c.clock.armed == 1


async def test_a_timer_that_fires_while_the_connection_is_idle_is_not_rearmed_until_the_next_request():
    c = open_conn()
    future = get(c)
    c.conn.data_received(OK)
    await future
    c.clock.advance(HEAD_S * 5)  # idle in the pool: the timer fires and lets go
    assert c.clock.armed == 0 and not c.transport.aborted
    future = get(c)
    assert c.clock.armed == 1
    c.clock.advance(HEAD_S + 0.01)
    with pytest.raises(ResponseHeadTimeout):
        await future


async def test_a_long_upload_is_not_cut_the_timeout_starts_when_the_body_is_written():
    c = open_conn(idle_s=None)
    body, future = post(c)
    for _ in range(10):  # the client sends its body over 10 x the head timeout
        c.clock.advance(HEAD_S)
        body.feed(b"x")
    assert not future.done() and not c.transport.aborted
    c.clock.advance(HEAD_S - 0.01)
    assert not future.done()
    assert c.clock.calls == 0  # nothing armed while the body is being sent
    # the last byte: the request is fully written and the head is due HEAD_S from now
    c.clock.advance(1.0)
    body.end()
    c.clock.advance(HEAD_S - 0.01)
    assert not future.done()
    c.clock.advance(0.02)
    with pytest.raises(ResponseHeadTimeout):
        await future


async def test_an_early_response_to_an_unfinished_upload_arms_no_head_timer():
    c = open_conn(idle_s=None)
    body, future = post(c)
    c.conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert (await future).status == 200
    body.feed(b"x" * 10)
    body.end()
    assert c.clock.calls == 0 and c.releases == [True]


async def test_no_head_timeout_configured_arms_no_timer():
    c = open_conn(head_s=None)
    future = get(c)
    c.clock.advance(3600)
    assert not future.done() and c.clock.calls == 0


# -- a request body the upstream holds (responseIdleTimeoutMs) ------------------------------------

async def test_an_upstream_that_stops_reading_the_request_body_fails_it_after_the_idle_timeout():
    c = open_conn()
    body, future = post(c)
    body.feed(b"12345")
    c.conn.pause_writing()  # the upstream stopped reading: meshd's socket buffer is full
    c.clock.advance(IDLE_S - 0.01)
    assert not future.done()
    c.clock.advance(0.02)
    with pytest.raises(UpstreamFailed) as info:
        await future
    assert info.value.status == 502 and info.value.written
    assert info.value.l5d_err == "up:80 read nothing of the request body for 500 ms (responseIdleTimeoutMs)"
    assert c.transport.aborted and c.releases == [False]


async def test_an_upstream_that_reads_slowly_is_not_cut():
    c = open_conn()
    body, future = post(c)
    for _ in range(10):  # paused, then drained a little, every 0.4 s: each stall under the limit
        c.conn.pause_writing()
        c.clock.advance(IDLE_S - 0.1)
        c.conn.resume_writing()
        body.feed(b"x")
    assert not future.done() and not c.transport.aborted
    c.conn.data_received(OK)
    assert (await future).status == 200


async def test_a_response_arriving_while_the_body_is_held_is_progress():
    c = open_conn()
    body, future = post(c)
    c.conn.pause_writing()
    c.conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    response = await future
    for byte in b"hell":  # the upstream answers steadily while it does not read
        c.clock.advance(IDLE_S - 0.1)
        c.conn.data_received(bytes([byte]))
    assert response.body.error is None and not c.transport.aborted
    c.clock.advance(IDLE_S + 0.01)  # then neither direction moves
    assert isinstance(response.body.error, UpstreamFailed) and c.transport.aborted


async def test_the_client_not_sending_its_body_is_not_the_upstreams_fault():
    c = open_conn(head_s=None)
    body, future = post(c)
    c.clock.advance(IDLE_S * 10)  # meshd has nothing to write: writes are not paused
    assert not future.done() and c.clock.calls == 0


# -- response head checks -----------------------------------------------------------------------------

def head_with(count: int) -> bytes:
    """A response head with `count` header lines in all (Content-Length included)."""
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(count - 1))
    return b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok"


async def test_a_response_with_max_headers_passes():
    c = open_conn(max_headers=100)
    future = get(c)
    c.conn.data_received(head_with(100))
    assert (await future).status == 200


async def test_a_response_with_more_headers_than_the_limit_is_refused_and_the_connection_closed():
    c = open_conn(max_headers=100)
    future = get(c)
    c.conn.data_received(head_with(101))
    with pytest.raises(UpstreamFailed) as info:
        await future
    assert info.value.l5d_err == "response from up:80 has more than 100 headers (maxResponseHeaders)"
    assert c.transport.aborted and c.releases == [False]


async def test_the_largest_signed_64_bit_content_length_is_accepted():
    c = open_conn()
    future = get(c)
    c.conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % MAX_CONTENT_LENGTH)
    assert (await future).body.length == 2**63 - 1


@pytest.mark.parametrize("length", [2**63, 2**64 - 1])
async def test_a_content_length_no_client_could_hold_is_refused(length: int):
    c = open_conn()
    future = get(c)
    c.conn.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\nhello" % length)
    with pytest.raises(UpstreamFailed) as info:
        await future
    assert info.value.l5d_err == f"malformed response from up:80: Content-Length {length} exceeds 2**63-1"
    assert c.transport.aborted
