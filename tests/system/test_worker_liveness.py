"""Worker liveness under `meshd run --workers 2` (real processes): the supervisor's heartbeats.

Both workers are up with a fresh heartbeat; a worker whose process is stopped (SIGSTOP: it
exists, but its event loop answers nothing, as a stuck worker's would) goes down within the
heartbeat limit while its heartbeat age grows, and comes back up when it continues; a worker
killed outright is restarted and counted. Traffic through the mesh keeps being answered by the
other worker meanwhile; the merged request counters add up over the workers.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import tempfile
from collections.abc import Awaitable, Callable

from prometheus_client.parser import text_string_to_metric_families

from meshd.workers import DOWN_AFTER_S, UNIX_PATH_MAX, _private_dir
from tests.support.client import RawConnection
from tests.support.nats_server import free_ports
from tests.support.process import MeshdProcess, process_config
from tests.support.waiting import wait_until


class WorkersProcess(MeshdProcess):
    """meshd with --workers: fixed ports (the workers share them); ready once the supervisor is."""

    def __init__(self, workdir: pathlib.Path, workers: int) -> None:
        self.fixed_port, self.fixed_admin = free_ports(2)
        config = process_config(
            {"servers": [{"ip": "127.0.0.1", "port": self.fixed_port}]},
            admin={"ip": "127.0.0.1", "port": self.fixed_admin},
        )
        super().__init__(workdir, config, args=("--workers", str(workers)))

    def _read_ports(self) -> bool:
        if self.returncode is not None:
            raise RuntimeError(f"meshd exited with {self.returncode} while starting:\n{self.log_text()}")
        self.port, self.admin_port = self.fixed_port, self.fixed_admin
        return "supervising" in self.log_text()

    def workers(self) -> list[int]:
        return [int(p) for p in pathlib.Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()]


async def admin_get(mesh: MeshdProcess, target: str) -> str:
    conn = await RawConnection.open(mesh.admin_port)
    try:
        resp = await conn.request("GET", target, host="127.0.0.1")
    finally:
        await conn.close()
    assert resp.status == 200, resp.body
    return resp.body.decode()


async def scrape(mesh: MeshdProcess) -> dict[tuple[str, str], float]:
    conn = await RawConnection.open(mesh.admin_port)
    try:
        resp = await conn.request("GET", "/metrics", host="127.0.0.1")
    finally:
        await conn.close()
    assert resp.status == 200
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(resp.body.decode()):
        for s in family.samples:
            if s.name.startswith("meshd_worker"):
                key = s.labels["worker"]
            elif s.name == "meshd_requests_total" and s.labels.get("status_class") == "2xx":
                key = "2xx"
            elif s.name in ("meshd_client_requests_total", "meshd_client_request_duration_seconds_count"):
                key = s.labels["client"]
            elif s.name == "meshd_client_request_duration_seconds_bucket" and s.labels["le"] == "+Inf":
                key = s.labels["client"]
            else:
                continue
            out[(s.name, key)] = out.get((s.name, key), 0.0) + s.value
    return out


async def test_supervisor_reports_each_workers_liveness_and_restarts(make_upstream, tmp_path):
    up = await make_upstream()
    mesh = WorkersProcess(tmp_path, 2)
    async with mesh:
        mesh.register("accounts", up.address_line)

        async def both_up() -> bool:
            m = await scrape(mesh)
            return m.get(("meshd_worker_up", "0")) == 1 and m.get(("meshd_worker_up", "1")) == 1

        await wait_until(both_up, timeout=20, interval=0.1, message="both workers up")
        m = await scrape(mesh)
        assert m[("meshd_worker_heartbeat_age_seconds", "0")] <= DOWN_AFTER_S
        assert m[("meshd_worker_restarts_total", "0")] == m[("meshd_worker_restarts_total", "1")] == 0

        # traffic: each request on its own connection, so the kernel spreads them over the workers
        async def one() -> int:
            conn = await RawConnection.open(mesh.port)
            try:
                return (await conn.request("GET", "/", host="accounts")).status
            finally:
                await conn.close()

        await wait_until(lambda: _ok(one), timeout=10, message="the workers see the fs namer's file")
        for _ in range(20):
            assert await one() == 200
        # summed over the workers: requests, attempts, and the merged attempt-latency histogram
        m = await scrape(mesh)
        assert m[("meshd_requests_total", "2xx")] == up.requests
        client = "/#/fs/accounts"
        assert m[("meshd_client_requests_total", client)] == up.requests
        assert m[("meshd_client_request_duration_seconds_count", client)] == up.requests
        assert m[("meshd_client_request_duration_seconds_bucket", client)] == up.requests

        # the dashboard's views list every worker's requests and replicas, tagged with the worker
        (router,) = json.loads(await admin_get(mesh, "/admin/requests"))
        ok = [row for row in router["requests"] if row["status"] == 200]
        assert len(ok) == up.requests and {row["worker"] for row in router["requests"]} <= {0, 1}
        assert router["recorded"] >= up.requests
        replicas = json.loads(await admin_get(mesh, "/admin/replicas"))["endpoints"]
        assert sum(p["requests"] for e in replicas for p in e["points"]) == up.requests
        assert {e["worker"] for e in replicas} <= {0, 1} and {e["endpoint"] for e in replicas} == {f"127.0.0.1:{up.port}"}

        # a stuck worker: its process is there, its heartbeats go unanswered
        first, second = sorted(mesh.workers())
        os.kill(second, signal.SIGSTOP)
        try:
            stopped = None

            async def down() -> bool:
                nonlocal stopped
                stopped = await scrape(mesh)
                return 0.0 in (stopped.get(("meshd_worker_up", "0")), stopped.get(("meshd_worker_up", "1")))

            await wait_until(down, timeout=20, interval=0.2, message="the stopped worker reported down")
            assert stopped is not None
            index = "0" if stopped[("meshd_worker_up", "0")] == 0 else "1"
            other = "1" if index == "0" else "0"
            assert stopped[("meshd_worker_heartbeat_age_seconds", index)] > DOWN_AFTER_S
            assert stopped[("meshd_worker_up", other)] == 1
        finally:
            os.kill(second, signal.SIGCONT)
        await wait_until(both_up, timeout=20, interval=0.1, message="the continued worker up again")

        # a dead worker: restarted, counted, and up again
        os.kill(second, signal.SIGKILL)

        async def restarted() -> bool:
            m = await scrape(mesh)
            return m.get(("meshd_worker_restarts_total", index)) == 1 and m.get(("meshd_worker_up", index)) == 1

        await wait_until(restarted, timeout=30, interval=0.2, message="the killed worker restarted and up")
        assert second not in mesh.workers() and first in mesh.workers()
        assert (await scrape(mesh))[("meshd_worker_restarts_total", other)] == 0
        workers = mesh.workers()
    # the test's teardown kills the supervisor outright: its workers must not outlive it
    await wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=10, message="the workers gone")


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def _ok(request: Callable[[], Awaitable[int]]) -> bool:
    try:
        return await request() == 200
    except OSError:
        return False


async def test_the_supervisor_removes_its_run_directory_when_it_stops(tmp_path, monkeypatch):
    """The workers' sockets live in a private directory under $TMPDIR; a stopped meshd leaves none."""
    # a short $TMPDIR: a Unix socket's path must fit in 108 bytes, and tmp_path's may not leave room
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="mw", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    mesh = WorkersProcess(tmp_path, 2)
    async with mesh:
        (rundir,) = list(tmp.iterdir())
        assert rundir.name.startswith("meshd-workers-") and (rundir.stat().st_mode & 0o777) == 0o700
        assert sorted(p.name for p in rundir.iterdir()) == ["worker-0.sock", "worker-1.sock"]
        mesh.send_signal(signal.SIGTERM)
        assert await mesh.wait(timeout=30) == 0
    assert list(tmp.iterdir()) == []
    tmp.rmdir()


async def test_a_tmpdir_too_long_for_unix_sockets_falls_back_to_tmp(tmp_path, monkeypatch, caplog):
    """Before, the workers could not bind sockets under a long $TMPDIR and were restarted forever."""
    long = tmp_path / ("d" * 100)
    long.mkdir()
    monkeypatch.setenv("TMPDIR", str(long))
    mesh = WorkersProcess(tmp_path, 2)
    async with mesh:  # ready: both workers bound their sockets
        assert list(long.iterdir()) == []
        mesh.send_signal(signal.SIGTERM)
        assert await mesh.wait(timeout=30) == 0
    with caplog.at_level(logging.WARNING, logger="meshd.workers"):
        rundir = _private_dir("meshd-workers-", room=len("/worker-1.sock"))
    try:
        assert rundir.parent == pathlib.Path("/tmp") and "too long" in caplog.text
        assert len(os.fsencode(rundir / "worker-1.sock")) <= UNIX_PATH_MAX
    finally:
        rundir.rmdir()
    short = _private_dir("meshd-workers-")  # no socket to fit: $TMPDIR is used as it is
    assert short.parent == long
    short.rmdir()
