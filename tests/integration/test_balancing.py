"""Balancers in the running proxy (issue 3): real upstreams on loopback, meshd in-process.

Splits are measured from the upstreams' own request counts, never from meshd's view of itself.
Accrual backoffs are configured small (hundreds of milliseconds) so ejection, probing and
revival happen within a test; waiting is done by sending real requests or by polling with a
deadline, never by sleeping.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from meshd.client import Client
from routing.path import Path
from tests.support.client import RawConnection, RawResponse
from tests.support.upstreams import Received, Reply, Upstream
from tests.support.waiting import wait_until

SERVICE = "svc"


# -- helpers -------------------------------------------------------------------------------------


async def drive(port: int, total: int, concurrency: int, *, method: str = "GET") -> list[int]:
    """Send `total` requests over `concurrency` keep-alive connections; return the statuses."""
    statuses: list[int] = []
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        conn = await RawConnection.open(port)
        try:
            while remaining > 0:
                remaining -= 1
                resp = await asyncio.wait_for(conn.request(method, "/", host=SERVICE), 10)
                statuses.append(resp.status)
        finally:
            await conn.close()

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return statuses


async def admin_get(mesh, target: str) -> RawResponse:
    conn = await RawConnection.open(mesh.admin_port)
    try:
        return await asyncio.wait_for(conn.request("GET", target, host="localhost"), 10)
    finally:
        await conn.close()


async def endpoints_json(mesh) -> dict[str, dict[str, Any]]:
    """`/admin/endpoints` for the one client of SERVICE: endpoint address -> its JSON entry."""
    resp = await admin_get(mesh, "/admin/endpoints")
    assert resp.status == 200
    assert (resp.header("content-type") or "").startswith("application/json")
    (router,) = json.loads(resp.body)
    (client,) = [c for c in router["clients"] if c["client"] == f"/#/fs/{SERVICE}"]
    return {e["address"]: e for e in client["endpoints"]}


async def scrape(mesh) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`/metrics` as (sample name, sorted labels) -> value."""
    resp = await admin_get(mesh, "/metrics")
    assert resp.status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.body.decode())
        for s in family.samples
    }


def client_of(mesh) -> Client:
    client: Client = mesh.daemon.routers[0].client_for(Path.read(f"/#/fs/{SERVICE}"))
    return client


def node_of(mesh, upstream: Upstream):
    (node,) = [n for n in client_of(mesh).balancer.nodes() if n.member.address.port == upstream.port]
    return node


def label(upstream: Upstream) -> str:
    return f"127.0.0.1:{upstream.port}"


def reset(conn: RawConnection) -> None:
    """Make the next close send RST (a FIN alone would be a legal half-close: meshd keeps answering)."""
    sock = conn.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Switch:
    """An upstream handler that answers 503 while `failing`, 200 otherwise."""

    def __init__(self, failing: bool = True) -> None:
        self.failing = failing

    async def __call__(self, request: Received) -> Reply:
        if self.failing:
            return Reply(503, [], b"down\n")
        return Reply(200, [], b"ok\n")


async def send_until(port: int, done, *, limit: int = 50_000, timeout: float = 10.0) -> list[int]:
    """Send requests one at a time until `done()`; return their statuses (bounded in count and time)."""
    deadline = time.monotonic() + timeout
    statuses: list[int] = []
    conn = await RawConnection.open(port)
    try:
        while not done():
            assert len(statuses) < limit and time.monotonic() < deadline, "condition not reached under traffic"
            statuses.append((await asyncio.wait_for(conn.request("GET", "/", host=SERVICE), 10)).status)
    finally:
        await conn.close()
    return statuses


def accrual(failures: int, backoff_ms: int) -> dict[str, object]:
    return {
        "kind": "consecutiveFailures",
        "failures": failures,
        "backoff": {"kind": "constant", "ms": backoff_ms},
    }


# -- latency-aware balancing ---------------------------------------------------------------------


async def slow_handler(request: Received) -> Reply:
    await asyncio.sleep(0.1)  # the behaviour under test: this replica is 100 ms slower
    return Reply(200, [], b"slow\n")


async def test_ewma_sends_at_least_95_percent_of_requests_away_from_a_slow_replica(make_mesh, make_upstream):
    fast1, fast2 = await make_upstream(), await make_upstream()
    slow = await make_upstream(slow_handler)
    mesh = await make_mesh(client={"loadBalancer": {"kind": "ewma"}})
    mesh.register(SERVICE, fast1, slow, fast2)
    # steady load: 8 clients back to back, long enough for the slow replica's cost to be tested
    # many times over (each of its answers takes 100 ms, so ~10 windows per second)
    total = 3000
    statuses = await drive(mesh.port, total=total, concurrency=8)
    assert statuses == [200] * total
    counts = [fast1.requests, fast2.requests, slow.requests]
    assert sum(counts) == total
    assert slow.requests / total <= 0.05, f"slow replica got {slow.requests} of {total} (fast: {counts[:2]})"
    # the two fast replicas share the rest; neither is starved
    assert min(fast1.requests, fast2.requests) >= total * 0.25
    ewma = {e: v["ewmaSeconds"] for e, v in (await endpoints_json(mesh)).items()}
    # meshd's own view agrees: the slow replica's Peak EWMA holds its 100 ms (decaying over 10 s);
    # the fast ones' EWMAs are not compared, as one event-loop stall on a busy machine is a peak too
    assert ewma[label(slow)] >= 0.05


async def test_round_robin_gives_the_slow_replica_its_full_share(make_mesh, make_upstream):
    """The control for the test above: the same measurement sees a third going to the slow one."""
    fast1, fast2 = await make_upstream(), await make_upstream()
    slow = await make_upstream(slow_handler)
    mesh = await make_mesh(client={"loadBalancer": {"kind": "roundRobin"}})
    mesh.register(SERVICE, fast1, slow, fast2)
    statuses = await drive(mesh.port, total=120, concurrency=8)
    assert statuses == [200] * 120
    assert 30 <= slow.requests <= 50


# -- weights -------------------------------------------------------------------------------------


async def test_round_robin_honours_fs_weights_exactly(make_mesh, make_upstream):
    heavy, light = await make_upstream(), await make_upstream()
    mesh = await make_mesh(client={"loadBalancer": {"kind": "roundRobin"}})
    mesh.register(SERVICE, f"127.0.0.1 {heavy.port} 3", f"127.0.0.1 {light.port} 1")
    assert await drive(mesh.port, total=400, concurrency=1) == [200] * 400
    assert (heavy.requests, light.requests) == (300, 100)
    weights = {e: v["weight"] for e, v in (await endpoints_json(mesh)).items()}
    assert weights == {label(heavy): 3.0, label(light): 1.0}


async def test_p2c_honours_fs_weights_in_proportion(make_mesh, make_upstream):
    heavy, light = await make_upstream(), await make_upstream()
    mesh = await make_mesh(client={"loadBalancer": {"kind": "p2c"}})
    mesh.register(SERVICE, f"127.0.0.1 {heavy.port} 3", f"127.0.0.1 {light.port} 1")
    assert await drive(mesh.port, total=600, concurrency=1) == [200] * 600
    # sequential requests tie at load 0, so the weighted draw decides: 3/4 expected (sd ~ 0.018)
    assert 0.67 <= heavy.requests / 600 <= 0.83, (heavy.requests, light.requests)


# -- endpoint-set updates ------------------------------------------------------------------------


async def test_update_keeps_state_and_pool_of_staying_endpoints_and_drops_removed_ones(make_mesh, make_upstream):
    stay, leave, new = await make_upstream(), await make_upstream(), await make_upstream()
    mesh = await make_mesh(client={"loadBalancer": {"kind": "ewma"}})
    mesh.register(SERVICE, stay, leave)
    assert await drive(mesh.port, total=40, concurrency=1) == [200] * 40
    assert stay.requests > 0 and leave.requests > 0
    assert stay.connections == 1  # sequential requests reuse one pooled connection
    node = node_of(mesh, stay)
    before = (await endpoints_json(mesh))[label(stay)]
    assert before["ewmaSeconds"] > 0 and before["pool"]["idle"] == 1

    mesh.register(SERVICE, f"127.0.0.1 {stay.port} 2", new.address_line)
    after = await endpoints_json(mesh)
    assert set(after) == {label(stay), label(new)}
    assert node_of(mesh, stay) is node  # same balancer node: EWMA, pending and accrual state kept
    assert after[label(stay)]["ewmaSeconds"] > 0  # a fresh node would start at 0
    assert after[label(stay)]["weight"] == 2.0  # the new weight is taken
    assert after[label(stay)]["pool"]["idle"] == 1  # the pool and its warm connection are kept
    assert after[label(new)]["ewmaSeconds"] == 0.0
    # the removed endpoint's idle connection is closed at once
    await wait_until(lambda: leave.open_connections == 0, timeout=5, message="removed endpoint's pool closed")

    left_before = leave.requests
    assert await drive(mesh.port, total=40, concurrency=1) == [200] * 40
    assert leave.requests == left_before
    assert new.requests > 0
    assert stay.connections == 1  # no new dial: the kept pool served every request to `stay`


async def test_removed_endpoint_finishes_its_in_flight_request_while_picks_go_on(make_mesh, make_upstream):
    release = asyncio.Event()

    async def held(request: Received) -> Reply:
        await release.wait()
        return Reply(200, [], b"held\n")

    old = await make_upstream(held)
    replacement = await make_upstream()
    mesh = await make_mesh()
    mesh.register(SERVICE, old)
    conn = await RawConnection.open(mesh.port)
    in_flight = asyncio.create_task(conn.request("GET", "/slow", host=SERVICE))
    try:
        await asyncio.wait_for(old.request_event.wait(), 5)
        assert node_of(mesh, old).pending == 1

        mesh.register(SERVICE, replacement)  # `old` leaves while its request is in flight
        assert set(await endpoints_json(mesh)) == {label(replacement)}
        # picks do not wait for the drain: new requests go to the replacement right away
        assert await drive(mesh.port, total=20, concurrency=4) == [200] * 20
        assert replacement.requests == 20 and old.requests == 1
        assert not in_flight.done() and old.open_connections == 1

        release.set()
        resp = await asyncio.wait_for(in_flight, 5)
        assert resp.status == 200 and resp.body == b"held\n"  # drained, not aborted
        await wait_until(lambda: old.open_connections == 0, timeout=5, message="drained connection closed")
    finally:
        release.set()
        await asyncio.wait_for(in_flight, 5)
        await conn.close()


async def test_endpoint_churn_under_load_loses_no_request(make_mesh, make_upstream):
    ups = [await make_upstream() for _ in range(3)]
    a, b, c = ups
    mesh = await make_mesh()
    mesh.register(SERVICE, a, b, c)
    assert await drive(mesh.port, total=3, concurrency=1) == [200] * 3  # the client exists from here on
    sets = [(a, b), (b, c), (a, c), (c,), (a, b, c), (b,), (a, b, c)]
    stop = asyncio.Event()

    async def churn() -> None:
        for members in sets:
            mesh.register(SERVICE, *members)
            seen = {label(u) for u in members}
            assert set(await endpoints_json(mesh)) == seen
            before = sum(u.requests for u in members)
            # let traffic flow to this set before changing it again
            await wait_until(lambda: sum(u.requests for u in members) >= before + 20, timeout=5)  # noqa: B023
        stop.set()

    async def load() -> list[int]:
        statuses: list[int] = []
        while not stop.is_set():
            statuses += await drive(mesh.port, total=8, concurrency=4)
        return statuses

    async with asyncio.TaskGroup() as group:
        loads = [group.create_task(load()) for _ in range(2)]
        group.create_task(churn())
    statuses = [s for task in loads for s in task.result()]
    assert len(statuses) >= 7 * 20
    assert set(statuses) == {200}
    assert all(u.requests > 0 for u in ups)


# -- failure accrual -----------------------------------------------------------------------------


async def test_replica_answering_5xx_is_ejected_probed_and_revived(make_mesh, make_upstream):
    switch = Switch(failing=True)
    bad = await make_upstream(switch)
    good = await make_upstream()
    mesh = await make_mesh(
        client={"failureAccrual": accrual(failures=3, backoff_ms=400)},
        service={"responseClassifier": {"kind": "nonRetryable5XX"}},
    )
    mesh.register(SERVICE, good, bad)

    # ejected after exactly `failures` consecutive failures; the callers saw those three 503s
    statuses = await send_until(mesh.port, lambda: bad.requests == 3)
    assert statuses.count(503) == 3 and statuses.count(200) == len(statuses) - 3
    node = node_of(mesh, bad)
    assert node.state == "ejected"
    assert (await endpoints_json(mesh))[label(bad)]["state"] == "ejected"
    assert client_of(mesh).balancer.statistics().ejections == 1

    # while ejected it gets nothing
    assert await drive(mesh.port, total=20, concurrency=1) == [200] * 20
    assert bad.requests == 3
    assert node.state == "ejected", "the test machine was too slow to stay inside the 400 ms ejection"

    # after the backoff exactly one probe goes out; it fails, so the replica is ejected again
    await wait_until(lambda: node.state == "probing", timeout=5, message="backoff over")
    await send_until(mesh.port, lambda: bad.requests == 4)
    assert node.state == "ejected"
    assert client_of(mesh).balancer.statistics().probe_failures == 1

    # healed: the next probe succeeds and the replica takes traffic again
    switch.failing = False
    await wait_until(lambda: node.state == "probing", timeout=5, message="backoff over")
    await send_until(mesh.port, lambda: node.state == "live")
    stats = client_of(mesh).balancer.statistics()
    assert stats.revivals == 1 and stats.ejections == 1
    served = bad.requests
    await send_until(mesh.port, lambda: bad.requests >= served + 5)
    assert (await endpoints_json(mesh))[label(bad)]["state"] == "live"


async def test_replica_refusing_connections_is_ejected_and_comes_back_when_listening(make_mesh, make_upstream):
    good = await make_upstream()
    # a bound socket that does not listen: connections to its port are refused, and no other
    # socket (meshd's own listeners included) can take the port while it is held
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    mesh = await make_mesh(client={"failureAccrual": accrual(failures=2, backoff_ms=200)})
    mesh.register(SERVICE, good, f"127.0.0.1 {port}")
    dead = next(n for n in client_of(mesh).balancer.nodes() if n.member.address.port == port)

    try:
        # refused connections are failures before the request was written: retried elsewhere, unseen
        assert set(await send_until(mesh.port, lambda: dead.state == "ejected")) == {200}
        assert client_of(mesh).balancer.statistics().ejections == 1
        assert await drive(mesh.port, total=20, concurrency=2) == [200] * 20
    finally:
        holder.close()

    back = Upstream()
    await back.start(port=port)
    try:
        assert set(await send_until(mesh.port, lambda: dead.state == "live")) == {200}
        served = back.requests
        assert served >= 1  # the successful probe
        await send_until(mesh.port, lambda: back.requests >= served + 5)
    finally:
        await back.close()


async def test_when_every_replica_is_ejected_requests_still_go_somewhere(make_mesh, make_upstream):
    # linkerd's behaviour, with no ejection cap and no panic mode before "none available"
    ups = [await make_upstream(Switch(failing=True)) for _ in range(2)]
    mesh = await make_mesh(
        client={"failureAccrual": accrual(failures=2, backoff_ms=60_000),
                "maxEjectionPercent": 100, "panicThresholdPercent": 0},
        service={"responseClassifier": {"kind": "nonRetryable5XX"}},
    )
    mesh.register(SERVICE, *ups)
    await send_until(mesh.port, lambda: all(u.requests >= 2 for u in ups))
    assert [node_of(mesh, u).state for u in ups] == ["ejected", "ejected"]
    before = sum(u.requests for u in ups)

    conn = await RawConnection.open(mesh.port)
    try:
        for _ in range(10):
            resp = await conn.request("GET", "/", host=SERVICE)
            assert resp.status == 503 and resp.body == b"down\n"  # the replica's answer, not meshd's
            assert resp.header("l5d-err") is None
    finally:
        await conn.close()
    assert sum(u.requests for u in ups) == before + 10
    assert client_of(mesh).balancer.statistics().all_ejected_picks == 10
    samples = await scrape(mesh)
    labels = (("client", f"/#/fs/{SERVICE}"), ("router", "outgoing"))
    assert samples[("meshd_all_ejected_picks_total", labels)] == 10
    assert samples[("meshd_ejections_total", labels)] == 2


async def test_by_default_accrual_never_ejects_more_than_half_a_replica_set(make_mesh, make_upstream):
    ups = [await make_upstream(Switch(failing=True)) for _ in range(4)]
    mesh = await make_mesh(
        client={"failureAccrual": accrual(failures=2, backoff_ms=60_000)},
        service={"responseClassifier": {"kind": "nonRetryable5XX"}},
    )
    mesh.register(SERVICE, *ups)
    await send_until(mesh.port, lambda: client_of(mesh).balancer.statistics().ejections_prevented >= 2)
    states = sorted(node_of(mesh, u).state for u in ups)
    assert states == ["ejected", "ejected", "live", "live"]  # 50% of 4: the other two stay in
    stats = client_of(mesh).balancer.statistics()
    assert stats.ejections == 2 and stats.ejections_prevented >= 2 and not stats.panic
    samples = await scrape(mesh)
    labels = (("client", f"/#/fs/{SERVICE}"), ("router", "outgoing"))
    assert samples[("meshd_ejections_prevented_total", labels)] == stats.ejections_prevented
    assert samples[("meshd_balancer_panic", labels)] == 0


async def test_below_the_panic_threshold_requests_spread_over_every_replica(make_mesh, make_upstream):
    failing = [await make_upstream(Switch(failing=True)) for _ in range(3)]
    healthy = await make_upstream()
    mesh = await make_mesh(
        client={"failureAccrual": accrual(failures=1, backoff_ms=60_000), "maxEjectionPercent": 100},
        service={"responseClassifier": {"kind": "nonRetryable5XX"}},
    )
    mesh.register(SERVICE, *failing, healthy)
    await send_until(mesh.port, lambda: all(node_of(mesh, u).state == "ejected" for u in failing))
    # 1 of 4 available, under the default 50%: panic mode, every replica gets a share again
    before = [u.requests for u in failing]
    await send_until(mesh.port, lambda: all(u.requests > b for u, b in zip(failing, before, strict=True)))
    stats = client_of(mesh).balancer.statistics()
    assert stats.panic and stats.panic_picks > 0
    samples = await scrape(mesh)
    labels = (("client", f"/#/fs/{SERVICE}"), ("router", "outgoing"))
    assert samples[("meshd_balancer_panic", labels)] == 1
    assert samples[("meshd_panic_picks_total", labels)] >= stats.panic_picks
    clients = (await admin_json(mesh, "/admin/endpoints"))[0]["clients"]
    (entry,) = [c for c in clients if c["client"] == f"/#/fs/{SERVICE}"]
    assert entry["statistics"]["panic"] is True


async def admin_json(mesh, target: str) -> Any:
    resp = await admin_get(mesh, target)
    assert resp.status == 200
    return json.loads(resp.body)


async def test_upstream_reset_mid_body_counts_as_a_failure(make_mesh, make_upstream):
    async def resets(request: Received) -> Reply:
        return Reply(200, [], b"x" * 10_000, reset_midway=True)

    up = await make_upstream(resets)
    mesh = await make_mesh(client={"failureAccrual": accrual(failures=1, backoff_ms=60_000)})
    mesh.register(SERVICE, up)
    conn = await RawConnection.open(mesh.port)
    try:
        await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert (await asyncio.wait_for(conn.read_eof(), 5)).startswith(b"HTTP/1.1 200")  # cut short
    finally:
        await conn.close()
    node = node_of(mesh, up)
    await wait_until(lambda: node.pending == 0, timeout=5, message="attempt finished")
    assert node.state == "ejected"
    assert client_of(mesh).balancer.statistics().ejections == 1


async def test_client_leaving_mid_body_is_not_held_against_the_endpoint(make_mesh, make_upstream):
    """A caller that hangs up during a streamed answer says nothing about the replica's health."""
    release = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        yield b"first part\n"
        await release.wait()
        yield b"never read\n"

    async def streams(request: Received) -> Reply:
        return Reply(200, [], stream=endless())

    up = await make_upstream(streams)
    mesh = await make_mesh(client={"failureAccrual": accrual(failures=1, backoff_ms=60_000)})
    mesh.register(SERVICE, up)
    node = node_of(mesh, up)
    try:
        for _ in range(3):
            conn = await RawConnection.open(mesh.port)
            await conn.send(b"GET /stream HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await asyncio.wait_for(conn.reader.readuntil(b"first part\n"), 5)).startswith(b"HTTP/1.1 200")
            assert node.pending == 1
            reset(conn)  # the caller goes away in the middle of the body
            await conn.close()
            await wait_until(lambda: node.pending == 0, timeout=5, message="attempt finished")
    finally:
        release.set()
    assert node.state == "live"
    assert client_of(mesh).balancer.statistics().ejections == 0
