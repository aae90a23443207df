"""Bodies stream through meshd in both directions, with back-pressure, and are never buffered whole.

Streaming is proved by order of events: the upstream holds the first part of a request body
while the client has not sent the rest yet; the client holds the first part of a response while
the upstream has not sent the rest yet. Back-pressure is proved by a stall: with the receiving
side not reading, the sending side stops far short of the body's size (only socket buffers and
meshd's small per-connection buffers fill). The large transfer runs meshd as a subprocess and
reads its peak RSS from /proc afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import pathlib
import socket
from collections.abc import AsyncIterator, Callable

from meshd.listener import CONNECTION_TASK
from routing.path import Path
from tests.support.client import RawConnection, build_request
from tests.support.process import MeshdProcess, process_config
from tests.support.upstreams import Received, Reply, ScriptedUpstream
from tests.support.waiting import wait_until

MiB = 1 << 20
#: What may sit in socket buffers and meshd's buffers between a stalled sender and its reader:
#: far less than this, and far less than the bodies below.
IN_FLIGHT_BOUND = 48 * MiB
STALL_BODY = 128 * MiB


async def _read_until(conn: RawConnection, marker: bytes, seen: bytes = b"") -> bytes:
    while marker not in seen:
        data = await asyncio.wait_for(conn.reader.read(65536), 5)
        assert data, f"connection closed before {marker!r}; got {seen!r}"
        seen += data
    return seen


async def _wait_stalled(progress: Callable[[], int], done: Callable[[], bool]) -> None:
    """Wait until `progress()` stops moving (the same for 10 polls in a row) or `done()` is true."""
    last, same = -1, 0

    def stalled() -> bool:
        nonlocal last, same
        value = progress()
        same = same + 1 if value == last else 0
        last = value
        return done() or same >= 10

    await wait_until(stalled, timeout=20, message="the transfer to stall")


async def test_request_body_reaches_the_upstream_before_the_client_sends_the_rest(make_mesh, make_upstream):
    up = await make_upstream(stream_request_body=True)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"POST /upload HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nfirst")
    assert await asyncio.wait_for(up.body_chunks.get(), 5) == b"first"
    assert up.received[0].target == "/upload"
    await conn.send(b"-rest")
    response = await asyncio.wait_for(conn.read_response(), 5)
    assert response.status == 200
    assert await asyncio.wait_for(up.body_chunks.get(), 5) == b"-rest"
    await conn.close()


async def test_chunked_request_body_streams_chunk_by_chunk_and_keeps_its_trailers(make_mesh, make_upstream):
    up = await make_upstream(stream_request_body=True)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    assert await asyncio.wait_for(up.body_chunks.get(), 5) == b"first"
    await conn.send(b"6\r\nsecond\r\n0\r\nX-Sum: 11\r\n\r\n")
    response = await asyncio.wait_for(conn.read_response(), 5)
    assert response.status == 200
    assert up.received[0].body == b"firstsecond"
    assert ("X-Sum", "11") in up.received[0].trailers
    await conn.close()


async def test_chunked_response_reaches_the_client_before_the_upstream_sends_the_rest(
    make_mesh, make_upstream
):
    gate = asyncio.Event()

    async def parts() -> AsyncIterator[bytes]:
        yield b"first-part"
        await gate.wait()
        yield b"second-part"

    async def handler(req: Received) -> Reply:
        return Reply(200, [], stream=parts(), trailers=[("X-Done", "yes")])

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("GET", "/"))
    seen = await _read_until(conn, b"first-part")
    assert seen.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"second-part" not in seen
    gate.set()
    rest = await _read_until(conn, b"0\r\nX-Done: yes\r\n\r\n", seen)
    assert b"second-part" in rest
    await conn.close()


async def test_content_length_response_streams_before_it_is_complete(make_mesh):
    gate = asyncio.Event()

    async def halves(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await gate.wait()
        writer.write(b"world")
        await reader.read()

    async with ScriptedUpstream(halves) as up:
        mesh = await make_mesh()
        mesh.register("svc", up.address_line)
        conn = await RawConnection.open(mesh.port)
        await conn.send(build_request("GET", "/"))
        seen = await _read_until(conn, b"hello")
        assert b"Content-Length: 10\r\n" in seen
        gate.set()
        assert (await _read_until(conn, b"helloworld", seen)).endswith(b"\r\n\r\nhelloworld")
        await conn.close()


async def test_slow_client_stalls_the_upstream_instead_of_filling_memory(make_mesh, make_upstream):
    produced = 0
    block = b"r" * (256 * 1024)

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced
        while produced < STALL_BODY:
            produced += len(block)
            yield block

    async def handler(req: Received) -> Reply:
        return Reply(200, [], stream=endless())

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("GET", "/big"))
    await _read_until(conn, b"\r\n\r\n")  # the head arrived; from now on the client reads nothing
    await _wait_stalled(lambda: produced, lambda: produced >= STALL_BODY)
    assert produced < IN_FLIGHT_BOUND
    assert up.paused_writers == 1
    received = 0
    while received < 4 * IN_FLIGHT_BOUND // 3:  # reading again lets the upstream go on
        data = await asyncio.wait_for(conn.reader.read(1 << 20), 5)
        assert data
        received += len(data)
    assert produced > IN_FLIGHT_BOUND
    await conn.close()
    await wait_until(lambda: up.open_connections == 0, timeout=5, message="meshd to drop the upstream")


async def test_slow_upstream_stalls_the_client_upload_instead_of_filling_memory(make_mesh):
    gate = asyncio.Event()
    digest = hashlib.sha256()

    async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        assert b"Content-Length: %d" % STALL_BODY in head
        await gate.wait()
        left = STALL_BODY
        while left:
            data = await reader.read(min(left, 1 << 20))
            assert data
            digest.update(data)
            left -= len(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.read()

    async with ScriptedUpstream(slow_reader) as up:
        mesh = await make_mesh()
        mesh.register("svc", up.address_line)
        conn = await RawConnection.open(mesh.port)
        block = bytes(range(256)) * 4096
        sent = 0

        async def upload() -> None:
            nonlocal sent
            await conn.send(b"PUT /blob HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % STALL_BODY)
            while sent < STALL_BODY:
                await conn.send(block)
                sent += len(block)

        uploading = asyncio.create_task(upload())
        await _wait_stalled(lambda: sent, uploading.done)
        assert not uploading.done()
        assert sent < IN_FLIGHT_BOUND
        gate.set()
        await asyncio.wait_for(uploading, 20)
        response = await asyncio.wait_for(conn.read_response(), 20)
        assert (response.status, response.body) == (200, b"ok")
        expected = hashlib.sha256()
        for _ in range(STALL_BODY // len(block)):
            expected.update(block)
        assert digest.digest() == expected.digest()
        await conn.close()


async def test_client_leaving_mid_upload_aborts_the_upstream_exchange(make_mesh, make_upstream):
    up = await make_upstream(stream_request_body=True)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 1000\r\n\r\npartial")
    assert await asyncio.wait_for(up.body_chunks.get(), 5) == b"partial"
    await conn.close()
    await wait_until(lambda: up.open_connections == 0, timeout=5, message="meshd to abort the upstream")
    assert up.requests == 1 and up.received[0].body == b""  # the body never completed upstream
    (listener,) = mesh.daemon.listeners_of("outgoing")
    await wait_until(
        lambda: not listener.connections, timeout=5, message="meshd to close the client connection"
    )


async def test_client_half_close_before_the_response_cancels_the_request_and_closes(make_mesh, make_upstream):
    """A FIN while a request waits for its response means the client gave up on it (`curl -m`, a
    caller's timeout): as nginx (499) and Envoy do, meshd cancels the request (its upstream attempt
    is aborted), drops the request pipelined after it, and closes without writing anything."""
    release = asyncio.Event()

    async def hang(req: Received) -> Reply:
        await release.wait()
        return Reply(200, [], b"late")

    up = await make_upstream(hang)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    try:
        await conn.send(build_request("GET", "/one") + build_request("GET", "/two"))
        await wait_until(lambda: up.requests == 1, timeout=5, message="the first request to reach the upstream")
        conn.writer.write_eof()
        assert await asyncio.wait_for(conn.read_eof(), 5) == b""  # closed, nothing written
        await wait_until(lambda: up.open_connections == 0, timeout=5, message="meshd to abort the upstream attempt")
    finally:
        release.set()
        await conn.close()
    assert [r.target for r in up.received] == ["/one"]
    (listener,) = mesh.daemon.listeners_of("outgoing")
    await wait_until(lambda: not listener.connections, timeout=5, message="meshd to forget the connection")
    # counted as nginx logs it: status 499 (client closed request), a 4xx
    assert mesh.daemon.routers[0].stats.services["/svc/svc"].by_class[4] == 1


async def test_client_half_close_after_the_response_began_still_gets_all_of_it(make_mesh, make_upstream):
    """A response that has begun is finished for a client that only shut down its sending side;
    the request pipelined after it is dropped and the connection closes."""
    gate = asyncio.Event()

    async def parts() -> AsyncIterator[bytes]:
        yield b"first-part"
        await gate.wait()
        yield b"second-part"

    async def handler(req: Received) -> Reply:
        return Reply(200, [], stream=parts())

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    try:
        await conn.send(build_request("GET", "/one") + build_request("GET", "/two"))
        seen = await _read_until(conn, b"first-part")
        conn.writer.write_eof()
        gate.set()
        rest = await asyncio.wait_for(conn.read_eof(), 5)
    finally:
        gate.set()
        await conn.close()
    assert (seen + rest).endswith(b"first-part\r\nb\r\nsecond-part\r\n0\r\n\r\n")
    assert (seen + rest).count(b"HTTP/1.1 ") == 1
    assert [r.target for r in up.received] == ["/one"]


async def test_client_half_close_on_an_idle_connection_closes_it_cleanly(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    assert (await conn.request("GET", "/one")).status == 200
    conn.writer.write_eof()
    assert await asyncio.wait_for(conn.read_eof(), 5) == b""
    await conn.close()
    (listener,) = mesh.daemon.listeners_of("outgoing")
    await wait_until(lambda: not listener.connections, timeout=5, message="meshd to forget the connection")
    assert mesh.daemon.routers[0].stats.services["/svc/svc"].by_class[4] == 0


async def test_256_mib_both_ways_through_a_meshd_process_with_bounded_memory(tmp_path: pathlib.Path):
    size = 256 * MiB
    block = bytes(range(256)) * 1024  # 256 KiB
    expected = hashlib.sha256()
    for _ in range(size // len(block)):
        expected.update(block)
    uploaded = hashlib.sha256()

    async def sink_and_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"HEAD"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            elif head.startswith(b"PUT"):
                left = size
                while left:
                    data = await reader.read(min(left, 1 << 20))
                    assert data
                    uploaded.update(data)
                    left -= len(data)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                for _ in range(size // len(block)):
                    writer.write(block)
                    await writer.drain()

    async with ScriptedUpstream(sink_and_source) as up, MeshdProcess(tmp_path, process_config()) as mesh:
        mesh.register("blob", up.address_line)
        conn = await RawConnection.open(mesh.port)
        try:
            # the fs namer polls: wait until it knows the service
            await wait_until(
                lambda: _is_served(mesh.port), timeout=5, message="meshd to see the blob service"
            )
            await conn.send(b"PUT /blob HTTP/1.1\r\nHost: blob\r\nContent-Length: %d\r\n\r\n" % size)
            for _ in range(size // len(block)):
                await conn.send(block)
            put = await asyncio.wait_for(conn.read_response(), 20)
            assert put.status == 204
            assert uploaded.digest() == expected.digest()

            await conn.send(build_request("GET", "/blob", host="blob"))
            head = await _read_until(conn, b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Content-Length: %d\r\n" % size in head
            downloaded = hashlib.sha256()
            body = head.partition(b"\r\n\r\n")[2]
            downloaded.update(body)
            received = len(body)
            while received < size:
                data = await asyncio.wait_for(conn.reader.read(1 << 20), 20)
                assert data
                downloaded.update(data)
                received += len(data)
            assert received == size
            assert downloaded.digest() == expected.digest()
        finally:
            await conn.close()
        peak_kib = mesh.memory_kib("VmHWM")
    assert peak_kib * 1024 < size // 4, (
        f"meshd's peak RSS was {peak_kib} KiB while moving {size} bytes each way"
    )


async def _is_served(port: int) -> bool:
    conn = await RawConnection.open(port)
    try:
        return (await conn.request("HEAD", "/", host="blob")).status != 502
    finally:
        await conn.close()


async def test_pipelined_large_bodies_wait_their_turn_and_all_arrive(make_mesh, make_upstream):
    """A queued request's body buffers only up to the high-water mark, then reading pauses until its turn."""

    async def echo_size(req: Received) -> Reply:
        return Reply(200, [], b"%d:%d" % (len(req.body), req.body[0]))

    up = await make_upstream(echo_size)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    size = 300 * 1024
    requests = b"".join(
        b"POST /%d HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % (i, size) + bytes([i]) * size
        for i in range(4)
    )

    async def send_all() -> None:
        await conn.send(requests)

    sending = asyncio.create_task(send_all())
    bodies = [(await asyncio.wait_for(conn.read_response(), 10)).body for _ in range(4)]
    await sending
    assert bodies == [b"%d:%d" % (size, i) for i in range(4)]
    assert [r.target for r in up.received] == ["/0", "/1", "/2", "/3"]
    await conn.close()


async def test_chunked_response_to_an_http10_client_is_delimited_by_close(make_mesh, make_upstream):
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part

    async def handler(req: Received) -> Reply:
        return Reply(200, [], stream=parts(), trailers=[("X-Dropped", "1")])

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("GET", "/", version="1.0"))
    raw = await asyncio.wait_for(conn.read_eof(), 5)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert b"Connection: close" in head
    assert body == b"one two three"  # raw bytes, no chunk framing, no trailers
    await conn.close()


async def test_request_trailers_never_carry_routing_context_or_framing(make_mesh, make_upstream):
    """The routing and trust decisions are made on the head: `l5d-*` fields in trailers are dropped
    for trusted and untrusted clients alike, with the fields RFC 9110 §6.5.1 keeps out of trailers
    (routing, authentication, hop-by-hop, ...); an ordinary trailer is forwarded. (llhttp itself
    refuses Content-Length and Transfer-Encoding in trailers with a 400.)"""
    up = await make_upstream()
    mesh = await make_mesh(trustedSources=["127.0.0.1/32"])
    mesh.register("svc", up)
    trailers = (
        b"l5d-dtab: /svc/svc => /#/fs/other\r\nl5d-ctx-dtab: /svc => /#/fs\r\nL5d-Ctx-Deadline: 1\r\n"
        b"Host: evil\r\nAuthorization: Basic eA==\r\nX-Forwarded-For: 10.9.9.9\r\nConnection: close\r\n"
        b"X-Sum: 11\r\n"
    )
    wire = b"POST / HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n" + trailers + b"\r\n"
    for source in ("127.0.0.1", "127.0.0.2"):  # trusted, then untrusted
        reader, writer = await asyncio.open_connection("127.0.0.1", mesh.port, local_addr=(source, 0))
        conn = RawConnection(reader, writer)
        try:
            await conn.send(wire)
            response = await asyncio.wait_for(conn.read_response(), 5)
        finally:
            await conn.close()
        assert response.status == 200
    assert len(up.received) == 2
    for received in up.received:
        assert received.body == b"hello"
        assert received.trailers == [("X-Sum", "11")]


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connection_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == CONNECTION_TASK]


async def test_client_leaving_a_post_to_a_refused_port_stops_its_requeues(make_mesh):
    """Issue 13's reproduction, `curl -m 10 -X POST -d x -H 'Host: dead'` with `dead` pointing at a
    port nothing listens on: once curl closes its socket, no further connect is attempted for it."""
    refused = _refused_port()
    mesh = await make_mesh()
    mesh.register("dead", f"127.0.0.1 {refused}")
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("POST", "/", body=b"x", host="dead"))
    services = mesh.daemon.routers[0].services
    dead = Path.read("/svc/dead")
    await wait_until(
        lambda: dead in services and services[dead].retries.requeue >= 1, timeout=10, message="a requeue"
    )
    await conn.close()  # FIN, as curl sends when -m expires
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""  # nothing was written
    await wait_until(lambda: not _connection_tasks(), timeout=5, message="the request's task to be cancelled")
    (listener,) = mesh.daemon.listeners_of("outgoing")
    await wait_until(lambda: not listener.connections, timeout=5, message="meshd to forget the connection")
    assert mesh.daemon.routers[0].stats.services["/svc/dead"].by_class[4] == 1  # counted as 499
