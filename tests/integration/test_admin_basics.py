"""The admin basics the data plane promises: /admin/ping, /admin/ready and the core metric families.

tests/integration/test_metrics.py checks every metric family in depth; this file checks the
issue's minimum contract (names and label sets of the four core families, that they count the
traffic this test sends) and readiness: ready once listeners are up and names resolve, not
ready while draining.
"""

from __future__ import annotations

import asyncio
import pathlib

from prometheus_client.parser import text_string_to_metric_families

from meshd.expiry import Expiry
from tests.support.client import RawConnection, RawResponse
from tests.support.clock import FakeClock
from tests.support.process import MeshdProcess, process_config
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until


async def _get(port: int, target: str) -> RawResponse:
    conn = await RawConnection.open(port)
    try:
        return await asyncio.wait_for(conn.request("GET", target, host="localhost"), 5)
    finally:
        await conn.close()


async def test_ping_answers_pong(make_mesh):
    mesh = await make_mesh()
    resp = await _get(mesh.admin_port, "/admin/ping")
    assert (resp.status, resp.body) == (200, b"pong\n")


async def test_ready_turns_off_while_draining(make_mesh, make_upstream):
    release = asyncio.Event()

    async def slow(req: Received) -> Reply:
        await release.wait()
        return Reply(200, [], b"done")

    up = await make_upstream(slow)
    mesh = await make_mesh()
    mesh.register("svc", up)
    assert (await _get(mesh.admin_port, "/admin/ready")).status == 200
    held = await RawConnection.open(mesh.port)
    await held.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    await asyncio.wait_for(up.request_event.wait(), 5)
    draining = asyncio.create_task(mesh.daemon.shutdown(drain_timeout_s=5.0))
    await wait_until(lambda: not mesh.daemon.ready, timeout=5, message="the drain to begin")
    not_ready = await _get(mesh.admin_port, "/admin/ready")
    assert (not_ready.status, not_ready.body) == (503, b"not ready\n")
    release.set()
    assert (await held.read_response()).body == b"done"
    await draining
    await held.close()


async def test_the_drain_timeout_aborts_what_is_left_exactly_at_its_limit_on_the_fake_clock(make_mesh, make_upstream):
    never = asyncio.Event()

    async def hangs(req: Received) -> Reply:
        await never.wait()
        return Reply(200, [], b"never")

    clock = FakeClock(start=0.0)
    up = await make_upstream(hangs)
    mesh = await make_mesh(clock=clock)
    mesh.register("svc", up)
    held = await RawConnection.open(mesh.port)
    await held.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    await asyncio.wait_for(up.request_event.wait(), 5)
    draining = asyncio.create_task(mesh.daemon.shutdown(drain_timeout_s=0.5))
    await wait_until(lambda: not mesh.daemon.ready, timeout=5, message="the drain to begin")
    listener = mesh.daemon.bound[0].listener
    assert drain_timers(clock) == [0.5]
    clock.advance(0.5 - 1 / 1024)
    await asyncio.sleep(0)
    assert drain_timers(clock) == [0.5] and not draining.done()  # still draining
    assert len(listener.connections) == 1
    clock.advance(1 / 1024)
    await asyncio.wait_for(draining, 5)  # the drain timeout ended the drain: what was left is aborted
    assert len(listener.connections) == 0
    assert await asyncio.wait_for(held.read_eof(), 5) == b""
    await held.close()


def drain_timers(clock: FakeClock) -> list[float]:
    """When the pending `clock.timeout` timers fall due (the drain's, here)."""
    return [t.when for t in clock.pending if isinstance(getattr(t.callback, "__self__", None), Expiry)]


async def test_ready_in_a_fresh_process_means_a_known_name_is_served_at_once(
    tmp_path: pathlib.Path, make_upstream
):
    up = await make_upstream()
    mesh = MeshdProcess(tmp_path, process_config())
    mesh.disco.mkdir(parents=True)
    mesh.register("svc", up.address_line)
    async with mesh:  # start() returns once /admin/ready said 200
        conn = await RawConnection.open(mesh.port)
        resp = await conn.request("GET", "/")
        await conn.close()
    assert resp.status == 200
    assert up.requests == 1


async def test_core_metric_families_count_traffic_with_the_issue_labels(make_mesh, make_upstream):
    async def handler(req: Received) -> Reply:
        return Reply(int(req.target[1:]), [], b"x")

    up = await make_upstream(handler)
    mesh = await make_mesh(service={"retries": {"budget": {"minRetriesPerSec": 0, "percentCanRetry": 0.0}}})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    for status in (200, 200, 404, 503):
        assert (await conn.request("GET", f"/{status}")).status == status
    assert (await conn.request("GET", "/", host="nosuch")).status == 502
    await conn.close()

    resp = await _get(mesh.admin_port, "/metrics")
    assert resp.status == 200
    assert (resp.header("content-type") or "").startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(resp.body.decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    router = {"router": "outgoing"}
    assert families["meshd_requests"].type == "counter"
    assert value("meshd_requests_total", **router, service="/svc/svc", status_class="2xx") == 2
    assert value("meshd_requests_total", **router, service="/svc/svc", status_class="4xx") == 1
    assert value("meshd_requests_total", **router, service="/svc/svc", status_class="5xx") == 1
    assert value("meshd_requests_total", **router, service="/svc/nosuch", status_class="5xx") == 1

    assert families["meshd_request_duration_seconds"].type == "histogram"
    assert value("meshd_request_duration_seconds_count", **router, service="/svc/svc") == 4
    assert value("meshd_request_duration_seconds_bucket", **router, service="/svc/svc", le="+Inf") == 4
    assert value("meshd_request_duration_seconds_sum", **router, service="/svc/svc") > 0

    client = {"router": "outgoing", "client": "/#/fs/svc"}
    assert families["meshd_pool_connections"].type == "gauge"
    assert value("meshd_pool_connections", **client, state="idle") == 1
    assert value("meshd_pool_connections", **client, state="busy") == 0
    assert value("meshd_endpoints", **client) == 1
