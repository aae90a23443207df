"""The proxy path end to end: real upstreams and a real meshd listener on loopback."""

from __future__ import annotations

import asyncio
import gc

from meshd.fastpath import enabled as fast_path_enabled
from meshd.http.messages import Request, Response
from meshd.listener import CONNECTION_TASK
from meshd.pipeline.context import RouteContext
from tests.support.client import RawConnection, build_request
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until


async def test_get_is_forwarded_with_forwarding_and_l5d_headers(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("accounts", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/balance?x=1", [("X-Custom", "yes")], host="Accounts:4140")
    assert resp.status == 200
    assert resp.body == b"ok\n"
    assert resp.header("via") == "1.1 meshd"
    seen = up.received[0]
    assert seen.method == "GET" and seen.target == "/balance?x=1"
    assert seen.header("host") == "Accounts:4140"
    assert seen.header("x-custom") == "yes"
    assert seen.header("l5d-dst-service") == "/svc/accounts"
    assert seen.header("l5d-dst-client") == "/#/fs/accounts"
    assert seen.header("l5d-reqid")
    assert seen.header("via") == "1.1 meshd"
    assert seen.header("x-forwarded-for") == "127.0.0.1"
    await conn.close()


async def test_keep_alive_reuses_one_upstream_connection(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("accounts", up)
    conn = await RawConnection.open(mesh.port)
    for _ in range(20):
        resp = await conn.request("GET", "/", host="accounts")
        assert resp.status == 200
    assert up.requests == 20
    assert up.connections == 1
    await conn.close()


async def test_pipelined_requests_are_answered_in_order(make_mesh, make_upstream):
    async def handler(req: Received) -> Reply:
        return Reply(200, [], req.target.encode())

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    targets = [f"/{i}" for i in range(10)]
    await conn.send(b"".join(build_request("GET", t) for t in targets))
    bodies = [(await asyncio.wait_for(conn.read_response(), 5)).body for _ in targets]
    assert bodies == [t.encode() for t in targets]
    assert [r.target for r in up.received] == targets
    await conn.close()


def serve_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name() == CONNECTION_TASK}


async def test_one_task_serves_every_request_of_a_connection_in_order(make_mesh, make_upstream):
    # A connection's requests run in one task (not one per request): after a whole response
    # written at once, after a streamed one, and for pipelined requests queued behind both.
    async def handler(req: Received) -> Reply:
        body = b"x" * 2_000_000 if req.target == "/big" else req.target.encode()
        return Reply(200, [], body)

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    seen: set[asyncio.Task[object]] = set()
    for target in ("/a", "/big", "/b"):
        resp = await asyncio.wait_for(conn.request("GET", target, host="svc"), 5)
        assert resp.body == (b"x" * 2_000_000 if target == "/big" else target.encode())
        seen |= serve_tasks()
    targets = ["/big", "/1", "/2", "/big", "/3"]
    await conn.send(b"".join(build_request("GET", t) for t in targets))
    for t in targets:
        resp = await asyncio.wait_for(conn.read_response(), 5)
        assert resp.body == (b"x" * 2_000_000 if t == "/big" else t.encode())
        seen |= serve_tasks()
    assert len(seen) == 1
    await conn.close()
    await wait_until(lambda: not serve_tasks(), timeout=5, message="the connection's task ended with it")


async def test_idle_keep_alive_connections_hold_no_request_or_response(make_mesh, make_upstream):
    # An idle connection's task waits for the next request holding nothing of the last one: with
    # thousands of idle keep-alive clients, their last exchanges would otherwise stay in memory.
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    conns = [await RawConnection.open(mesh.port) for _ in range(5)]
    for conn in conns:
        resp = await asyncio.wait_for(conn.request("GET", "/", host="svc"), 5)
        assert resp.status == 200
    # on the slow path every connection has its task; on the fast path (meshd/fastpath.py) only
    # the first one, whose request found the name not yet bound and was handed over to a task
    assert len(serve_tasks()) == (1 if fast_path_enabled() else 5)
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, Request | Response | RouteContext)] == []
    for conn in conns:
        await conn.close()


async def test_http10_client_gets_response_and_close(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("GET", "/", version="1.0"))
    resp = await conn.read_response()
    assert resp.status == 200 and resp.body == b"ok\n"
    assert resp.header("connection") == "close"
    assert await conn.is_closed_by_peer()
    await conn.close()


async def test_post_body_with_content_length_is_forwarded(make_mesh, make_upstream):
    async def echo(req: Received) -> Reply:
        return Reply(200, [], req.body[::-1])

    up = await make_upstream(echo)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("POST", "/x", body=b"hello world")
    assert resp.body == b"dlrow olleh"
    assert up.received[0].header("content-length") == "11"
    await conn.close()


async def test_chunked_bodies_and_trailers_pass_both_ways(make_mesh, make_upstream):
    async def chunks():
        for part in (b"one ", b"two ", b"three"):
            yield part

    async def handler(req: Received) -> Reply:
        return Reply(200, [("Trailer", "x-checksum")], stream=chunks(), trailers=[("X-Checksum", "abc")])

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(
        b"POST /up HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Req-Trailer: 7\r\n\r\n"
    )
    resp = await conn.read_response()
    assert resp.status == 200
    assert resp.body == b"one two three"
    assert ("X-Checksum", "abc") in resp.trailers
    assert resp.header("transfer-encoding") == "chunked"
    got = up.received[0]
    assert got.body == b"hello world"
    assert got.header("transfer-encoding") == "chunked"
    assert ("X-Req-Trailer", "7") in got.trailers
    await conn.close()


async def test_head_204_and_304_carry_no_body_and_keep_the_connection(make_mesh, make_upstream):
    async def handler(req: Received) -> Reply:
        if req.target == "/204":
            return Reply(204, [])
        if req.target == "/304":
            return Reply(304, [("ETag", '"x"')])
        return Reply(200, [("Content-Type", "text/plain")], b"0123456789")

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    head = await conn.request("HEAD", "/")
    assert head.status == 200 and head.body == b""
    assert head.header("content-length") == "10"
    r204 = await conn.request("GET", "/204")
    assert r204.status == 204 and r204.body == b""
    r304 = await conn.request("GET", "/304")
    assert r304.status == 304 and r304.body == b""
    after = await conn.request("GET", "/")
    assert after.body == b"0123456789"
    assert up.connections == 1
    await conn.close()


async def test_expect_100_continue_is_answered_before_the_body(make_mesh, make_upstream):
    async def echo(req: Received) -> Reply:
        return Reply(200, [], req.body)

    up = await make_upstream(echo)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"PUT /x HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    interim = await conn.read_response()
    assert interim.status == 100
    await conn.send(b"data")
    final = await conn.read_response()
    assert final.status == 200 and final.body == b"data"
    assert up.received[0].header("expect") is None
    await conn.close()


async def test_hop_by_hop_headers_are_removed(make_mesh, make_upstream):
    async def handler(req: Received) -> Reply:
        return Reply(200, [("Keep-Alive", "timeout=5"), ("Connection", "X-Up-Private"), ("X-Up-Private", "1")], b"x")

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request(
        "GET",
        "/",
        [("Connection", "keep-alive, X-Private"), ("X-Private", "secret"), ("Keep-Alive", "1"), ("TE", "trailers"),
         ("Proxy-Connection", "keep-alive"), ("Upgrade-Insecure-Requests", "1")],
    )
    assert resp.status == 200
    got = up.received[0]
    for name in ("x-private", "keep-alive", "te", "proxy-connection"):
        assert got.header(name) is None, name
    assert got.header("upgrade-insecure-requests") == "1"
    assert resp.header("keep-alive") is None
    assert resp.header("x-up-private") is None
    await conn.close()


async def test_client_connection_close_is_honoured(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/", [("Connection", "close")])
    assert resp.status == 200
    assert resp.header("connection") == "close"
    assert await conn.is_closed_by_peer()
    await conn.close()


async def test_upstream_connection_close_is_not_reused(make_mesh, make_upstream):
    async def handler(req: Received) -> Reply:
        return Reply(200, [], b"x", close=True)

    up = await make_upstream(handler)
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    for _ in range(3):
        assert (await conn.request("GET", "/")).status == 200
    assert up.connections == 3
    await conn.close()


async def test_a_request_routed_back_to_meshd_is_stopped_as_a_loop(make_mesh):
    mesh = await make_mesh()
    mesh.register("self", f"127.0.0.1 {mesh.port}")  # a name that resolves to meshd itself
    conn = await RawConnection.open(mesh.port)
    resp = await asyncio.wait_for(conn.request("GET", "/", host="self"), 10)
    assert resp.status == 508
    assert "routing loop" in (resp.header("l5d-err") or "")
    await conn.close()
