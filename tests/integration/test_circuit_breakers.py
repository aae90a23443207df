"""A client's circuit breakers (`client.circuitBreakers`, Envoy's per-cluster limits): past a
limit an attempt is refused at once with 503, `l5d-err` naming the limit and `Retry-After`, is
counted by limit, and never reaches the upstream. A place frees as soon as an attempt ends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from tests.support.client import RawConnection
from tests.support.upstreams import Received, Reply, ScriptedUpstream
from tests.support.waiting import wait_until


async def held_upstream(make_upstream):  # type: ignore[no-untyped-def]
    gate = asyncio.Event()

    async def held(request: Received) -> Reply:
        if request.target == "/hold":
            await gate.wait()
        return Reply(200, [], b"ok")

    return await make_upstream(held), gate


async def scrape(mesh) -> str:  # type: ignore[no-untyped-def]
    conn = await RawConnection.open(mesh.admin_port)
    try:
        return (await asyncio.wait_for(conn.request("GET", "/metrics", host="localhost"), 10)).body.decode()
    finally:
        await conn.close()


def overflow_line(limit: str, count: int) -> str:
    return f'meshd_circuit_breaker_overflows_total{{client="/#/fs/svc",router="outgoing",limit="{limit}"}} {count}'


async def test_past_max_requests_an_attempt_is_refused_at_once_and_a_place_frees_when_one_ends(
    make_mesh, make_upstream
):
    up, gate = await held_upstream(make_upstream)
    mesh = await make_mesh(client={"circuitBreakers": {"maxRequests": 2}})
    mesh.register("svc", up)
    conns = [await RawConnection.open(mesh.port) for _ in range(4)]
    held = [asyncio.ensure_future(c.request("GET", "/hold", host="svc")) for c in conns[:2]]
    await wait_until(lambda: up.requests == 2, timeout=5, message="two attempts in flight")

    refused = await asyncio.wait_for(conns[2].request("GET", "/", host="svc"), 5)

    assert refused.status == 503 and refused.header("retry-after") == "1"
    assert refused.header("l5d-err") == (
        "circuit breaker of /#/fs/svc: 2 requests already in flight (circuitBreakers.maxRequests)"
    )
    assert up.requests == 2
    assert 'meshd_client_requests_in_flight{client="/#/fs/svc",router="outgoing"} 2' in await scrape(mesh)
    gate.set()
    assert [(await asyncio.wait_for(f, 5)).status for f in held] == [200, 200]
    assert (await asyncio.wait_for(conns[3].request("GET", "/", host="svc"), 5)).status == 200
    metrics = await scrape(mesh)
    assert overflow_line("maxRequests", 1) in metrics
    assert 'meshd_client_requests_in_flight{client="/#/fs/svc",router="outgoing"} 0' in metrics
    for c in conns:
        await c.close()


async def test_past_max_pending_requests_an_attempt_waiting_for_a_connection_is_refused(make_mesh, make_upstream):
    up, gate = await held_upstream(make_upstream)
    mesh = await make_mesh(client={"pool": {"maxConnections": 1}, "circuitBreakers": {"maxPendingRequests": 1}})
    mesh.register("svc", up)
    conns = [await RawConnection.open(mesh.port) for _ in range(3)]
    first = asyncio.ensure_future(conns[0].request("GET", "/hold", host="svc"))
    await wait_until(lambda: up.requests == 1, timeout=5, message="the one connection busy")
    waiting = asyncio.ensure_future(conns[1].request("GET", "/", host="svc"))
    client = mesh.daemon.routers[0].clients
    await wait_until(lambda: any(c.pending.count == 1 for c in client.values()), timeout=5,
                     message="an attempt waiting for the connection")

    refused = await asyncio.wait_for(conns[2].request("GET", "/", host="svc"), 5)

    assert refused.status == 503
    assert refused.header("l5d-err") == (
        "circuit breaker of /#/fs/svc: 1 requests already wait for a connection "
        "(circuitBreakers.maxPendingRequests)"
    )
    gate.set()
    assert (await asyncio.wait_for(first, 5)).status == 200
    assert (await asyncio.wait_for(waiting, 5)).status == 200
    assert overflow_line("maxPendingRequests", 1) in await scrape(mesh)
    for c in conns:
        await c.close()


async def test_a_retry_past_max_retries_is_refused_and_never_sent_the_caller_gets_the_upstreams_answer(
    make_mesh, make_upstream
):
    """A refused retry ends the request as an exhausted retry budget would: with the last real
    response (here the upstream's own 503), not the breaker's 503."""

    async def unavailable(request: Received) -> Reply:
        return Reply(503, [("x-from", "upstream")], b"down")

    up = await make_upstream(unavailable)
    mesh = await make_mesh(
        client={"circuitBreakers": {"maxRetries": 0}},
        service={"retries": {"backoff": {"kind": "constant", "ms": 0}}},
    )
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)

    resp = await asyncio.wait_for(conn.request("GET", "/", host="svc"), 5)

    assert (resp.status, resp.body, resp.header("x-from")) == (503, b"down", "upstream")
    assert resp.header("l5d-err") is None
    assert up.requests == 1  # the first attempt only: its retry was refused
    assert overflow_line("maxRetries", 1) in await scrape(mesh)
    # the connection is still usable, and the next request does the same
    assert (await asyncio.wait_for(conn.request("GET", "/", host="svc"), 5)).body == b"down"
    assert up.requests == 2
    await conn.close()


async def test_a_refused_retry_of_a_response_still_streaming_its_body_returns_that_response(
    make_mesh, make_upstream
):
    """A 503 whose body is still arriving cannot be kept aside while a retry runs: the breaker is
    asked before it would be discarded, and the caller gets it, streamed through."""
    gate = asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield b"first part;"
        await gate.wait()
        yield b"second part"

    async def streaming(request: Received) -> Reply:
        return Reply(503, [], stream=body())

    up = await make_upstream(streaming)
    mesh = await make_mesh(
        client={"circuitBreakers": {"maxRetries": 0}},
        service={"retries": {"backoff": {"kind": "constant", "ms": 0}}},
    )
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")

    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 5)
    gate.set()
    rest = await asyncio.wait_for(conn.reader.readuntil(b"0\r\n\r\n"), 5)

    assert head.startswith(b"HTTP/1.1 503 ") and b"l5d-err" not in head.lower()
    assert b"first part;" in rest and b"second part" in rest
    assert up.requests == 1
    assert overflow_line("maxRetries", 1) in await scrape(mesh)
    await conn.close()


async def test_a_refused_retry_after_an_upstream_failure_returns_that_failure(make_mesh):
    """The same for an attempt that failed rather than answered: the caller gets its 502."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the request was written; no answer comes

    async with ScriptedUpstream(hang_up) as up:
        mesh = await make_mesh(
            client={"circuitBreakers": {"maxRetries": 0}},
            service={"retries": {"backoff": {"kind": "constant", "ms": 0}}},
        )
        mesh.register("svc", up.address_line)
        conn = await RawConnection.open(mesh.port)

        resp = await asyncio.wait_for(conn.request("GET", "/", host="svc"), 5)

        assert resp.status == 502
        assert "closed the connection" in (resp.header("l5d-err") or "")
        assert up.connections == 1
        assert overflow_line("maxRetries", 1) in await scrape(mesh)
        await conn.close()
