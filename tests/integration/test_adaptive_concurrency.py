"""The adaptive concurrency limit through a real meshd, measured against the static limit.

An upstream serves 8 requests at once, 20 ms each; past 8 its requests queue. 32 callers keep a
request each outstanding (closed loop). With the static limit (10,000) meshd passes all 32 on and
they queue in the upstream: each request spends ~80 ms there. With `adaptiveConcurrency` meshd
finds a limit near what the upstream serves without queueing (about 1.7 x 8) and holds the rest
in its own queue, so the upstream sees a short queue and answers in ~30 ms; the callers' own
latency is the same either way (32 callers over the same throughput, Little's law), and so is
the throughput: the upstream is protected at no cost to the callers.
"""

from __future__ import annotations

import asyncio
import time

from bench.percentiles import percentiles
from tests.support.client import RawConnection
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until

CAPACITY = 8
SERVICE_S = 0.020
CALLERS = 32
WARM_S = 1.5
MEASURE_S = 2.0


async def measure(make_mesh, make_upstream, **router: object) -> dict[str, float]:  # type: ignore[no-untyped-def]
    capacity = asyncio.Semaphore(CAPACITY)
    at_upstream: list[float] = []
    measuring = False

    async def bounded(req: Received) -> Reply:
        arrived = time.monotonic()
        async with capacity:
            await asyncio.sleep(SERVICE_S)  # the upstream's service time, not a wait for an event
        if measuring:
            at_upstream.append(time.monotonic() - arrived)
        return Reply(200, [], b"ok")

    up = await make_upstream(bounded)
    mesh = await make_mesh(**router)
    mesh.register("svc", up)
    conns = [await RawConnection.open(mesh.port) for _ in range(CALLERS)]
    statuses: list[int] = []
    stop = asyncio.Event()

    async def caller(conn: RawConnection) -> None:
        while not stop.is_set():
            resp = await asyncio.wait_for(conn.request("GET", "/", host="svc"), 10)
            if measuring:
                statuses.append(resp.status)

    async def serves() -> bool:
        return (await conns[0].request("GET", "/", host="svc")).status == 200

    await wait_until(serves, timeout=10, message="meshd to serve svc")
    callers = [asyncio.ensure_future(caller(c)) for c in conns]
    await asyncio.wait(callers, timeout=WARM_S)  # the limit settles meanwhile (the callers never end)
    measuring = True
    started = time.monotonic()
    await asyncio.wait(callers, timeout=MEASURE_S)
    measuring = False
    elapsed = time.monotonic() - started
    stop.set()
    await asyncio.gather(*callers)
    for c in conns:
        await c.close()
    admission = mesh.daemon.routers[0].admission
    upstream = percentiles(at_upstream, (50.0, 90.0))
    return {
        "ok_per_s": statuses.count(200) / elapsed,
        "failed": float(len(statuses) - statuses.count(200)),
        "upstream_p50": upstream[50.0],
        "upstream_p90": upstream[90.0],
        "limit": float(admission.max_concurrent),
    }


async def test_the_adaptive_limit_keeps_the_upstreams_queue_short_at_the_static_limits_throughput(
    make_mesh, make_upstream
):
    static = await measure(make_mesh, make_upstream)
    adaptive = await measure(
        make_mesh, make_upstream,
        adaptiveConcurrency={"windowMs": 100, "minLatencySamples": 20, "minLatencyIntervalSecs": 60},
    )
    print(f"static {static}\nadaptive {adaptive}")
    assert static["failed"] == adaptive["failed"] == 0
    assert static["limit"] == 10_000
    assert CAPACITY <= adaptive["limit"] <= 3 * CAPACITY
    # the upstream's own latency: its queue, ~80 ms with all 32 callers in it
    assert static["upstream_p50"] >= 3 * SERVICE_S
    assert adaptive["upstream_p50"] <= 0.6 * static["upstream_p50"]
    assert adaptive["ok_per_s"] >= 0.8 * static["ok_per_s"]
