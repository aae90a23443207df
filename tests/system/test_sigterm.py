"""Graceful shutdown of a meshd process: SIGTERM stops accepting, drains in-flight requests, exits 0.

meshd runs as a subprocess (`python -m meshd run`); the upstream and the clients run in the test.
Two cases: the in-flight request finishes within the drain timeout (it completes with 200), and
it does not (meshd cuts it when the drain timeout expires, and still exits 0).
"""

from __future__ import annotations

import asyncio
import pathlib
import signal

import pytest

from tests.support.client import ConnectionClosed, RawConnection, build_request
from tests.support.process import MeshdProcess, process_config
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until


async def _refuses_connections(port: int) -> bool:
    try:
        conn = await RawConnection.open(port)
    except ConnectionRefusedError:
        return True
    await conn.close()
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_in_flight_request_completes_new_connections_are_refused_exit_0(
    tmp_path: pathlib.Path, make_upstream, sig
):
    release = asyncio.Event()

    async def slow(req: Received) -> Reply:
        if req.target == "/slow":
            await release.wait()
        return Reply(200, [], req.target.encode())

    up = await make_upstream(slow)
    async with MeshdProcess(tmp_path, process_config(drainTimeoutMs=10_000)) as mesh:
        mesh.register("svc", up.address_line)
        idle = await RawConnection.open(mesh.port)
        await wait_until(
            lambda: _ok(idle), timeout=5, message="meshd to serve svc"
        )  # now a keep-alive idle connection
        busy = await RawConnection.open(mesh.port)
        await busy.send(build_request("GET", "/slow"))
        await wait_until(
            lambda: any(r.target == "/slow" for r in up.received), timeout=5, message="/slow upstream"
        )

        loop = asyncio.get_running_loop()
        signalled = loop.time()
        mesh.send_signal(sig)
        await wait_until(lambda: _refuses_connections(mesh.port), timeout=5, message="the listener to close")
        assert await asyncio.wait_for(
            idle.is_closed_by_peer(), 5
        )  # idle keep-alive connections close at once
        assert mesh.returncode is None  # still draining the busy one

        release.set()
        response = await asyncio.wait_for(busy.read_response(), 5)
        assert (response.status, response.body) == (200, b"/slow")
        assert response.header("connection") == "close"
        assert await mesh.wait(timeout=10) == 0
        assert loop.time() - signalled < 10
        await idle.close()
        await busy.close()
    assert "draining" in mesh.log_text()


async def _ok(conn: RawConnection) -> bool:
    return (await conn.request("GET", "/")).status == 200


async def test_drain_timeout_cuts_the_request_still_in_flight_and_exits_0(
    tmp_path: pathlib.Path, make_upstream
):
    release = asyncio.Event()

    async def stuck(req: Received) -> Reply:
        if req.target == "/stuck":
            await release.wait()
        return Reply(200, [], b"too late")

    up = await make_upstream(stuck)
    async with MeshdProcess(tmp_path, process_config(drainTimeoutMs=300)) as mesh:
        mesh.register("svc", up.address_line)
        busy = await RawConnection.open(mesh.port)
        await wait_until(lambda: _ok(busy), timeout=5, message="meshd to serve svc")
        await busy.send(build_request("GET", "/stuck"))
        await wait_until(lambda: up.received[-1].target == "/stuck", timeout=5, message="/stuck upstream")

        loop = asyncio.get_running_loop()
        signalled = loop.time()
        mesh.send_signal(signal.SIGTERM)
        with pytest.raises((ConnectionClosed, ConnectionResetError)):
            await asyncio.wait_for(busy.read_response(), 5)
        cut_after = loop.time() - signalled
        assert await mesh.wait(timeout=10) == 0
        assert 0.25 <= cut_after < 5
        await busy.close()
        await wait_until(
            lambda: up.open_connections == 0, timeout=5, message="the upstream exchange to be dropped"
        )
        release.set()
    assert "drain timeout" in mesh.log_text()
