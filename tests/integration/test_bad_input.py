"""Bad input from downstream: answered with 4xx + `l5d-err`, the connection closed, nothing sent upstream.

Every case here is a request meshd must refuse on its own: malformed request lines and headers,
the request-smuggling shapes (Content-Length with Transfer-Encoding, conflicting lengths, a
Transfer-Encoding whose final coding is not chunked), bad chunk sizes, header sections over the
configured limit, headers that arrive too slowly. The upstream is registered and healthy, so an
`up.connections == 0` proves meshd refused the request itself and never let a byte of it through.
"""

from __future__ import annotations

import asyncio

import pytest

from meshd.listener import ServerProtocol
from tests.conftest import Mesh
from tests.support.client import RawConnection, RawResponse, build_request
from tests.support.clock import FakeClock, FakeTimer
from tests.support.waiting import wait_until

HOST = b"Host: svc\r\n"

#: (id, raw bytes, expected status, a phrase expected in l5d-err)
SMUGGLING_AND_FRAMING: list[tuple[str, bytes, int, str]] = [
    (
        "content-length-then-transfer-encoding",
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
        400,
        "transfer-encoding",
    ),
    (
        "transfer-encoding-then-content-length",
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
        400,
        "content-length",
    ),
    (
        "duplicate-content-length-different-values",
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
        "content-length",
    ),
    (
        "content-length-list",
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5, 5\r\n\r\nhello",
        400,
        "content-length",
    ),
    (
        "negative-content-length",
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n",
        400,
        "content-length",
    ),
    (
        "content-length-overflow",
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 99999999999999999999999\r\n\r\n",
        400,
        "content-length",
    ),
    (
        "chunked-not-last-coding",
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
        "transfer-encoding",
    ),
    (
        "unknown-transfer-coding",
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: gzip\r\n\r\nabc",
        400,
        "transfer-encoding",
    ),
    (
        "transfer-encoding-identity",
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: identity\r\n\r\n",
        400,
        "transfer-encoding",
    ),
    (
        "duplicate-transfer-encoding",
        b"POST / HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "transfer-encoding",
    ),
    (
        "transfer-encoding-on-http-1.0",
        b"POST / HTTP/1.0\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
        "transfer-encoding",
    ),
    (
        "invalid-chunk-size",
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
        "chunk size",
    ),
    (
        "chunk-size-overflow",
        b"POST / HTTP/1.1\r\n"
        + HOST
        + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        400,
        "chunk size",
    ),
    (
        "chunk-data-longer-than-its-size",
        b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
        400,
        "chunk",
    ),
]

MALFORMED_HEAD: list[tuple[str, bytes, int, str]] = [
    ("obs-fold", b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\r\n b\r\n\r\n", 400, "malformed"),
    ("bare-lf-line-endings", b"GET / HTTP/1.1\nHost: svc\n\n", 400, "malformed"),
    ("bare-lf-after-a-header", b"GET / HTTP/1.1\r\nHost: svc\nX: y\r\n\r\n", 400, "malformed"),
    ("nul-in-header-value", b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", 400, "header value"),
    ("space-in-header-name", b"GET / HTTP/1.1\r\n" + HOST + b"X A: b\r\n\r\n", 400, "header"),
    (
        "space-before-colon",
        b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length : 5\r\n\r\nhello",
        400,
        "header",
    ),
    ("space-in-request-target", b"GET /a b HTTP/1.1\r\n" + HOST + b"\r\n", 400, "malformed"),
    # (binary garbage that is not a TLS handshake: a TLS ClientHello, `\x16\x03...`, is closed
    # without a 400, which a TLS client could not read; tests/integration/test_tls_server.py)
    ("garbage-request-line", b"\x17\x03\x01\x00\xa5\x01\x00\x00\r\n\r\n", 400, "method"),
    ("unknown-http-version", b"GET / HTTP/9.9\r\n" + HOST + b"\r\n", 400, "version"),
    # llhttp parses these two; neither is HTTP/1 (nginx answers 505 too)
    ("http-2.0-request-line", b"GET / HTTP/2.0\r\n" + HOST + b"\r\n", 505, "http/2.0 is not supported"),
    ("http-0.9-request-line", b"GET / HTTP/0.9\r\n" + HOST + b"\r\n", 505, "http/0.9 is not supported"),
    (
        "more-header-fields-than-maxheaders",
        b"GET / HTTP/1.1\r\n" + HOST + b"".join(b"X-F%d: v\r\n" % i for i in range(100)) + b"\r\n",
        431,
        "more than 100 header fields (maxheaders)",
    ),
    ("duplicate-host", b"GET / HTTP/1.1\r\nHost: svc\r\nHost: other\r\n\r\n", 400, "host"),
    ("absent-host-on-http-1.1", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "host header is absent"),
]


async def _refused(port: int, data: bytes) -> tuple[RawResponse, bool]:
    """Send `data`, read meshd's answer, and report whether meshd then closed the connection."""
    conn = await RawConnection.open(port)
    try:
        await conn.send(data)
        response = await asyncio.wait_for(conn.read_response(), 5)
        closed = await asyncio.wait_for(conn.is_closed_by_peer(), 5)
    finally:
        await conn.close()
    return response, closed


@pytest.mark.parametrize(
    ("data", "status", "phrase"),
    [pytest.param(d, s, p, id=i) for i, d, s, p in SMUGGLING_AND_FRAMING + MALFORMED_HEAD],
)
async def test_bad_request_is_refused_closed_and_never_reaches_the_upstream(
    make_mesh, make_upstream, data, status, phrase
):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    response, closed = await _refused(mesh.port, data)
    assert response.status == status
    err = response.header("l5d-err")
    assert err is not None and phrase in err.lower()
    assert response.header("connection") == "close"
    assert closed
    assert up.connections == 0 and up.requests == 0


async def test_smuggled_request_after_a_refused_one_is_never_answered(make_mesh, make_upstream):
    """CL.TE smuggling: the bytes after the refused request must not be read as a second request."""
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(
        b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: svc\r\n\r\n"
    )
    first = await asyncio.wait_for(conn.read_response(), 5)
    assert first.status == 400
    assert await asyncio.wait_for(conn.read_eof(), 5) == b""
    await conn.close()
    assert up.connections == 0


async def test_good_requests_before_a_bad_one_are_answered_then_the_connection_closes(
    make_mesh, make_upstream
):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(
        b"GET /one HTTP/1.1\r\nHost: svc\r\n\r\n"
        b"GET /two HTTP/1.1\r\nHost: svc\r\nX-A: a\x00b\r\n\r\n"
        b"GET /three HTTP/1.1\r\nHost: svc\r\n\r\n"
    )
    first = await asyncio.wait_for(conn.read_response(), 5)
    second = await asyncio.wait_for(conn.read_response(), 5)
    assert (first.status, first.body) == (200, b"ok\n")
    assert second.status == 400 and second.header("l5d-err")
    assert await conn.is_closed_by_peer()
    await conn.close()
    assert [r.target for r in up.received] == ["/one"]


async def test_bad_chunk_in_a_pipelined_request_drops_only_that_request(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(
        b"GET /one HTTP/1.1\r\nHost: svc\r\n\r\n"
        b"POST /two HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    )
    first = await asyncio.wait_for(conn.read_response(), 5)
    second = await asyncio.wait_for(conn.read_response(), 5)
    assert first.status == 200
    assert second.status == 400 and "chunk size" in (second.header("l5d-err") or "")
    assert await conn.is_closed_by_peer()
    await conn.close()
    assert [r.target for r in up.received] == ["/one"]
    # the pooled connection never carried any of /two: it is still idle and reusable
    (client,) = mesh.daemon.routers[0].clients.values()
    stats = client.pool_statistics()
    assert (stats.opened, stats.closed, stats.idle) == (1, 0, 1)


async def test_header_section_over_the_configured_limit_gets_431(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(servers=[{"ip": "127.0.0.1", "port": 0, "maxHeaderBytes": 2048}])
    mesh.register("svc", up)
    fits = await RawConnection.open(mesh.port)
    ok = await fits.request("GET", "/", [("X-Fill", "a" * 1500)])
    assert ok.status == 200
    await fits.close()

    many = b"".join(b"X-Fill-%d: %s\r\n" % (i, b"b" * 100) for i in range(30))
    response, closed = await _refused(mesh.port, b"GET / HTTP/1.1\r\nHost: svc\r\n" + many + b"\r\n")
    assert response.status == 431
    assert "2048" in (response.header("l5d-err") or "")
    assert closed
    assert up.requests == 1


async def test_long_request_target_counts_toward_the_header_limit(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(servers=[{"ip": "127.0.0.1", "port": 0, "maxHeaderBytes": 1024}])
    mesh.register("svc", up)
    response, closed = await _refused(mesh.port, b"GET /" + b"x" * 2000 + b" HTTP/1.1\r\nHost: svc\r\n\r\n")
    assert response.status == 431 and closed
    assert up.connections == 0


async def test_one_endless_header_is_refused_once_it_passes_the_limit(make_mesh, make_upstream):
    """A header value that never ends must not be buffered until the header timeout fires."""
    up = await make_upstream()
    mesh = await make_mesh(servers=[{"ip": "127.0.0.1", "port": 0, "maxHeaderBytes": 4096}])
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)

    async def send_endless_header() -> None:
        try:
            await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\nX-Endless: " + b"z" * (1 << 20))
        except ConnectionError:
            pass  # meshd may close before it has read everything: that is the point

    sender = asyncio.create_task(send_endless_header())
    response = await asyncio.wait_for(conn.read_response(), 5)
    await sender
    assert response.status == 431
    await conn.close()
    assert up.connections == 0


async def test_slow_headers_are_dropped_after_the_header_timeout_smoke(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(servers=[{"ip": "127.0.0.1", "port": 0, "headerTimeoutMs": 200}])
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\nX-Slow: 1\r\n")  # the head never ends
    response = await asyncio.wait_for(conn.read_response(), 5)
    elapsed = loop.time() - started
    assert response.status == 408
    assert "0.2 s" in (response.header("l5d-err") or "")
    assert await conn.is_closed_by_peer()
    await conn.close()
    assert 0.15 <= elapsed < 2.0
    assert up.connections == 0


async def test_header_timer_follows_the_head_that_is_pending_when_it_fires(make_mesh, make_upstream):
    """One timer per connection, re-armed lazily: when it fires for a head that has since been
    answered, the deadline it applies is that of the head arriving now, not of the first one.
    Real sockets, the fake clock: each timer runs at its exact instant when the test advances."""
    clock = FakeClock(start=0.0)
    up = await make_upstream()
    mesh = await make_mesh(servers=[{"ip": "127.0.0.1", "port": 0, "headerTimeoutMs": 1000}], clock=clock)
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET /1 HTTP/1.1\r\nHost: svc\r\n")  # t = 0, in pieces: the timer is armed (1 s)
    protocol = await _server_side(mesh)
    await wait_until(lambda: protocol._header_timer is not None, timeout=5, message="the header timer")
    clock.advance(0.25)
    await conn.send(b"\r\n")
    assert (await asyncio.wait_for(conn.read_response(), 5)).status == 200
    clock.advance(0.5)
    await conn.send(b"GET /2 HTTP/1.1\r\nHost: svc\r\n")  # begins at t = 0.75
    await wait_until(lambda: protocol._head_started == 0.75, timeout=5, message="the second head read")
    clock.advance(0.5)  # t = 1.25: the timer armed for the first head fired at 1 s...
    assert not protocol._closing
    # ...and moved itself to the second head's deadline (asked of the timer itself: the fs
    # namer's poll is a timer on the same clock)
    timer = protocol._header_timer
    assert isinstance(timer, FakeTimer) and not timer.cancelled and timer.when == 1.75
    clock.advance(0.5 - 1 / 1024)  # just before the second head's deadline
    await conn.send(b"\r\n")
    second = await asyncio.wait_for(conn.read_response(), 5)
    assert second.status == 200, second.header("l5d-err")
    await conn.send(b"GET /3 HTTP/1.1\r\nHost: svc\r\n")  # and a third head, never finished
    await wait_until(lambda: protocol._head_started == 1.75 - 1 / 1024, timeout=5, message="the third head read")
    clock.advance(1.0 - 1 / 1024)
    assert not protocol._closing
    clock.advance(1 / 1024)  # 1 s after the third head began, exactly
    third = await asyncio.wait_for(conn.read_response(), 5)
    assert third.status == 408
    await conn.close()


async def test_header_timer_does_not_cut_a_slow_body(make_mesh, make_upstream):
    """The header timeout covers the head only: a body may take longer."""
    clock = FakeClock(start=0.0)
    up = await make_upstream(stream_request_body=True)
    mesh = await make_mesh(servers=[{"ip": "127.0.0.1", "port": 0, "headerTimeoutMs": 100}], clock=clock)
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n\r\nab")
    assert await asyncio.wait_for(up.body_chunks.get(), 5) == b"ab"
    clock.advance(10.0)  # 100 header timeouts (the body idle timeout is 30 s by default)
    await conn.send(b"cd")
    response = await asyncio.wait_for(conn.read_response(), 5)
    assert response.status == 200
    assert up.received[0].body == b"abcd"
    await conn.close()


async def _server_side(mesh: Mesh) -> ServerProtocol:
    """The listener's side of the one connection open to `mesh`."""
    listener = mesh.daemon.bound[0].listener
    await wait_until(lambda: len(listener.connections) == 1, timeout=5, message="the connection accepted")
    (protocol,) = listener.connections
    return protocol


async def test_connect_is_not_proxied(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    response, closed = await _refused(mesh.port, b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n")
    assert response.status == 501 and response.header("l5d-err") == "CONNECT is not supported"
    assert closed
    assert up.connections == 0


async def test_upgrade_request_is_not_proxied(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    response, closed = await _refused(
        mesh.port, b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    assert response.status == 501 and "upgrade" in (response.header("l5d-err") or "").lower()
    assert closed
    assert up.connections == 0


async def test_header_count_limit_admits_exactly_max_headers_and_counts_trailers(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(servers=[{"ip": "127.0.0.1", "port": 0, "maxHeaders": 10}])
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    fits = [(f"X-F{i}", "v") for i in range(9)]  # with Host: exactly 10
    assert (await conn.request("GET", "/", fits)).status == 200
    await conn.close()
    # 6 header fields and 5 trailer fields: 11 in all
    chunked = (
        b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(4))
        + b"\r\n5\r\nhello\r\n0\r\n"
        + b"".join(b"X-T%d: v\r\n" % i for i in range(5))
        + b"\r\n"
    )
    response, closed = await _refused(mesh.port, chunked)
    assert response.status == 431 and closed
    assert "more than 10 header fields" in (response.header("l5d-err") or "")
    assert up.requests == 1  # only the first request reached the upstream


async def test_slow_request_bodies_are_cut_with_408_and_release_the_upstream_pool_smoke(make_mesh, make_upstream):
    """Issue 13, bug 2 at small scale: clients that send a head and 1 byte of a 1000-byte body held
    every upstream connection (`maxConnections`) and a normal request then waited without end."""
    up = await make_upstream(stream_request_body=True)  # the upstream waits for whole bodies
    mesh = await make_mesh(
        servers=[{"ip": "127.0.0.1", "port": 0, "bodyIdleTimeoutMs": 300}],
        client={"pool": {"maxConnections": 2}},
    )
    mesh.register("svc", up)
    slow = [await RawConnection.open(mesh.port) for _ in range(3)]
    for conn in slow:
        await conn.send(b"POST /slow HTTP/1.1\r\nHost: svc\r\nContent-Length: 1000\r\n\r\nx")
    # two hold the pool's two connections; the third waits for one
    await wait_until(lambda: up.requests == 2, timeout=5, message="two slow requests to reach the upstream")
    (client,) = mesh.daemon.routers[0].clients.values()
    await wait_until(lambda: client.pool_statistics().waiters == 1, timeout=5, message="the third to wait")
    normal = await RawConnection.open(mesh.port)
    await normal.send(build_request("GET", "/normal"))
    for conn in slow:
        response = await asyncio.wait_for(conn.read_response(), 5)
        assert response.status == 408
        assert response.header("l5d-err") == "request body: nothing received for 300 ms (bodyIdleTimeoutMs)"
        assert await asyncio.wait_for(conn.is_closed_by_peer(), 5)
        await conn.close()
    ok = await asyncio.wait_for(normal.read_response(), 5)
    assert (ok.status, ok.body) == (200, b"ok\n")
    await normal.close()
    # the upstream saw both slow exchanges' connections closed, their bodies never completed
    assert [r.target for r in up.received] == ["/slow", "/slow", "/normal"]
    assert [r.body for r in up.received[:2]] == [b"", b""]
    assert client.pool_statistics().closed >= 2


async def test_body_idle_timeout_counts_silence_between_reads_not_the_whole_body(make_mesh, make_upstream):
    """A body that keeps arriving, each piece within the timeout, is never cut however long it
    takes; the silence after the last piece is cut at the timeout exactly (fake clock, real sockets)."""
    clock = FakeClock(start=0.0)
    up = await make_upstream(stream_request_body=True)
    mesh = await make_mesh(servers=[{"ip": "127.0.0.1", "port": 0, "bodyIdleTimeoutMs": 1000}], clock=clock)
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n\r\na")
    assert await asyncio.wait_for(up.body_chunks.get(), 5) == b"a"
    for piece in (b"b", b"c", b"d"):
        clock.advance(1.0 - 1 / 1024)  # just under the 1000 ms allowed
        await conn.send(piece)  # the body has now taken about 1 s more
        assert await asyncio.wait_for(up.body_chunks.get(), 5) == piece
    response = await asyncio.wait_for(conn.read_response(), 5)
    assert response.status == 200, response.header("l5d-err")
    assert up.received[0].body == b"abcd"
    await conn.close()
    # and a body that falls silent: cut at 1 s of silence, not a moment before
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n\r\na")
    assert await asyncio.wait_for(up.body_chunks.get(), 5) == b"a"
    protocol = await _server_side(mesh)
    await wait_until(lambda: protocol._body_timer is not None, timeout=5, message="the body timer")
    clock.advance(1.0 - 1 / 1024)
    assert not protocol._closing
    clock.advance(1 / 1024)
    response = await asyncio.wait_for(conn.read_response(), 5)
    assert response.status == 408
    assert response.header("l5d-err") == "request body: nothing received for 1000 ms (bodyIdleTimeoutMs)"
    await conn.close()
