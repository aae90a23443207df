"""Failures meshd produces: each gets its documented status and an `l5d-err` saying what happened.

No such service (502), no endpoints (503), connection refused on every endpoint (502), upstream
closed or reset before responding (502), malformed upstream response (502), pool exhausted
(503), timeouts (504); a response already started is cut by closing the connection, never
corrupted or followed by an error. docs/errors.md is the table these tests check.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple

import pytest

from meshd.errors import MeshdError
from tests.support.client import RawConnection, build_request
from tests.support.upstreams import Received, Reply, ScriptedUpstream
from tests.support.waiting import wait_until

#: No retries at all, so one failure is one answer (retries are tested in tests/meshd/retry).
NO_RETRIES = {"retries": {"budget": {"minRetriesPerSec": 0, "percentCanRetry": 0.0}}}


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


@pytest.fixture
async def client_conn() -> AsyncIterator[Callable[[int], Awaitable[RawConnection]]]:
    opened: list[RawConnection] = []

    async def open_(port: int) -> RawConnection:
        conn = await RawConnection.open(port)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        await conn.close()


class Scripted(NamedTuple):
    up: ScriptedUpstream
    mesh: Any
    conn: RawConnection


@pytest.fixture
async def scripted(make_mesh, client_conn) -> AsyncIterator[Callable[..., Awaitable[Scripted]]]:
    """`await scripted(script, **mesh_config)`: a ScriptedUpstream running `script`, registered as
    `svc` in a new mesh, and a client connection to that mesh."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(script: Callable[..., Awaitable[None]], **mesh_config: object) -> Scripted:
            up = await stack.enter_async_context(ScriptedUpstream(script))
            mesh = await make_mesh(**mesh_config)
            mesh.register("svc", up.address_line)
            return Scripted(up, mesh, await client_conn(mesh.port))

        yield start


async def test_unknown_service_is_502_with_the_dtab_in_l5d_err_and_keeps_the_connection(
    make_mesh, make_upstream, client_conn
):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("known", up)
    conn = await client_conn(mesh.port)
    resp = await conn.request("GET", "/", host="nosuch")
    assert resp.status == 502
    err = resp.header("l5d-err") or ""
    assert "No hosts are available for /svc/nosuch" in err
    assert "Dtab.base=[/svc=>/#/fs]" in err
    assert resp.body == err.encode() + b"\n"
    assert resp.header("connection") is None
    again = await conn.request("GET", "/", host="known")
    assert again.status == 200
    assert up.requests == 1


async def test_service_with_no_endpoints_is_503(make_mesh, client_conn):
    mesh = await make_mesh()
    mesh.register("empty")  # the file exists but lists nobody
    conn = await client_conn(mesh.port)
    resp = await conn.request("GET", "/", host="empty")
    assert resp.status == 503
    assert resp.header("l5d-err") == "no endpoints available for /#/fs/empty"


async def test_connection_refused_on_every_endpoint_is_502_after_trying_each(make_mesh, client_conn):
    ports = [_closed_port(), _closed_port()]
    mesh = await make_mesh(service={"retries": {"backoff": {"kind": "constant", "ms": 0}}})
    mesh.register("down", *(f"127.0.0.1 {p}" for p in ports))
    conn = await client_conn(mesh.port)
    resp = await asyncio.wait_for(conn.request("GET", "/", host="down"), 10)
    assert resp.status == 502
    err = resp.header("l5d-err") or ""
    assert "connection refused" in err
    assert any(f"127.0.0.1:{p}" in err for p in ports)
    # a failure before anything was written is retried on another pick: both endpoints were tried
    service = mesh.daemon.routers[0].services
    (state,) = service.values()
    assert state.retries.requeue >= 1


async def test_refused_endpoint_is_skipped_by_a_retry_when_another_is_up(
    make_mesh, make_upstream, client_conn
):
    up = await make_upstream()
    mesh = await make_mesh(service={"retries": {"backoff": {"kind": "constant", "ms": 0}}})
    mesh.register("half", up, f"127.0.0.1 {_closed_port()}")
    conn = await client_conn(mesh.port)
    for _ in range(10):
        resp = await conn.request("POST", "/pay", body=b"x", host="half")  # a POST too: nothing was written
        assert resp.status == 200
    assert up.requests == 10


async def test_upstream_closing_before_responding_is_502(scripted):
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)

    up, mesh, conn = await scripted(hang_up, service=NO_RETRIES)
    resp = await conn.request("GET", "/")
    assert resp.status == 502
    assert resp.header("l5d-err") == f"127.0.0.1:{up.port} closed the connection before responding"


async def test_post_is_not_retried_after_it_reached_the_upstream(scripted):
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)

    up, mesh, conn = await scripted(hang_up, service={"retries": {"backoff": {"kind": "constant", "ms": 0}}})
    resp = await conn.request("POST", "/pay", body=b"1")
    assert resp.status == 502
    assert up.connections == 1


def _head_with_headers(total: int) -> bytes:
    """A 200 response head whose header lines add up to about `total` bytes (100-byte lines)."""
    lines = b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"v" * 84) for i in range(total // 100))
    return b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok"


async def test_upstream_response_head_over_the_limit_is_502_and_the_connection_is_not_reused(scripted):
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await _read_head(reader)
            size = 3000 if b"GET /big" in head else 1000
            writer.write(_head_with_headers(size))
            await writer.drain()

    up, mesh, conn = await scripted(answer, service=NO_RETRIES, client={"maxResponseHeaderBytes": 2048})
    small = await conn.request("GET", "/small")
    assert small.status == 200 and small.body == b"ok"
    assert small.header("X-Pad-0009") == "v" * 84
    resp = await conn.request("GET", "/big")
    assert resp.status == 502
    assert resp.header("l5d-err") == (
        f"response head from 127.0.0.1:{up.port} exceeds 2048 bytes (maxResponseHeaderBytes)"
    )
    again = await conn.request("GET", "/small")  # a fresh upstream connection
    assert again.status == 200
    assert up.connections == 2


async def test_one_endless_upstream_header_is_cut_off_at_the_limit(scripted):
    """httptools keeps a header line until it ends: the limit must hold while it never does."""
    sent = 0
    cut = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        try:
            while sent < 10 * 1024 * 1024:
                writer.write(b"a" * 16384)
                sent += 16384
                await writer.drain()
        except ConnectionError:
            cut.set()
        else:
            await reader.read()  # meshd should have hung up long before this
            cut.set()

    up, mesh, conn = await scripted(endless, service=NO_RETRIES)
    resp = await conn.request("GET", "/")
    assert resp.status == 502
    assert resp.header("l5d-err") == (
        f"response head from 127.0.0.1:{up.port} exceeds 65536 bytes (maxResponseHeaderBytes)"
    )
    await asyncio.wait_for(cut.wait(), timeout=5)
    assert sent < 10 * 1024 * 1024  # meshd closed the connection instead of reading on


async def test_upstream_stalling_mid_body_is_cut_after_response_idle_timeout(scripted):
    """The head and 3 of 10 body bytes arrive, then nothing: after `responseIdleTimeoutMs` meshd
    gives up on the upstream connection and cuts the client's (the response had begun)."""
    upstream_closed = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await reader.read()  # returns when meshd closes the connection
        upstream_closed.set()

    up, mesh, conn = await scripted(stall, service=NO_RETRIES, client={
        "responseIdleTimeoutMs": 200,
        "failureAccrual": {"kind": "consecutiveFailures", "failures": 1},
    })
    await conn.send(build_request("GET", "/"))
    received = await asyncio.wait_for(conn.reader.read(), timeout=5)  # to EOF
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\nabc")
    await asyncio.wait_for(upstream_closed.wait(), timeout=5)
    (client,) = mesh.daemon.routers[0].clients.values()
    (node,) = client.balancer.nodes()
    assert node.pending == 0  # the attempt is over...
    assert node.ejections == 1  # ...and counted as the endpoint's failure


async def test_upstream_that_never_sends_a_response_head_is_504_after_response_head_timeout(scripted):
    """Issue #13: no default bound on an upstream that reads the request and never answers (the
    client waited forever). After `responseHeadTimeoutMs` the attempt fails as the endpoint's
    failure, 504, and the upstream connection is closed."""
    upstream_closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        await reader.read()  # returns when meshd closes the connection
        upstream_closed.set()

    up, mesh, conn = await scripted(silent, service=NO_RETRIES, client={
        "responseHeadTimeoutMs": 200,
        "failureAccrual": {"kind": "consecutiveFailures", "failures": 1},
    })
    resp = await asyncio.wait_for(conn.request("GET", "/"), 5)
    assert resp.status == 504
    assert resp.header("l5d-err") == (
        f"127.0.0.1:{up.port} sent no response head within 200 ms of the request (responseHeadTimeoutMs)"
    )
    await asyncio.wait_for(upstream_closed.wait(), timeout=5)
    (client,) = mesh.daemon.routers[0].clients.values()
    (node,) = client.balancer.nodes()
    assert node.pending == 0 and node.ejections == 1  # the endpoint's failure
    (state,) = mesh.daemon.routers[0].services.values()
    assert state.timeouts.attempt == 1  # counted with the attempt timeouts


async def test_upstream_that_stops_reading_the_request_body_is_502_after_response_idle_timeout(scripted):
    """Issue #13: nothing bounded how long an upstream may hold a request body. An upstream that
    reads the head and then nothing: meshd's writes to it pause; after `responseIdleTimeoutMs`
    without progress either way the attempt fails and the upstream connection is closed."""
    async def stops_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.transport.pause_reading()  # read no more of the body: the socket buffers fill up
        await asyncio.Event().wait()  # until the test ends

    size = 64 * 1024 * 1024
    up, mesh, conn = await scripted(stops_reading, service=NO_RETRIES, client={"responseIdleTimeoutMs": 300})
    await conn.send(build_request("POST", "/upload", [("Content-Length", str(size))]))

    async def upload() -> None:
        with contextlib.suppress(ConnectionError):
            for _ in range(size // 65536):
                await conn.send(b"x" * 65536)

    uploading = asyncio.create_task(upload())
    resp = await asyncio.wait_for(conn.read_response(), 10)
    assert resp.status == 502
    assert resp.header("l5d-err") == (
        f"127.0.0.1:{up.port} read nothing of the request body for 300 ms (responseIdleTimeoutMs)"
    )
    assert resp.header("connection") == "close"  # the rest of the body will never be read
    (client,) = mesh.daemon.routers[0].clients.values()
    stats = client.pool_statistics()
    assert (stats.busy, stats.closed) == (0, 1)  # meshd closed the upstream connection
    uploading.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await uploading


async def test_malformed_upstream_response_is_502(scripted):
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
        await reader.read()

    up, mesh, conn = await scripted(garbage, service=NO_RETRIES)
    resp = await conn.request("GET", "/")
    assert resp.status == 502
    assert (resp.header("l5d-err") or "").startswith(f"malformed response from 127.0.0.1:{up.port}")


def _answer_each_with(*heads: bytes) -> Callable[..., Awaitable[None]]:
    """A script answering the requests of one connection with `heads`, in order (no bodies)."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for head in heads:
            await _read_head(reader)
            writer.write(head)
        await reader.read()

    return script


async def test_a_204_loses_its_content_length_and_the_connection_stays_in_step(scripted):
    """RFC 9110 §8.6: a server must not send Content-Length in a 204. An upstream that does: the
    header is not forwarded, no body is read for it, and the next response on the same upstream
    connection is parsed correctly."""
    up, mesh, conn = await scripted(_answer_each_with(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\nX-A: 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ), service=NO_RETRIES)
    await conn.send(build_request("DELETE", "/thing"))
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 204 No Content\r\n") and b"X-A: 1\r\n" in head
    assert b"content-length" not in head.lower()
    resp = await asyncio.wait_for(conn.request("GET", "/"), 5)
    assert (resp.status, resp.body) == (200, b"ok")
    assert up.connections == 1


@pytest.mark.parametrize("method, status", [("HEAD", 200), ("GET", 304)])
async def test_a_304_or_a_response_to_head_keeps_its_content_length(scripted, method: str, status: int):
    """RFC 9110 §8.6 allows Content-Length there (the length a 200 to a GET would have had)."""
    up, mesh, conn = await scripted(_answer_each_with(
        b"HTTP/1.1 %d X\r\nContent-Length: 5\r\n\r\n" % status,
    ), service=NO_RETRIES)
    await conn.send(build_request(method, "/"))
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 %d " % status) and b"\r\nContent-Length: 5\r\n" in head


async def test_an_upstream_content_length_over_2_63_is_502_not_forwarded(scripted):
    """2**64-1 used to be forwarded, then the body truncated; no client can hold it in 64 signed bits."""
    up, mesh, conn = await scripted(_answer_each_with(
        b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\nhello",
    ), service=NO_RETRIES)
    resp = await asyncio.wait_for(conn.request("GET", "/"), 5)
    assert resp.status == 502
    assert resp.header("l5d-err") == (
        f"malformed response from 127.0.0.1:{up.port}: Content-Length 18446744073709551615 exceeds 2**63-1"
    )


async def test_an_upstream_response_with_more_than_100_headers_is_502_and_the_connection_closed(scripted):
    closed = asyncio.Event()

    async def many_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        lines = b"".join(b"X-H%d: v\r\n" % i for i in range(101))
        writer.write(b"HTTP/1.1 200 OK\r\n" + lines + b"Content-Length: 2\r\n\r\nok")
        await reader.read()  # returns when meshd closes the connection
        closed.set()

    up, mesh, conn = await scripted(many_headers, service=NO_RETRIES)
    resp = await asyncio.wait_for(conn.request("GET", "/"), 5)
    assert resp.status == 502
    assert resp.header("l5d-err") == f"response from 127.0.0.1:{up.port} has more than 100 headers (maxResponseHeaders)"
    await asyncio.wait_for(closed.wait(), 5)


async def test_pool_exhausted_is_503_and_the_upstream_is_not_asked(make_mesh, make_upstream, client_conn):
    release = asyncio.Event()

    async def slow(req: Received) -> Reply:
        await release.wait()
        return Reply(200, [], b"slow")

    up = await make_upstream(slow)
    mesh = await make_mesh(service=NO_RETRIES, client={"pool": {"maxConnections": 1, "maxWaiters": 0}})
    mesh.register("svc", up)
    first = await client_conn(mesh.port)
    await first.send(build_request("GET", "/slow"))
    await asyncio.wait_for(up.request_event.wait(), 5)
    second = await client_conn(mesh.port)
    resp = await second.request("GET", "/")
    assert resp.status == 503
    assert "exhausted" in (resp.header("l5d-err") or "")
    release.set()
    assert (await first.read_response()).body == b"slow"
    assert up.requests == 1 and up.connections == 1


async def test_waiter_gets_the_connection_when_it_is_released(make_mesh, make_upstream, client_conn):
    release = asyncio.Event()

    async def slow(req: Received) -> Reply:
        if req.target == "/slow":
            await release.wait()
        return Reply(200, [], req.target.encode())

    up = await make_upstream(slow)
    mesh = await make_mesh(service=NO_RETRIES, client={"pool": {"maxConnections": 1, "maxWaiters": 1}})
    mesh.register("svc", up)
    first = await client_conn(mesh.port)
    await first.send(build_request("GET", "/slow"))
    await asyncio.wait_for(up.request_event.wait(), 5)
    second = await client_conn(mesh.port)
    await second.send(build_request("GET", "/waiting"))
    (client,) = mesh.daemon.routers[0].clients.values()
    await wait_until(lambda: client.pool_statistics().waiters == 1, timeout=5, message="a pool waiter")
    release.set()
    assert (await first.read_response()).body == b"/slow"
    assert (await second.read_response()).body == b"/waiting"
    assert up.connections == 1


async def test_total_timeout_is_504(make_mesh, make_upstream, client_conn):
    release = asyncio.Event()

    async def stuck(req: Received) -> Reply:
        await release.wait()
        return Reply(200, [], b"late")

    up = await make_upstream(stuck)
    mesh = await make_mesh(service={"totalTimeoutMs": 200})
    mesh.register("svc", up)
    conn = await client_conn(mesh.port)
    resp = await asyncio.wait_for(conn.request("GET", "/"), 5)
    assert resp.status == 504
    assert resp.header("l5d-err") == "request exceeded totalTimeoutMs (200 ms)"
    release.set()
    # the timed-out exchange was aborted, never reused: the next request gets a fresh connection
    after = await conn.request("GET", "/")
    assert after.status == 200 and after.body == b"late"
    assert up.connections == 2


async def test_attempt_timeout_is_504_naming_the_endpoint(make_mesh, make_upstream, client_conn):
    release = asyncio.Event()

    async def stuck(req: Received) -> Reply:
        await release.wait()
        return Reply(200, [], b"late")

    up = await make_upstream(stuck)
    mesh = await make_mesh(service=NO_RETRIES, client={"requestAttemptTimeoutMs": 150})
    mesh.register("svc", up)
    conn = await client_conn(mesh.port)
    resp = await asyncio.wait_for(conn.request("GET", "/"), 5)
    release.set()
    assert resp.status == 504
    assert (
        resp.header("l5d-err") == f"attempt to 127.0.0.1:{up.port} exceeded requestAttemptTimeoutMs (150 ms)"
    )


def _split_response(raw: bytes) -> tuple[bytes, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


async def test_reset_mid_response_cuts_the_connection_and_sends_only_true_bytes(
    make_mesh, make_upstream, client_conn
):
    payload = bytes(range(256)) * 4096  # 1 MiB, Content-Length framed

    async def reset(req: Received) -> Reply:
        return Reply(200, [], payload, reset_midway=True)

    up = await make_upstream(reset)
    mesh = await make_mesh(service=NO_RETRIES)
    mesh.register("svc", up)
    conn = await client_conn(mesh.port)
    await conn.send(build_request("GET", "/big"))
    raw = await asyncio.wait_for(conn.read_eof(), 5)
    head, body = _split_response(raw)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: %d" % len(payload) in head
    assert len(body) < len(payload)
    assert body == payload[: len(body)]  # a truncated prefix: nothing else was appended


async def test_reset_mid_chunked_response_never_sends_the_last_chunk(scripted, make_upstream):
    async def dying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nfirst part;\r\n")
        writer.write(b"c\r\nsecond part;\r\n")
        await writer.drain()

    up, mesh, conn = await scripted(dying, service=NO_RETRIES)
    await conn.send(build_request("GET", "/"))
    raw = await asyncio.wait_for(conn.read_eof(), 5)
    head, body = _split_response(raw)
    assert b"Transfer-Encoding: chunked" in head
    data, complete = _decode_chunks(body)
    assert data == b"first part;second part;"
    assert not complete  # no terminating 0-chunk, and nothing after the last true byte


def _decode_chunks(body: bytes) -> tuple[bytes, bool]:
    """Decode chunked framing; `complete` says whether the last chunk arrived. Anything else fails."""
    out: list[bytes] = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        assert sep, f"truncated chunk size line {body!r}"
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return b"".join(out), True
        assert rest[size : size + 2] == b"\r\n", f"bad chunk {body!r}"
        out.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(out), False


async def test_error_responses_are_counted_by_status_class(make_mesh, client_conn):
    mesh = await make_mesh()
    mesh.register("empty")
    conn = await client_conn(mesh.port)
    for host in ("nosuch", "empty", "empty"):
        await conn.request("GET", "/", host=host)
    services = mesh.daemon.routers[0].stats.services
    assert services["/svc/nosuch"].by_class[5] == 1
    assert services["/svc/empty"].by_class[5] == 2


async def test_error_before_the_body_was_read_closes_the_connection(make_mesh, client_conn):
    mesh = await make_mesh()
    conn = await client_conn(mesh.port)
    # the head arrives, the body never does: meshd answers at once and cannot reuse the connection
    await conn.send(b"POST /pay HTTP/1.1\r\nHost: nosuch\r\nContent-Length: 100\r\n\r\n")
    resp = await asyncio.wait_for(conn.read_response(), 5)
    assert resp.status == 502 and resp.header("l5d-err")
    assert resp.header("connection") == "close"
    assert await asyncio.wait_for(conn.is_closed_by_peer(), 5)


async def test_expect_100_continue_to_an_unknown_service_gets_the_error_without_100(make_mesh, client_conn):
    mesh = await make_mesh()
    conn = await client_conn(mesh.port)
    await conn.send(b"PUT /x HTTP/1.1\r\nHost: nosuch\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    resp = await asyncio.wait_for(conn.read_response(), 5)
    assert resp.status == 502  # the final answer, not "100 Continue": the client need not send its body
    assert resp.header("connection") == "close"
    assert await asyncio.wait_for(conn.is_closed_by_peer(), 5)


def _error_classes() -> set[type[MeshdError]]:
    found: set[type[MeshdError]] = {MeshdError}
    todo: list[type[MeshdError]] = [MeshdError]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_error_meshd_produces_is_documented_with_its_status():
    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    for cls in _error_classes():
        if not cls.__module__.startswith("meshd."):
            continue
        assert f"`{cls.__name__}`" in text, f"docs/errors.md does not mention {cls.__name__}"
        rows = [line for line in text.splitlines() if f"`{cls.__name__}`" in line and line.startswith("|")]
        if rows:
            assert any(f"| {cls.status} |" in row for row in rows), (
                f"{cls.__name__}: status {cls.status} not in its rows"
            )
