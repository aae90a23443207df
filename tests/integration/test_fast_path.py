"""The fast path (meshd/fastpath.py): which requests it serves without a task, what they still get,
and how each kind of request it cannot finish is handed over to the coroutine path.

Every test here runs twice, with the fast path on and off (`MESHD_FAST_PATH=0`): what a client
and an upstream see, and every counter, are asserted the same on both; only the counters of the
fast path itself (`FastPath.taken`, `handed_over`) and the tasks differ, and those are asserted
per path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import cast

import pytest

from meshd.fastpath import FastPath
from meshd.listener import CONNECTION_TASK
from routing.path import Path
from tests.support.client import RawConnection, build_request
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until


def fast_of(mesh) -> FastPath | None:
    listener = mesh.daemon.bound[0].listener
    fast = listener.fast
    assert fast is None or isinstance(fast, FastPath)
    return fast


def serve_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t.get_name() == CONNECTION_TASK}


def client_of(mesh, name: str):
    return mesh.daemon.routers[0].clients[Path.read(name)]


async def warm(mesh) -> None:
    """One request on a connection of its own: binds the name and fills the pool."""
    conn = await RawConnection.open(mesh.port)
    resp = await asyncio.wait_for(conn.request("GET", "/warm", host="svc"), 5)
    assert resp.status == 200
    await conn.close()


async def test_a_warm_request_runs_without_a_task_with_every_feature_applied(make_mesh, make_upstream, path_mode):
    up = await make_upstream()
    mesh = await make_mesh(service={"addSuccessClassHeader": True})
    mesh.register("svc", up)
    await warm(mesh)
    fast = fast_of(mesh)
    assert (fast is not None) == (path_mode == "fast")
    taken = fast.taken if fast is not None else 0
    handed = fast.handed_over if fast is not None else 0
    tasks_before = serve_tasks()

    conn = await RawConnection.open(mesh.port)
    for i in range(3):
        resp = await asyncio.wait_for(conn.request("GET", f"/r{i}", host="svc"), 5)
        assert resp.status == 200 and resp.body == b"ok\n"
        # the retry stage's header, hygiene's and the listener's
        assert resp.header("l5d-success-class") == "1.0"
        assert resp.header("via") is not None
    post = await asyncio.wait_for(conn.request("POST", "/p", body=b"small body", host="svc"), 5)
    assert post.status == 200
    if fast is not None:
        assert (fast.taken - taken, fast.handed_over - handed) == (4, 0)
        assert not serve_tasks() - tasks_before  # no task for this connection at all
    else:
        assert len(serve_tasks() - tasks_before) == 1  # the connection's one task

    # the upstream saw what the slow path sends: hygiene, identification, the destination
    got = [r for r in up.received if r.target != "/warm"]
    assert [r.target for r in got] == ["/r0", "/r1", "/r2", "/p"]
    assert got[3].body == b"small body"
    for r in got:
        assert r.header("l5d-reqid") and r.header("l5d-dst-service") == "/svc/svc"
        assert r.header("l5d-dst-client") == "/#/fs/svc" and "meshd" in (r.header("via") or "")
    # stats, the recent ring, the endpoint's counters, the balancer and the retry budget
    router = mesh.daemon.routers[0]
    assert router.stats.services["/svc/svc"].by_class[2] == 5
    newest = router.stats.recent.newest_first()[0]
    assert (newest.status, newest.attempts, newest.service) == (200, 1, "/svc/svc")
    assert newest.reqid == got[3].header("l5d-reqid") and newest.node is not None
    client = client_of(mesh, "/#/fs/svc")
    assert client.attempt_totals().requests == 5 and client.inflight == 0
    assert all(n.pending == 0 for n in client.balancer.nodes())
    state = router.services[Path.read("/svc/svc")]
    assert state.budget.statistics().deposits == 5
    assert router.admission.inflight == 0
    await conn.close()


async def test_pipelined_requests_are_answered_in_order(make_mesh, make_upstream, path_mode):
    async def echo(req: Received) -> Reply:
        return Reply(200, [], req.target.encode())

    up = await make_upstream(echo)
    mesh = await make_mesh()
    mesh.register("svc", up)
    await warm(mesh)
    conn = await RawConnection.open(mesh.port)
    targets = [f"/{i}" for i in range(8)]
    await conn.send(b"".join(build_request("GET", t, host="svc") for t in targets))
    bodies = [(await asyncio.wait_for(conn.read_response(), 5)).body for _ in targets]
    assert bodies == [t.encode() for t in targets]
    fast = fast_of(mesh)
    if fast is not None:
        assert fast.taken >= 8
    await conn.close()


async def test_a_retryable_5xx_is_handed_over_and_retried_on_another_replica(make_mesh, make_upstream, path_mode):
    failing = await make_upstream(lambda req: _status(503), name="failing")
    healthy = await make_upstream(name="healthy")
    mesh = await make_mesh(client={"failureAccrual": {"kind": "none"}}, service={"retries": {"backoff": {"kind": "constant", "ms": 0}}})
    mesh.register("svc", failing, healthy)
    conn = await RawConnection.open(mesh.port)
    # warm both replicas' pools, then count: every GET is answered 200, the 503s retried once each
    for _ in range(20):
        resp = await asyncio.wait_for(conn.request("GET", "/", host="svc"), 5)
        assert resp.status == 200
    state = mesh.daemon.routers[0].services[Path.read("/svc/svc")]
    assert state.retries.response == failing.requests > 0
    assert healthy.requests == 20
    # nothing was sent twice beyond the retries themselves
    assert failing.requests + healthy.requests == 20 + state.retries.response
    fast = fast_of(mesh)
    if fast is not None:
        assert fast.handed_over >= state.retries.response
    client = client_of(mesh, "/#/fs/svc")
    assert client.inflight == 0 and client.retrying == 0
    await conn.close()


async def _status(status: int) -> Reply:
    return Reply(status, [], b"no\n")


class _DropsSecondRequest(asyncio.Protocol):
    """An upstream that answers the first request of each connection and closes the connection
    without a byte on the second (as an upstream whose idle timeout races meshd's reuse)."""

    seen: list[bytes]

    def __init__(self, seen: list[bytes]) -> None:
        self.seen = seen
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.seen.append(data.split(b"\r\n", 1)[0])
        self.count += 1
        if self.count == 1:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        else:
            self.transport.close()


@pytest.fixture
async def dropping_upstream() -> AsyncIterator[tuple[int, list[bytes]]]:
    seen: list[bytes] = []
    server = await asyncio.get_running_loop().create_server(lambda: _DropsSecondRequest(seen), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], seen
    server.close()


async def test_a_stale_pooled_connection_is_sent_again_on_a_fresh_one(make_mesh, dropping_upstream, path_mode):
    port, seen = dropping_upstream
    mesh = await make_mesh()
    mesh.register("svc", f"127.0.0.1 {port}")
    conn = await RawConnection.open(mesh.port)
    assert (await asyncio.wait_for(conn.request("GET", "/1", host="svc"), 5)).status == 200
    # the pooled connection is closed unseen by the upstream when the second request arrives:
    # an idempotent request goes again on a fresh connection, once
    assert (await asyncio.wait_for(conn.request("GET", "/2", host="svc"), 5)).status == 200
    assert seen == [b"GET /1 HTTP/1.1", b"GET /2 HTTP/1.1", b"GET /2 HTTP/1.1"]
    # a POST is not sent again: the upstream may have acted on it (502, as the slow path answers)
    resp = await asyncio.wait_for(conn.request("POST", "/3", body=b"x", host="svc"), 5)
    assert resp.status == 502 and "closed an idle keep-alive connection" in (resp.header("l5d-err") or "")
    assert seen[3:] == [b"POST /3 HTTP/1.1"]
    client = client_of(mesh, "/#/fs/svc")
    assert client.inflight == 0
    assert client.attempt_totals().failures == 1
    fast = fast_of(mesh)
    if fast is not None:
        assert fast.handed_over >= 2  # the first request (not yet bound), the resend, the POST's error
    await conn.close()


async def test_a_client_that_leaves_mid_request_cancels_it(make_mesh, make_upstream, path_mode):
    gate = asyncio.Event()

    async def slow(req: Received) -> Reply:
        if req.target == "/slow":
            await gate.wait()
        return Reply(200, [], b"ok\n")

    up = await make_upstream(slow)
    mesh = await make_mesh()
    mesh.register("svc", up)
    await warm(mesh)
    router = mesh.daemon.routers[0]
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("GET", "/slow", host="svc"))
    await wait_until(lambda: any(r.target == "/slow" for r in up.received), timeout=5, message="/slow upstream")
    await conn.close()
    await wait_until(
        lambda: router.stats.services["/svc/svc"].by_class[4] == 1, timeout=5, message="counted as 499"
    )
    client = client_of(mesh, "/#/fs/svc")
    await wait_until(lambda: client.inflight == 0, timeout=5, message="the attempt ended")
    assert router.admission.inflight == 0
    assert all(n.pending == 0 for n in client.balancer.nodes())
    # the upstream connection of the abandoned attempt was aborted, not reused
    await wait_until(lambda: up.open_connections == 0, timeout=5, message="the upstream connection closed")
    gate.set()


async def test_a_request_a_filter_refuses_is_answered_as_on_the_slow_path(make_mesh, make_upstream, path_mode):
    up = await make_upstream()
    mesh = await make_mesh(identifier={"kind": "header", "header": "x-svc"})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    ok = await asyncio.wait_for(conn.request("GET", "/", headers=[("x-svc", "svc")], host="svc"), 5)
    assert ok.status == 200
    ok = await asyncio.wait_for(conn.request("GET", "/", headers=[("x-svc", "svc")], host="svc"), 5)
    assert ok.status == 200
    refused = await asyncio.wait_for(conn.request("GET", "/", host="svc"), 5)
    assert refused.status == 400 and "x-svc header is absent" in (refused.header("l5d-err") or "")
    assert await conn.is_closed_by_peer()  # after a 400, as always
    await conn.close()
    conn = await RawConnection.open(mesh.port)
    ok = await asyncio.wait_for(conn.request("GET", "/", headers=[("x-svc", "svc")], host="svc"), 5)
    assert ok.status == 200
    assert up.requests == 3
    assert mesh.daemon.routers[0].stats.services["_unidentified"].by_class[4] == 1
    assert mesh.daemon.routers[0].admission.inflight == 0
    await conn.close()


async def test_a_caller_deadline_or_a_total_timeout_takes_the_slow_path(make_mesh, make_upstream, path_mode):
    up = await make_upstream()
    mesh = await make_mesh(services=[{"prefix": "/svc/timed", "totalTimeoutMs": 5000}])
    mesh.register("svc", up)
    mesh.register("timed", up)
    await warm(mesh)
    conn = await RawConnection.open(mesh.port)
    fast = fast_of(mesh)
    handed = fast.handed_over if fast is not None else 0
    # a trusted caller's deadline (loopback is trusted by default) goes on to the upstream
    now_ns = time.time_ns()
    deadline = f"{now_ns} {now_ns + 30 * 10**9}"
    resp = await asyncio.wait_for(conn.request("GET", "/d", headers=[("l5d-ctx-deadline", deadline)], host="svc"), 5)
    assert resp.status == 200
    assert up.received[-1].header("l5d-ctx-deadline") is not None
    for _ in range(2):  # a name with a total timeout: its deadline is sent upstream too
        resp = await asyncio.wait_for(conn.request("GET", "/t", host="timed"), 5)
        assert resp.status == 200
        assert up.received[-1].header("l5d-ctx-deadline") is not None
    resp = await asyncio.wait_for(conn.request("HEAD", "/h", host="svc"), 5)
    assert resp.status == 200 and resp.body == b""
    if fast is not None:
        assert fast.handed_over - handed == 3  # the HEAD went the fast path
    await conn.close()
