"""Admission control through a real meshd: past `maxConcurrentRequests` requests wait for a turn
(at most `maxPendingRequests`, for at most `pendingTimeoutMs`) or get 503 at once, with `l5d-err`
and `Retry-After`, and never reach the upstream. Counted on /metrics."""

from __future__ import annotations

import asyncio

from tests.support.client import RawConnection
from tests.support.clock import FakeClock
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until


async def gated_upstream(make_upstream):  # type: ignore[no-untyped-def]
    """An upstream that holds every request until the test opens the gate."""
    gate = asyncio.Event()

    async def held(request: Received) -> Reply:
        await gate.wait()
        return Reply(200, [], b"done")

    return await make_upstream(held), gate


async def test_past_the_limit_requests_wait_then_are_refused_at_once_and_never_reach_the_upstream(
    make_mesh, make_upstream
):
    up, gate = await gated_upstream(make_upstream)
    mesh = await make_mesh(maxConcurrentRequests=2, maxPendingRequests=1)
    mesh.register("svc", up)
    admission = mesh.daemon.routers[0].admission
    conns = [await RawConnection.open(mesh.port) for _ in range(4)]
    served = [asyncio.ensure_future(c.request("GET", f"/{i}", host="svc")) for i, c in enumerate(conns[:2])]
    await wait_until(lambda: up.requests == 2, timeout=5, message="two requests reach the upstream")
    waiting = asyncio.ensure_future(conns[2].request("GET", "/2", host="svc"))
    await wait_until(lambda: admission.pending == 1, timeout=5, message="the third waits for a turn")

    refused = await asyncio.wait_for(conns[3].request("GET", "/3", host="svc"), 5)

    assert refused.status == 503
    assert refused.header("retry-after") == "1"
    assert refused.header("l5d-err") == (
        "router outgoing is overloaded: 2 requests in flight (maxConcurrentRequests) and 1 waiting "
        "(maxPendingRequests)"
    )
    assert up.requests == 2  # neither the waiting nor the refused one reached it
    gate.set()
    answers = [await asyncio.wait_for(f, 5) for f in [*served, waiting]]
    assert [a.status for a in answers] == [200, 200, 200]
    assert up.requests == 3
    scrape = await RawConnection.open(mesh.admin_port)
    metrics = (await asyncio.wait_for(scrape.request("GET", "/metrics", host="localhost"), 10)).body.decode()
    await scrape.close()
    assert 'meshd_overloaded_total{reason="queue_full",router="outgoing"} 1' in metrics
    assert 'meshd_requests_queued_total{router="outgoing"} 1' in metrics
    assert 'meshd_requests_in_flight{router="outgoing"} 0' in metrics
    for c in conns:
        await c.close()


async def test_a_waiting_request_is_refused_at_the_pending_timeout_exactly(make_mesh, make_upstream):
    clock = FakeClock(start=0.0)
    up, gate = await gated_upstream(make_upstream)
    mesh = await make_mesh(clock=clock, maxConcurrentRequests=1, maxPendingRequests=10, pendingTimeoutMs=300)
    mesh.register("svc", up)
    admission = mesh.daemon.routers[0].admission
    first, second = await RawConnection.open(mesh.port), await RawConnection.open(mesh.port)
    held = asyncio.ensure_future(first.request("GET", "/", host="svc"))
    await wait_until(lambda: up.requests == 1, timeout=5, message="the first request is served")
    waiting = asyncio.ensure_future(second.request("GET", "/", host="svc"))
    await wait_until(lambda: admission.pending == 1, timeout=5, message="the second waits")

    clock.advance(0.3 - 1 / 1024)
    await asyncio.sleep(0)
    assert not waiting.done() and admission.pending == 1
    clock.advance(1 / 1024)
    refused = await asyncio.wait_for(waiting, 5)

    assert refused.status == 503
    assert refused.header("l5d-err") == (
        "router outgoing is overloaded: waited 300 ms for one of 1 request slots (pendingTimeoutMs)"
    )
    assert admission.rejected_timeout == 1 and up.requests == 1
    gate.set()
    assert (await asyncio.wait_for(held, 5)).status == 200
    await first.close()
    await second.close()


async def test_a_client_that_leaves_while_waiting_gives_up_its_place(make_mesh, make_upstream):
    up, gate = await gated_upstream(make_upstream)
    mesh = await make_mesh(maxConcurrentRequests=1, maxPendingRequests=1)
    mesh.register("svc", up)
    admission = mesh.daemon.routers[0].admission
    first, leaver, later = [await RawConnection.open(mesh.port) for _ in range(3)]
    held = asyncio.ensure_future(first.request("GET", "/", host="svc"))
    await wait_until(lambda: up.requests == 1, timeout=5, message="the first request is served")
    await leaver.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    await wait_until(lambda: admission.pending == 1, timeout=5, message="the second waits")
    await leaver.close()
    await wait_until(lambda: admission.pending == 0, timeout=5, message="the leaver's place is freed")
    waiting = asyncio.ensure_future(later.request("GET", "/", host="svc"))  # queued, not refused
    await wait_until(lambda: admission.pending == 1, timeout=5, message="the third waits")
    gate.set()
    assert (await asyncio.wait_for(held, 5)).status == 200
    assert (await asyncio.wait_for(waiting, 5)).status == 200
    assert up.requests == 2 and admission.inflight == 0
    await first.close()
    await later.close()
