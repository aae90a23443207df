"""Large routing files and fs namer files: refused over their size limit, and never parsed on the event loop.

A routing file or an endpoints file of up to 1 MiB is valid, but PyYAML needs about 0.3 s to
parse 1 MiB of routing file and the fs namer about 90 ms for 1 MiB of endpoint lines; done on
the event loop, that time is a stall of every request. These tests run meshd in-process, write
real files, and measure the event loop's worst lateness while meshd reloads them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
import time
from collections.abc import Iterator

from meshd.discovery.addr import Bound
from routing.path import Path
from tests.conftest import base_config
from tests.integration.test_fs_live import _lines, _named_upstream, _served, _write
from tests.integration.test_routes_reload import (
    TO_V1,
    TO_V2,
    admin_get,
    reload_metric,
    start_accounts,
    version_served,
)
from tests.support.client import RawConnection
from tests.support.waiting import wait_until

MiB = 1024 * 1024
#: how late a 5 ms timer may run while meshd reloads a large file. Parsed on the loop, the files
#: below stall it 230-320 ms; parsed in a thread, the loop is late by 5-20 ms (the GIL is handed
#: over every 5 ms), and by up to about 50 ms when the machine's cores are busy with other work.
MAX_LAG_S = 0.1


class LoopLag:
    """The event loop's worst lateness, measured by a timer re-armed every 5 ms."""

    def __init__(self, period_s: float = 0.005) -> None:
        self._loop = asyncio.get_running_loop()
        self._period = period_s
        self._due = time.monotonic() + period_s
        self._handle = self._loop.call_later(period_s, self._tick)
        self.worst = 0.0
        self.ticks = 0

    def _tick(self) -> None:
        now = time.monotonic()
        self.worst = max(self.worst, now - self._due)
        self.ticks += 1
        self._due = now + self._period
        self._handle = self._loop.call_later(self._period, self._tick)

    def stop(self) -> float:
        self._handle.cancel()
        return self.worst


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the objects alive now out of the collector's sight, as `meshd run` does after start-up
    (daemon._tune_gc): otherwise a full collection of the test process's heap, which the parse's
    allocations trigger and which holds the GIL, makes the loop 30-40 ms late by itself."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def comments(size: int) -> str:
    """`size` bytes of YAML (and endpoints-file) comment lines."""
    line = "# " + "x" * 77 + "\n"
    return line * (size // len(line))


# -- the routing file ----------------------------------------------------------------------------


async def test_routes_file_over_the_limit_is_refused_logged_and_counted(make_mesh, make_upstream, caplog):
    caplog.set_level(logging.INFO, logger="meshd.reload")
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": TO_V1})
    await start_accounts(make_upstream, mesh, replicas=1)
    watcher = mesh.daemon.routes_watchers["outgoing"]
    routes = mesh.root / "routes.yaml"
    huge = comments(2 * MiB) + TO_V2  # valid, and it would route to v2
    size = len(huge.encode())

    routes.write_text(huge)
    await wait_until(lambda: watcher.errors == 1, timeout=5, message="the refusal")

    assert await version_served(mesh.port) == "v1"  # the last good rules keep serving
    assert watcher.last_parse_thread is None  # never parsed
    refusals = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusals) == 1
    assert str(routes) in refusals[0]
    assert f"{size} bytes" in refusals[0] and f"limit of {MiB} bytes (routesMaxBytes)" in refusals[0]
    _, metrics = await admin_get(mesh.admin_port, "/metrics")
    assert reload_metric(metrics, "error") == 1
    assert reload_metric(metrics, "success") == 1

    routes.write_text(TO_V2)  # back under the limit: applied
    await wait_until(lambda: watcher.successes == 2, timeout=5, message="the fixed file")
    assert await version_served(mesh.port) == "v2"
    assert watcher.errors == 1


async def test_routes_max_bytes_sets_the_limit(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", routesMaxBytes=len(TO_V2) + 10, files={"routes.yaml": TO_V1})
    await start_accounts(make_upstream, mesh, replicas=1)
    watcher = mesh.daemon.routes_watchers["outgoing"]
    assert watcher.max_bytes == len(TO_V2) + 10

    (mesh.root / "routes.yaml").write_text(TO_V2 + "# eleven  \n")
    await wait_until(lambda: watcher.errors == 1, timeout=5, message="the refusal")
    assert "over the limit" in (watcher.last_error or "")
    assert await version_served(mesh.port) == "v1"


async def test_large_routes_file_within_the_limit_is_parsed_off_the_event_loop(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": TO_V1})
    await start_accounts(make_upstream, mesh, replicas=1)
    watcher = mesh.daemon.routes_watchers["outgoing"]
    big = comments(900 * 1024) + TO_V2
    assert 800 * 1024 < len(big.encode()) < MiB

    with frozen_heap():
        (mesh.root / "routes.yaml").write_text(big)
        lag = LoopLag()
        await wait_until(lambda: watcher.successes == 2, timeout=10, message="the large file to apply")
        worst = lag.stop()

    assert await version_served(mesh.port) == "v2"
    assert watcher.errors == 0
    assert watcher.last_parse_thread not in (None, threading.main_thread().ident)
    assert lag.ticks > 10
    assert worst < MAX_LAG_S, f"the event loop stalled {worst * 1000:.0f} ms during the reload"


# -- fs namer files -------------------------------------------------------------------------------


def fs_metric(text: str, result: str) -> float:
    prefix = f'meshd_fs_reloads_total{{result="{result}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no fs reload metric for {result} in:\n{text}")


async def test_fs_file_over_the_limit_is_refused_logged_and_counted(make_mesh, make_upstream, caplog):
    caplog.set_level(logging.INFO, logger="meshd.discovery.fs")
    a = await _named_upstream(make_upstream, "a")
    b = await _named_upstream(make_upstream, "b")
    mesh = await make_mesh()
    _write(mesh, "svc", _lines(a))
    await wait_until(lambda: _served(mesh.port), timeout=5, message="meshd to see svc")
    namer = next(iter(mesh.daemon.namers.values()))
    huge = comments(2 * MiB) + _lines(b)  # valid, and it would send traffic to b
    size = len(huge.encode())

    _write(mesh, "svc", huge)
    await wait_until(lambda: namer.errors == 1, timeout=5, message="the refusal")

    conn = await RawConnection.open(mesh.port)
    for _ in range(5):
        assert (await conn.request("GET", "/")).body == b"a"  # the last good contents keep serving
    await conn.close()
    refusals = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusals) == 1
    assert str(mesh.disco / "svc") in refusals[0]
    assert f"{size} bytes" in refusals[0] and f"limit of {MiB} bytes (maxFileBytes)" in refusals[0]
    _, metrics = await admin_get(mesh.admin_port, "/metrics")
    assert fs_metric(metrics, "error") == 1


async def test_large_fs_file_within_the_limit_is_parsed_off_the_event_loop(make_mesh, make_upstream):
    a = await _named_upstream(make_upstream, "a")
    config = base_config()
    config["namers"] = [{"kind": "fs", "rootDir": "./disco", "maxFileBytes": 4 * MiB}]
    mesh = await make_mesh(config)
    _write(mesh, "svc", _lines(a))
    await wait_until(lambda: _served(mesh.port), timeout=5, message="meshd to see svc")
    namer = next(iter(mesh.daemon.namers.values()))
    # 75,000 replicas of another service, about 2.7 MB (about 0.3 s to parse on the loop)
    big = "".join(f"10.{i // 62500}.{i // 250 % 250}.{i % 250} 8080 1 zone=eu-west-1a\n" for i in range(75_000))
    assert 2 * MiB < len(big) < 4 * MiB

    addr = namer.addr(Path.read("/#/fs/big"))

    def loaded() -> bool:
        current = addr.get()
        return isinstance(current, Bound) and len(current.addresses) == 75_000

    with frozen_heap():
        _write(mesh, "big", big)
        lag = LoopLag()
        await wait_until(loaded, timeout=10, message="the large file to load")
        worst = lag.stop()

    assert await _served(mesh.port)
    assert namer.errors == 0
    assert namer.last_load_thread not in (None, threading.main_thread().ident)
    assert lag.ticks > 5
    assert worst < MAX_LAG_S, f"the event loop stalled {worst * 1000:.0f} ms while the file loaded"
