"""Per-endpoint connection pools with real sockets: reuse, limits, idle expiry, upstream-closed connections.

The pool's decisions are unit-tested with a scripted dialer (tests/meshd/pool/test_pool.py);
these tests check the same rules end to end, where the upstream really closes sockets.
"""

from __future__ import annotations

import asyncio
from typing import Any

from meshd.client import Client
from tests.integration.test_metrics import scrape
from tests.support.client import RawConnection, build_request
from tests.support.upstreams import Received, Reply, ScriptedUpstream
from tests.support.waiting import wait_until

NO_RETRIES = {"retries": {"budget": {"minRetriesPerSec": 0, "percentCanRetry": 0.0}}}


def _only_client(mesh: Any) -> Client:
    (client,) = mesh.daemon.routers[0].clients.values()
    assert isinstance(client, Client)
    return client


async def test_requests_from_many_client_connections_share_one_pooled_connection(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    for _ in range(5):
        conn = await RawConnection.open(mesh.port)
        assert (await conn.request("GET", "/")).status == 200
        await conn.close()
    assert up.requests == 5
    assert up.connections == 1
    stats = _only_client(mesh).pool_statistics()
    assert (stats.opened, stats.idle, stats.busy) == (1, 1, 0)


async def test_concurrent_requests_never_open_more_than_max_connections(make_mesh, make_upstream):
    release = asyncio.Event()
    in_flight = 0
    peak = 0

    async def slow(req: Received) -> Reply:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        return Reply(200, [], req.target.encode())

    up = await make_upstream(slow)
    mesh = await make_mesh(client={"pool": {"maxConnections": 2, "maxWaiters": 10}})
    mesh.register("svc", up)
    conns = [await RawConnection.open(mesh.port) for _ in range(6)]
    for i, conn in enumerate(conns):
        await conn.send(build_request("GET", f"/{i}"))

    def four_waiting() -> bool:
        return bool(mesh.daemon.routers[0].clients) and _only_client(mesh).pool_statistics().waiters == 4

    await wait_until(four_waiting, timeout=5, message="four requests waiting for a connection")
    assert _only_client(mesh).pool_statistics().busy == 2
    release.set()
    bodies = [(await asyncio.wait_for(conn.read_response(), 5)).body for conn in conns]
    assert bodies == [f"/{i}".encode() for i in range(6)]
    assert up.connections == 2 and peak == 2
    for conn in conns:
        await conn.close()


async def test_idle_pooled_connection_is_closed_after_idle_time(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(client={"pool": {"idleTimeMs": 100}})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    assert (await conn.request("GET", "/")).status == 200
    await wait_until(
        lambda: up.open_connections == 0, timeout=5, message="meshd to close the idle connection"
    )
    stats = _only_client(mesh).pool_statistics()
    assert (stats.idle, stats.closed) == (0, 1)
    assert (await conn.request("GET", "/")).status == 200
    assert up.connections == 2
    await conn.close()


async def test_connection_the_upstream_closed_while_idle_is_never_handed_out(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(service=NO_RETRIES)
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    assert (await conn.request("GET", "/")).status == 200
    assert up.close_idle_connections() == 1
    client = _only_client(mesh)
    await wait_until(lambda: client.pool_statistics().idle == 0, timeout=5, message="meshd to see the close")
    # a POST may not be sent twice: it must go on a fresh connection the first time
    resp = await conn.request("POST", "/pay", body=b"1")
    assert resp.status == 200
    assert up.connections == 2 and up.requests == 2
    await conn.close()


async def test_upstream_keep_alive_timeout_shorter_than_meshds_is_harmless(make_mesh, make_upstream):
    up = await make_upstream(keep_alive_timeout_s=0.05)
    mesh = await make_mesh(service=NO_RETRIES)
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    for i in range(3):
        assert (await conn.request("POST", f"/{i}", body=b"x")).status == 200
        client = _only_client(mesh)

        def upstream_closed_it(client: Client = client) -> bool:
            return client.pool_statistics().idle == 0

        await wait_until(upstream_closed_it, timeout=5, message="the upstream's timeout")
    assert up.connections == 3
    await conn.close()


async def test_get_on_a_connection_closed_as_it_was_reused_is_sent_again_transparently(make_mesh):
    """The race an idle pool cannot see: the upstream closes just as meshd reuses the connection."""
    served: list[bytes] = []

    async def one_request_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        served.append(head.split(b" ", 2)[1])
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.readuntil(b"\r\n\r\n")  # the next request arrives: hang up without a byte

    async with ScriptedUpstream(one_request_per_connection) as up:
        mesh = await make_mesh(service=NO_RETRIES)
        mesh.register("svc", up.address_line)
        conn = await RawConnection.open(mesh.port)
        assert (await conn.request("GET", "/first")).status == 200
        second = await conn.request("GET", "/second")
        assert (second.status, second.body) == (200, b"ok")
        assert served == [b"/first", b"/second"]
        assert up.connections == 2
        (state,) = mesh.daemon.routers[0].services.values()
        assert (state.retries.requeue, state.retries.error) == (0, 0)  # not a retry: the pool re-sent it
        await conn.close()


async def test_post_on_a_connection_closed_as_it_was_reused_is_not_sent_again(make_mesh):
    async def one_request_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await reader.readuntil(b"\r\n\r\n")

    async with ScriptedUpstream(one_request_per_connection) as up:
        mesh = await make_mesh(service=NO_RETRIES)
        mesh.register("svc", up.address_line)
        conn = await RawConnection.open(mesh.port)
        assert (await conn.request("GET", "/first")).status == 200
        second = await conn.request("POST", "/pay", body=b"1")
        assert second.status == 502
        assert "closed an idle keep-alive connection" in (second.header("l5d-err") or "")
        assert up.connections == 1
        await conn.close()


async def test_each_endpoint_has_its_own_pool(make_mesh, make_upstream):
    a = await make_upstream(name="a")
    b = await make_upstream(name="b")
    mesh = await make_mesh(client={"loadBalancer": {"kind": "roundRobin"}})
    mesh.register("svc", a, b)
    conn = await RawConnection.open(mesh.port)
    for _ in range(10):
        assert (await conn.request("GET", "/")).status == 200
    assert (a.connections, b.connections) == (1, 1)
    assert a.requests + b.requests == 10
    pools = {e.label: e.pool.statistics() for e in _only_client(mesh).endpoints()}
    assert sorted(p.opened for p in pools.values()) == [1, 1]
    await conn.close()


async def test_requests_waiting_behind_slow_request_bodies_get_503_after_the_queue_timeout(make_mesh, make_upstream):
    """Issue #13, bug 2, the pool's side: clients that send a request head and 1 byte of a 1,000-byte
    body hold every upstream connection; a normal GET to the service used to wait with no end.
    It now fails after `pool.queueTimeoutMs` with 503, never written (a retry may requeue it)."""
    up = await make_upstream()
    mesh = await make_mesh(service=NO_RETRIES, client={"pool": {"maxConnections": 2, "queueTimeoutMs": 200}})
    mesh.register("svc", up)
    slow = [await RawConnection.open(mesh.port) for _ in range(2)]
    for conn in slow:
        await conn.send(build_request("POST", "/upload", [("Content-Length", "1000")]) + b"x")

    def every_connection_busy() -> bool:
        return bool(mesh.daemon.routers[0].clients) and _only_client(mesh).pool_statistics().busy == 2

    await wait_until(every_connection_busy, timeout=5, message="the slow bodies to hold both connections")
    normal = await RawConnection.open(mesh.port)
    resp = await asyncio.wait_for(normal.request("GET", "/"), 5)
    assert resp.status == 503
    assert resp.header("l5d-err") == (
        f"waited 200 ms for a connection to 127.0.0.1:{up.port}: all 2 connections busy (pool.queueTimeoutMs)"
    )
    stats = _only_client(mesh).pool_statistics()
    assert (stats.queue_timeouts, stats.waiters, stats.busy) == (1, 0, 2)
    assert up.requests == 0  # nothing of the GET reached the upstream
    scraped = await scrape(mesh)
    assert scraped.value("meshd_pool_queue_timeouts_total", router="outgoing", client="/#/fs/svc") == 1
    # the slow clients finish their bodies: served as usual, and the pool serves again
    for conn in slow:
        await conn.send(b"x" * 999)
        assert (await asyncio.wait_for(conn.read_response(), 5)).status == 200
    assert (await asyncio.wait_for(normal.request("GET", "/"), 5)).status == 200
    for conn in [*slow, normal]:
        await conn.close()
