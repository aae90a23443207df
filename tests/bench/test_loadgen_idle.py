"""The open-loop generator's `idleCloseSecs`: connections dialled at a stall are shed afterwards.

Two generators run at once, one against each of two real upstreams on 127.0.0.1, both with a warm
pool of 2 connections. A stall (the upstreams hold their answers for a moment) makes each dial a
connection per waiting request. Afterwards the generator with `idle_close_secs` reuses its most
recently idle connection, so the surplus goes idle and is closed, down to what the load needs (at
most the warm pool) while the load goes on; the one without (the default, oldest-idle first) keeps every connection in rotation
and closes none. This is what made the soak's descriptor count step up (bench/scenarios/soak.py).
"""

from __future__ import annotations

import asyncio
import pathlib
import time

from tests.support.loadgen import gather_results, start_open_loop
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until

WARM = 2
RATE = 100.0


async def test_surplus_connections_after_a_stall_are_closed_once_idle_and_only_with_idle_close(
    tmp_path: pathlib.Path, make_upstream
):
    answering = asyncio.Event()
    answering.set()

    async def gated(request: Received) -> Reply:
        await answering.wait()
        return Reply(200, [], b"ok")

    shedding, keeping = await make_upstream(gated), await make_upstream(gated)
    start_at = time.monotonic() + 2.0  # both interpreters start meanwhile
    runs = [
        await start_open_loop(tmp_path, "shedding", port=shedding.port, host="x", rate_per_sec=RATE,
                              duration_secs=6.0, start_at=start_at, connections=WARM, idle_close_secs=0.3),
        await start_open_loop(tmp_path, "keeping", port=keeping.port, host="x", rate_per_sec=RATE,
                              duration_secs=6.0, start_at=start_at, connections=WARM),
    ]
    try:
        await wait_until(lambda: shedding.requests > 30 and keeping.requests > 30, timeout=20,
                         message="both generators under way")
        answering.clear()  # the stall: every request due now waits on a connection of its own
        await wait_until(lambda: shedding.open_connections >= 20 and keeping.open_connections >= 20, timeout=5,
                         message="each generator to dial a connection per waiting request")
        answering.set()
        await wait_until(lambda: shedding.open_connections <= WARM, timeout=4,
                         message="the surplus to be closed after 0.3 s idle")
        dialled, still_open = shedding.connections, shedding.open_connections  # the rest the generator closed
        served = shedding.requests
        await wait_until(lambda: shedding.requests > served + 50, timeout=4, message="the load to go on")
        assert keeping.open_connections >= 20  # rotated oldest-idle first: none ever idles
    finally:
        answering.set()
    shed, kept = await gather_results(runs)
    assert shed.successes == shed.scheduled
    assert kept.successes == kept.scheduled
    assert dialled >= 20 and shed.connections_closed_idle >= dialled - still_open
    assert kept.connections_closed_idle == 0 and kept.max_connections_open == kept.connections_opened
