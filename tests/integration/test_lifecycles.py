"""100,000 distinct Host values, then quiet: what meshd keeps per name returns to the working set
(issue 14, part 5).

Before: `Router.clients` grew with every bound name and was never emptied, no namer watch was
ever released, and the first 1,000 services were kept for good. Now services, clients, cached
bindings and namer watches unused for `bindingCache.idleTtlSecs` are dropped by the router's
sweep; the labelled names keep their counters (exported, still counting).

The names: 2,101 are sent over sockets (a real service, 100 names bound to one upstream through
distinct files, so distinct clients and watches, and 2,000 unknown names that get 502); the
other 97,899 go straight to the router's service table, the first 12,000 of them through its
binder too (enough to fill the binding cache), as the bind step does for a request. Sending them
all over sockets would take minutes on a small box, and the tables are the same either way.
meshd runs on a fake clock, so the idle time passes without waiting.
"""

from __future__ import annotations

import asyncio
import pathlib
import random

import yaml

from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from meshd.daemon import Daemon
from meshd.discovery.fs import FsNamer
from meshd.pipeline.bind import MAX_CACHED_BINDINGS
from meshd.pipeline.stats import MAX_SERVICES
from meshd.router import MAX_SERVICE_STATES
from meshd.runtime import Runtime
from routing.path import Path
from tests.integration.test_invented_names import get, invent, samples, value
from tests.support.client import RawConnection
from tests.support.clock import FakeClock, settle

IDLE_TTL_S = 60
NAMES = 100_000
REAL = 100  # names bound to the upstream, each through its own file (its own client and watch)
SAMPLE = 2_000  # unknown names sent over sockets
BOUND = MAX_CACHED_BINDINGS + 2_000  # of the others, bound (the binding cache is full) before their service is made


async def test_100000_host_names_then_quiet_leave_only_the_working_set(make_upstream, tmp_path: pathlib.Path):
    up = await make_upstream()
    (tmp_path / "disco").mkdir()
    for name in ["accounts", *(f"real{i}" for i in range(REAL))]:
        (tmp_path / "disco" / name).write_text(up.address_line + "\n")
    config = {
        "admin": {"ip": "127.0.0.1", "port": 0},
        "namers": [{"kind": "fs", "rootDir": "./disco"}],
        "routers": [
            {
                "label": "outgoing",
                "servers": [{"ip": "127.0.0.1", "port": 0}],
                "dtab": "/svc => /#/fs;",
                "bindingCache": {"idleTtlSecs": IDLE_TTL_S},
            }
        ],
    }
    clock = FakeClock()
    daemon = Daemon(
        load_config(yaml.safe_dump(config), MeshdConfig), Runtime(clock=clock, base_dir=tmp_path, rng=random.Random(7))
    )
    await daemon.start()
    try:
        router = daemon.routers[0]
        (namer,) = daemon.namers.values()
        assert isinstance(namer, FsNamer)
        port = daemon.port_of("outgoing")
        admin = daemon.admin_port
        assert admin is not None

        # -- 100,000 names ---------------------------------------------------------------------
        sent = 0
        conn = await RawConnection.open(port)
        try:
            for host in ["accounts", *(f"real{i}" for i in range(REAL))]:
                assert (await asyncio.wait_for(conn.request("GET", "/", host=host), 10)).status == 200
                sent += 1
        finally:
            await conn.close()
        assert len(router.clients) == REAL + 1 and len(namer._addrs) == REAL + 1
        real5 = router.named["/svc/real5"]
        sent += await invent(port, (f"unknown{i}" for i in range(SAMPLE)))
        largest = 0
        for i in range(NAMES - SAMPLE - REAL - 1):
            path = Path.read(f"/svc/bulk{i}")
            if i < BOUND:
                await router.binder.bind(path, "")
            router.service_for(path)
            if i % 1000 == 0:
                largest = max(largest, len(router.services))
                assert len(router.binder.cache) <= MAX_CACHED_BINDINGS
        assert largest <= MAX_SERVICE_STATES
        assert len(router.named) == MAX_SERVICES
        assert router.folded_created == NAMES - MAX_SERVICES

        # -- quiet: only `accounts` and `real0` are used, every second, for the idle time -------
        conn = await RawConnection.open(port)
        try:
            for _ in range(IDLE_TTL_S + 15):
                clock.advance(1.0)
                for host in ("accounts", "real0"):
                    assert (await asyncio.wait_for(conn.request("GET", "/", host=host), 10)).status == 200
                    sent += 1
                router.sweep()
        finally:
            await conn.close()

        assert set(router.services) == {Path.read("/svc/accounts"), Path.read("/svc/real0")}
        assert set(router.clients) == {Path.read("/#/fs/accounts"), Path.read("/#/fs/real0")}
        assert set(router.binder.cache) == {(Path.read("/svc/accounts"), ""), (Path.read("/svc/real0"), "")}
        assert set(namer._addrs) == {"accounts", "real0"}  # the watches of every other name released
        assert router.idle_evicted_clients == REAL - 1
        assert len(router.named) == MAX_SERVICES  # the labelled names' counters, and only those

        # no count lost: every request answered over a socket is in meshd_requests_total, the
        # dropped names' included; a dropped labelled name comes back with its counters
        m = samples((await get(admin, "/metrics", host="admin"))[1].decode())
        assert sum(v for _, v in m["meshd_requests"]) == sent
        assert value(m, "meshd_requests", service="/svc/real5", status_class="2xx") == 1
        assert value(m, "meshd_retries", service="/svc/real5", reason="response") == 0
        assert (await get(port, "/", host="real5"))[0] == 200
        assert router.named["/svc/real5"].retries is real5.retries
        assert set(namer._addrs) == {"accounts", "real0", "real5"}
        m = samples((await get(admin, "/metrics", host="admin"))[1].decode())
        assert value(m, "meshd_requests", service="/svc/real5", status_class="2xx") == 2
    finally:
        await settle(clock, daemon.shutdown(drain_timeout_s=2.0), 2.0)
