"""HTTP/2 through meshd: a router with `protocol: h2`, an `h2` library client and upstream.

Each test drives real sockets: the scripted client (tests/support/h2peer.py) speaks h2c to
meshd, meshd speaks h2c to the scripted upstream. They check that streams are requests of the
same pipeline (routing by :authority, l5d headers, metrics), that bodies and trailers pass both
ways, that many streams share one connection each side, that flow control holds a fast sender
back, and that resets and GOAWAY do what RFC 9113 and docs/http2.md say.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.support.client import RawConnection
from tests.support.h2peer import H2Client, H2Reply, H2Server, echo
from tests.support.waiting import wait_until

# each test runs on both HTTP/2 codec backends (tests/conftest.py h2_codec)
pytestmark = pytest.mark.usefixtures("h2_codec")

MakeServer = Callable[..., Awaitable[H2Server]]


@pytest.fixture
async def make_h2_upstream() -> AsyncIterator[MakeServer]:
    servers: list[H2Server] = []

    async def make(handler: Callable[[H2Reply], Awaitable[None]] = echo, **kwargs: object) -> H2Server:
        server = await H2Server(handler, **kwargs).start()  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.close()


async def test_a_stream_is_routed_by_authority_and_answered_with_body_and_trailers(make_mesh, make_h2_upstream):
    up = await make_h2_upstream()
    mesh = await make_mesh(protocol="h2")
    mesh.register("accounts", up.address_line)
    client = await H2Client.open(mesh.port)
    result = await client.request(
        "POST", "/accounts/42", "accounts", headers=[(b"te", b"trailers"), (b"x-a", b"1")],
        body=b"hello", trailers=[(b"x-sum", b"5")],
    )
    assert result.status == 200
    assert result.body == b"hello"
    assert result.trailers == [(b"x-sum", b"5")]
    assert result.header(b"x-path") == b"/accounts/42"
    assert result.header(b"via") is not None and b"meshd" in result.header(b"via")  # type: ignore[operator]
    got = up.received[0]
    assert got.header(b":authority") == b"accounts"
    assert got.header(b"te") == b"trailers"
    assert got.header(b"x-a") == b"1"
    assert got.header(b"l5d-dst-service") == b"/svc/accounts"
    assert got.header(b"l5d-reqid") is not None
    assert got.header(b"via") == b"2 meshd"
    assert got.trailers == [(b"x-sum", b"5")]
    client.close()


async def test_the_router_says_which_codec_it_runs_on(make_mesh, make_h2_upstream, h2_codec: str,
                                                     caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.INFO, logger="meshd.router")
    up = await make_h2_upstream()
    mesh = await make_mesh(protocol="h2")
    assert [r.getMessage() for r in caplog.records if "HTTP/2 codec" in r.getMessage()] == [
        f"router {mesh.daemon.routers[0].label}: HTTP/2 codec: {h2_codec}"]
    mesh.register("accounts", up.address_line)
    client = await H2Client.open(mesh.port)
    assert (await client.request("GET", "/", "accounts")).status == 200
    client.close()


async def test_unknown_service_is_answered_with_l5d_err_on_the_stream(make_mesh):
    mesh = await make_mesh(protocol="h2", bindingTimeoutMs=200)
    client = await H2Client.open(mesh.port)
    result = await client.request("GET", "/", "nowhere")
    assert result.status in (502, 503)
    assert result.header(b"l5d-err")
    client.close()


async def test_many_concurrent_streams_share_one_connection_each_side(make_mesh, make_h2_upstream):
    release = asyncio.Event()

    async def slow(reply: H2Reply) -> None:
        await release.wait()
        reply.head(200, [(b"content-length", b"2")])
        await reply.data(b"ok", end_stream=True)

    up = await make_h2_upstream(slow)
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port)
    sids = [client.start("GET", f"/{i}", "svc") for i in range(50)]
    await wait_until(lambda: len(up.received) == 50, timeout=10, message="50 streams at the upstream")
    assert len(up.conns) == 1  # multiplexed: one upstream connection for 50 streams in flight
    # the balancer counts streams: 50 pending on the one endpoint
    client_ = next(iter(mesh.daemon.routers[0].clients.values()))
    assert [node.pending for node in client_.balancer.nodes()] == [50]
    release.set()
    results = await asyncio.gather(*(client.response(sid) for sid in sids))
    assert [r.status for r in results] == [200] * 50
    assert all(r.body == b"ok" for r in results)
    client.close()


async def test_upstream_stream_limit_opens_a_second_connection_only_when_reached(make_mesh, make_h2_upstream):
    release = asyncio.Event()

    async def slow(reply: H2Reply) -> None:
        await release.wait()
        reply.head(200, end_stream=True)

    # the upstream allows 4 concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
    up = await make_h2_upstream(slow, settings={0x3: 4})
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port)
    first = [client.start("GET", "/", "svc") for _ in range(4)]
    await wait_until(lambda: len(up.received) == 4, timeout=5, message="4 streams at the upstream")
    assert len(up.conns) == 1
    more = [client.start("GET", "/", "svc") for _ in range(3)]
    await wait_until(lambda: len(up.received) == 7, timeout=5, message="7 streams at the upstream")
    assert len(up.conns) == 2
    release.set()
    results = await asyncio.gather(*(client.response(sid) for sid in first + more))
    assert all(r.status == 200 for r in results)
    client.close()


async def test_request_body_back_pressure_holds_the_client_to_the_upstreams_pace(make_mesh, make_h2_upstream):
    # the upstream never acknowledges DATA: its window (64 KiB) closes, then meshd's, then the client's
    up = await make_h2_upstream(echo, auto_ack=False)
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port)
    sid = client.start("POST", "/upload", "svc", end_stream=False)
    payload = b"x" * (4 * 1024 * 1024)
    sent = 0

    def send_what_the_window_allows() -> bool:
        nonlocal sent
        window = min(client.h2.local_flow_control_window(sid), len(payload) - sent)
        while window > 0:
            chunk = min(window, client.h2.max_outbound_frame_size)
            client.h2.send_data(sid, payload[sent:sent + chunk])
            sent += chunk
            window -= chunk
        client.flush()
        return False

    last = -1
    same = 0

    def stalled() -> bool:
        nonlocal last, same
        send_what_the_window_allows()
        same = same + 1 if sent == last else 0
        last = sent
        return same >= 20

    await wait_until(stalled, timeout=10, message="the client's window to stay shut")
    # meshd holds at most its stream window plus the body's buffer: far below the 4 MiB offered
    assert 65_535 <= sent < 512 * 1024
    client.close()


async def test_client_reset_cancels_the_upstream_stream(make_mesh, make_h2_upstream):
    started = asyncio.Event()

    async def hang(reply: H2Reply) -> None:
        started.set()
        await asyncio.Event().wait()

    up = await make_h2_upstream(hang)
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port)
    sid = client.start("GET", "/", "svc")
    await asyncio.wait_for(started.wait(), 5)
    client.reset(sid, 8)
    await wait_until(lambda: bool(up.resets), timeout=5, message="the upstream stream to be reset")
    assert up.resets[0][1] == 8  # CANCEL
    # the connection still serves other streams
    up.handler = echo
    assert (await client.request("GET", "/", "svc")).status == 200
    client.close()


async def test_upstream_reset_mid_response_resets_the_downstream_stream_with_its_code(make_mesh, make_h2_upstream):
    async def break_off(reply: H2Reply) -> None:
        reply.head(200)
        await reply.data(b"partial")
        reply.reset(0x2)  # INTERNAL_ERROR

    up = await make_h2_upstream(break_off)
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port)
    result = await client.request("GET", "/", "svc")
    assert result.status == 200
    assert result.reset == 0x2
    client.close()


async def test_goaway_from_the_upstream_retries_unprocessed_streams_elsewhere(make_mesh, make_h2_upstream):
    release = asyncio.Event()

    async def hold(reply: H2Reply) -> None:
        await release.wait()
        reply.head(200, [(b"x-who", b"a")], end_stream=True)

    async def answer_b(reply: H2Reply) -> None:
        reply.head(200, [(b"x-who", b"b")], end_stream=True)

    a = await make_h2_upstream(hold)
    b = await make_h2_upstream(answer_b)
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", a.address_line)
    client = await H2Client.open(mesh.port)
    sids = [client.start("GET", f"/{i}", "svc") for i in range(3)]
    await wait_until(lambda: len(a.received) == 3, timeout=5, message="three streams at a")
    mesh.register("svc", a.address_line, b.address_line)
    await wait_until(lambda: len(next(iter(mesh.daemon.routers[0].clients.values())).endpoints()) == 2, timeout=5)
    # a says it processed only its first stream: the two above it were not, and go to b
    a.conns[0].send_goaway(last_stream_id=a.received[0].stream_id)
    later = [await client.response(sid) for sid in sids[1:]]
    assert [r.header(b"x-who") for r in later] == [b"b", b"b"]
    assert mesh.daemon.routers[0].h2_stats.streams_refused == 2
    release.set()
    first = await client.response(sids[0])
    assert first.status == 200 and first.header(b"x-who") == b"a"
    client.close()


async def test_graceful_drain_sends_goaway_and_finishes_open_streams(make_mesh, make_h2_upstream):
    release = asyncio.Event()

    async def slow(reply: H2Reply) -> None:
        await release.wait()
        reply.head(200, end_stream=True)

    up = await make_h2_upstream(slow)
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port)
    sid = client.start("GET", "/", "svc")
    await wait_until(lambda: bool(up.received), timeout=5, message="the stream at the upstream")
    for bound in mesh.daemon.bound:
        bound.listener.begin_drain()
    await wait_until(lambda: client.goaway is not None, timeout=5, message="GOAWAY from meshd")
    assert client.goaway is not None and client.goaway.last_stream_id == sid
    release.set()
    assert (await client.response(sid)).status == 200
    await asyncio.wait_for(client.closed.wait(), 5)


async def test_accept_http1_serves_both_protocols_on_one_port(make_mesh, make_h2_upstream):
    up = await make_h2_upstream()
    mesh = await make_mesh(protocol="h2", h2={"acceptHttp1": True})
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port)
    assert (await client.request("GET", "/two", "svc")).status == 200
    client.close()
    conn = await RawConnection.open(mesh.port)
    response = await conn.request("POST", "/one", host="svc", body=b"over http/1.1")
    assert response.status == 200
    assert response.body == b"over http/1.1"
    await conn.close()
    # the HTTP/1.1 request went upstream as HTTP/2
    assert up.received[-1].path == "/one"


async def test_http1_client_on_an_h2_only_port_is_refused(make_mesh):
    mesh = await make_mesh(protocol="h2")
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    data = await asyncio.wait_for(conn.reader.read(65536), 5)
    # an HTTP/2 server's SETTINGS, then GOAWAY(PROTOCOL_ERROR): no HTTP/1.1 response
    assert not data.startswith(b"HTTP/1.1")
    await conn.close()


async def test_a_connection_that_sent_nothing_yet_is_closed_by_a_drain_on_a_dual_port(make_mesh):
    mesh = await make_mesh(protocol="h2", h2={"acceptHttp1": True})
    conn = await RawConnection.open(mesh.port)
    listener = mesh.daemon.bound[0].listener
    await wait_until(lambda: len(listener.connections) == 1, timeout=5, message="the connection registered")
    listener.begin_drain()
    assert await asyncio.wait_for(conn.reader.read(100), 5) == b""
    await wait_until(lambda: not listener.connections, timeout=5, message="the connection forgotten")
    await conn.close()


async def test_a_refused_connect_is_retried_on_another_endpoint(make_mesh, make_h2_upstream):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    up = await make_h2_upstream()
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", f"127.0.0.1 {dead}", up.address_line)
    client = await H2Client.open(mesh.port)
    results = await asyncio.gather(*(client.request("GET", f"/{i}", "svc") for i in range(20)))
    assert all(r.status == 200 for r in results)
    assert len(up.received) == 20
    client.close()


async def test_a_drain_waits_for_response_data_still_waiting_for_the_clients_window(make_mesh, make_h2_upstream):
    body = bytes(range(256)) * 240  # 60 KiB: all of it handed to meshd's codec, most held by the window

    async def answer(reply: H2Reply) -> None:
        reply.head(200)
        await reply.data(body, end_stream=True)

    up = await make_h2_upstream(answer)
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port, settings={0x4: 16384})  # a 16 KiB stream window
    sid = client.start("GET", "/", "svc")
    client.held.add(sid)
    got = 0

    def received() -> int:
        return sum(len(e.data) for e in list(client.queues[sid]._queue) if hasattr(e, "data"))  # type: ignore[attr-defined]

    await wait_until(lambda: received() >= 16384, timeout=5, message="the first window's worth")
    got = received()
    assert got < len(body)
    for bound in mesh.daemon.bound:
        bound.listener.begin_drain()
    await wait_until(lambda: client.goaway is not None, timeout=5, message="GOAWAY")
    assert not client.closed.is_set()
    client.held.discard(sid)
    client.ack(sid)
    client.auto_ack = True
    result = await client.response(sid)
    assert result.body == body
    await asyncio.wait_for(client.closed.wait(), 5)


async def test_a_request_body_that_stops_arriving_is_answered_408_after_body_idle_timeout(make_mesh, make_h2_upstream):
    up = await make_h2_upstream()
    mesh = await make_mesh(protocol="h2", servers=[{"ip": "127.0.0.1", "port": 0, "bodyIdleTimeoutMs": 300}])
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port)
    sid = client.start("POST", "/upload", "svc", end_stream=False)
    client.send(sid, b"first part, then nothing")
    result = await client.response(sid, timeout=5)
    assert result.status == 408
    assert result.header(b"l5d-err") is not None and b"bodyIdleTimeoutMs" in result.header(b"l5d-err")  # type: ignore[operator]
    await wait_until(lambda: bool(up.resets), timeout=5, message="the upstream stream cancelled")
    # the connection serves on
    assert (await client.request("GET", "/", "svc")).status == 200
    client.close()


async def test_a_reload_to_protocol_h2_applies_to_the_next_connection_on_the_same_port(make_mesh, make_h2_upstream):
    import yaml

    from meshd.config.loader import load_config
    from meshd.config.model import MeshdConfig
    from tests.conftest import base_config

    up = await make_h2_upstream()
    mesh = await make_mesh()  # protocol: http
    port = mesh.port
    outcome = await mesh.daemon.reload(load_config(yaml.safe_dump(base_config(protocol="h2")), MeshdConfig))
    assert outcome.result == "applied", outcome
    assert mesh.port == port  # the socket stayed
    mesh.register("svc", up.address_line)
    client = await H2Client.open(port)
    assert (await client.request("GET", "/", "svc")).status == 200
    client.close()


async def test_a_failing_replica_is_retried_with_the_request_body_replayed(make_mesh, make_h2_upstream):
    async def broken(reply: H2Reply) -> None:
        reply.head(503, end_stream=True)

    good = [await make_h2_upstream() for _ in range(2)]
    bad = await make_h2_upstream(broken)
    mesh = await make_mesh(
        protocol="h2",
        service={"retries": {"backoff": {"kind": "constant", "ms": 0}, "budget": {"percentCanRetry": 1.0}}},
    )
    mesh.register("svc", bad.address_line, *(g.address_line for g in good))
    client = await H2Client.open(mesh.port)
    # PUT is idempotent: retryableIdempotent5XX retries it, replaying its body from the buffer
    results = await asyncio.gather(*(
        client.request("PUT", f"/{i}", "svc", body=b"payload-%d" % i) for i in range(60)
    ))
    assert [r.status for r in results] == [200] * 60
    assert [r.body for r in results] == [b"payload-%d" % i for i in range(60)]
    assert bad.received, "the broken replica was tried"
    assert all(r.body.startswith(b"payload-") for r in bad.received)  # it got the body too
    client.close()


async def test_the_access_log_shows_an_http2_request(make_mesh, make_h2_upstream, caplog):
    import logging

    up = await make_h2_upstream()
    mesh = await make_mesh(protocol="h2", accessLog=True)
    mesh.register("svc", up.address_line)
    client = await H2Client.open(mesh.port)
    with caplog.at_level(logging.INFO, logger="meshd.access"):
        assert (await client.request("GET", "/logged", "svc")).status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "meshd.access"]
    assert len(lines) == 1
    assert "method=GET target=/logged service=/svc/svc status=200" in lines[0]
    assert lines[0].endswith(" proto=h2")
    client.close()
