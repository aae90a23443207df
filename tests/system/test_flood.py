"""A flood beyond `maxConcurrentRequests` from one caller leaves a second, well-behaved caller's
latency alone (issue #17): a real meshd process, a real upstream, open-loop load from separate
processes (tests/support/loadgen.py), every request counted.

The two callers come in through two routers of one meshd (admission control is per router): the
flooding one's router admits 2 requests at once and queues none; the other router has the
defaults. Both reach the same upstream, which serves at most 8 requests at once in 25 ms each
(320 a second); past that its requests queue. The flood asks for 400 a second, 10 at once: without
the flood router's limit the upstream's queue would grow by some 180 requests a second and every
caller's latency with it. With it, the flood's excess (about 80%) is refused at once with 503 and
the well-behaved caller (100 requests a second, 2.5 at once) finds the upstream's capacity free.
The flood's rate is kept to what meshd refuses with a fraction of a core, so that the test
measures admission control, not a CPU-starved machine.

On a busy 2-core machine latency drifts with whatever else runs, so the unloaded baseline is
measured in the same test, interleaved with the flood (quiet, flood, quiet, flood: 3 s each),
and the two p99s are each taken over 600 requests of the same caller.
"""

from __future__ import annotations

import asyncio
import pathlib
import re
import time

from tests.support.client import RawConnection
from tests.support.loadgen import gather_results, p99, start_open_loop
from tests.support.process import MeshdProcess, process_config
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until

SERVICE_TIME_S = 0.025
UPSTREAM_CAPACITY = 8
FLOOD_LIMIT = 2
PHASE_S = 3.0
STEADY_RATE = 100.0
FLOOD_RATE = 400.0


async def test_a_flood_past_max_concurrent_requests_leaves_another_callers_p99_within_twice_its_unloaded_p99(
    tmp_path: pathlib.Path, make_upstream
):
    capacity = asyncio.Semaphore(UPSTREAM_CAPACITY)

    async def bounded(req: Received) -> Reply:
        async with capacity:
            await asyncio.sleep(SERVICE_TIME_S)  # the upstream's service time, not a wait for an event
        return Reply(200, [], b"ok")

    up = await make_upstream(bounded)
    config = process_config()
    config["routers"] = [
        *config["routers"],  # type: ignore[list-item]
        {
            "label": "flood",
            "servers": [{"ip": "127.0.0.1", "port": 0}],
            "dtab": "/svc => /#/fs;",
            "maxConcurrentRequests": FLOOD_LIMIT,
            "maxPendingRequests": 0,
        },
    ]
    async with MeshdProcess(tmp_path, config) as mesh:
        mesh.register("svc", up.address_line)
        flood_port = int(re.findall(r"router flood listening on \S+:(\d+)", mesh.log_text())[0])

        async def serves(port: int) -> bool:
            conn = await RawConnection.open(port)
            try:
                return (await conn.request("GET", "/", host="svc")).status == 200
            finally:
                await conn.close()

        await wait_until(lambda: serves(mesh.port), timeout=10, message="meshd to serve svc")
        await wait_until(lambda: serves(flood_port), timeout=10, message="the flood router to serve svc")

        t0 = time.monotonic() + 3.0  # the generators' interpreters start meanwhile
        steady = [
            await start_open_loop(tmp_path, f"steady{i}", port=mesh.port, host="svc", rate_per_sec=STEADY_RATE,
                                  duration_secs=PHASE_S, start_at=t0 + i * PHASE_S)
            for i in range(4)
        ]
        floods = [
            await start_open_loop(tmp_path, f"flood{i}", port=flood_port, host="svc", rate_per_sec=FLOOD_RATE,
                                  duration_secs=PHASE_S, start_at=t0 + i * PHASE_S, connections=32)
            for i in (1, 3)
        ]
        quiet1, flooded1, quiet2, flooded2, flood1, flood2 = await gather_results([*steady, *floods])

        # the limit's refusals, as a caller sees them
        burst = [await RawConnection.open(flood_port) for _ in range(3 * FLOOD_LIMIT)]
        answers = await asyncio.gather(*(c.request("GET", "/", host="svc") for c in burst))
        for c in burst:
            await c.close()
        refused = [a for a in answers if a.status == 503]
        assert refused, [a.status for a in answers]
        assert refused[0].header("retry-after") == "1"
        assert refused[0].header("l5d-err") == (
            f"router flood is overloaded: {FLOOD_LIMIT} requests in flight (maxConcurrentRequests) and 0 waiting "
            "(maxPendingRequests)"
        )

        metrics = await scrape(mesh.admin_port)

    for run in (quiet1, flooded1, quiet2, flooded2):
        assert run.statuses == {200: run.scheduled}, (run.statuses, run.errors)
    for run in (flood1, flood2):
        assert run.errors == {}, run.errors
        assert set(run.statuses) <= {200, 503} and sum(run.statuses.values()) == run.scheduled, run.statuses
        assert run.statuses.get(503, 0) > run.scheduled / 2  # most of the flood was shed
    flood_refused = flood1.statuses.get(503, 0) + flood2.statuses.get(503, 0) + len(refused)
    assert f'meshd_overloaded_total{{reason="queue_full",router="flood"}} {flood_refused}' in metrics
    assert 'meshd_overloaded_total{reason="queue_full",router="outgoing"} 0' in metrics

    baseline = p99([*quiet1.latencies, *quiet2.latencies])
    loaded = p99([*flooded1.latencies, *flooded2.latencies])
    assert baseline >= SERVICE_TIME_S  # the measurement saw the upstream's service time
    assert loaded <= 2 * baseline, f"p99 {loaded * 1000:.1f} ms under the flood, {baseline * 1000:.1f} ms without"


async def scrape(admin_port: int) -> str:
    conn = await RawConnection.open(admin_port)
    try:
        return (await asyncio.wait_for(conn.request("GET", "/metrics", host="localhost"), 10)).body.decode()
    finally:
        await conn.close()
