"""Zero-downtime upgrade: a new meshd process takes the listening sockets over from the running
one (`--takeover` / `--handover-socket`, meshd/handover.py) under steady load, and no request fails.

Each request opens a new connection, so requests keep arriving in the listening socket's accept
queue throughout: a handover that closed the old socket before the new process accepted from it
would reset some of them.
"""

from __future__ import annotations

import asyncio
import pathlib
import time

from tests.support.client import RawConnection
from tests.support.loadgen import gather_results, start_open_loop
from tests.support.process import MeshdProcess, process_config
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until


async def test_a_new_process_takes_the_sockets_over_under_load_and_no_request_fails(
    tmp_path: pathlib.Path, make_upstream
):
    async def ok(req: Received) -> Reply:
        return Reply(200, [], b"ok")

    up = await make_upstream(ok)
    handover = tmp_path / "handover.sock"
    config = process_config(drainTimeoutMs=5_000)
    old = MeshdProcess(tmp_path, config, args=["--handover-socket", str(handover)], name="old")
    new = MeshdProcess(tmp_path, config, args=["--takeover", str(handover), "--handover-socket", str(handover)],
                       name="new")
    async with old:
        old.register("svc", up.address_line)
        port = old.port

        async def one() -> int:
            conn = await RawConnection.open(port)
            try:
                resp = await asyncio.wait_for(conn.request("GET", "/", host="svc", headers=[("Connection", "close")]), 5)
                return resp.status
            finally:
                await conn.close()

        await wait_until(lambda: one_ok(one), timeout=10, message="meshd to serve svc")
        statuses: list[int | str] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                try:
                    statuses.append(await one())
                except (TimeoutError, OSError, ConnectionError) as exc:
                    statuses.append(f"{type(exc).__name__}: {exc}")
                except Exception as exc:  # a reset mid-response shows as the client's own error
                    statuses.append(f"{type(exc).__name__}: {exc}")

        loops = [asyncio.ensure_future(load()) for _ in range(4)]
        await wait_until(lambda: len(statuses) > 100, timeout=10, message="load to run")
        async with new:
            assert new.port == port  # the same socket, taken over
            assert await old.wait(timeout=15) == 0  # the old one drained and exited
            before = len(statuses)
            await wait_until(lambda: len(statuses) > before + 200, timeout=10, message="load on the new process")
            stop.set()
            await asyncio.gather(*loops)
            assert "took over 1 listening sockets" in new.log_text()
    assert "handed 1 listening sockets over" in old.log_text()
    failures = [s for s in statuses if s != 200]
    assert failures == [], failures[:5]
    assert len(statuses) > 300


async def test_a_hand_over_during_a_steady_1000_requests_a_second_fails_none(tmp_path: pathlib.Path, make_upstream):
    """Open-loop load over keep-alive connections (meshd-bench's generator, a process of its own):
    1,000 GETs a second for 6 s, the new process taking over about 2 s in. Every request is
    answered 200. The old process closes its idle keep-alive connections as it drains; a request
    the generator had just sent on one is sent again on a new connection, as any HTTP client
    does for an idempotent request (RFC 9112, 9.3.1), and counted: at most one per connection."""

    async def ok(req: Received) -> Reply:
        return Reply(200, [], b"ok")

    up = await make_upstream(ok)
    handover = tmp_path / "handover.sock"
    config = process_config(drainTimeoutMs=5_000)
    old = MeshdProcess(tmp_path, config, args=["--handover-socket", str(handover)], name="old")
    new = MeshdProcess(tmp_path, config, args=["--takeover", str(handover), "--handover-socket", str(handover)],
                       name="new")
    async with old:
        old.register("svc", up.address_line)
        port = old.port

        async def serves() -> bool:
            conn = await RawConnection.open(port)
            try:
                return (await conn.request("GET", "/", host="svc")).status == 200
            finally:
                await conn.close()

        await wait_until(serves, timeout=10, message="meshd to serve svc")
        start_at = time.monotonic() + 1.5
        duration = 6.0
        load = await start_open_loop(tmp_path, "load", port=port, host="svc", rate_per_sec=1000.0,
                                     duration_secs=duration, start_at=start_at, connections=16,
                                     resend_unanswered=True)
        await wait_until(lambda: time.monotonic() > start_at + 2.0, timeout=10, interval=0.05,
                         message="2 s of load on the old process")
        async with new:
            assert new.port == port
            assert await old.wait(timeout=15) == 0
            old_gone = time.monotonic()
            [result] = await gather_results([load])
    assert old_gone < start_at + duration, "the load should run on past the old process's exit"
    assert result.errors == {}, result.errors
    assert result.statuses == {200: result.scheduled}, result.statuses
    assert result.scheduled == 6000
    assert result.resent <= result.max_connections_open, (result.resent, result.max_connections_open)


async def one_ok(one) -> bool:  # type: ignore[no-untyped-def]
    try:
        return await one() == 200
    except OSError:
        return False


async def test_a_new_process_that_fails_to_start_leaves_the_old_one_serving(tmp_path: pathlib.Path, make_upstream):
    async def ok(req: Received) -> Reply:
        return Reply(200, [], b"ok")

    up = await make_upstream(ok)
    handover = tmp_path / "handover.sock"
    old = MeshdProcess(tmp_path, process_config(), args=["--handover-socket", str(handover)], name="old")
    async with old:
        old.register("svc", up.address_line)
        # the new one has a routing file that does not load: it fails after taking the sockets
        broken = process_config({"routes": "missing-routes.yaml"})
        new = MeshdProcess(tmp_path / "new", broken, args=["--takeover", str(handover)], name="new")
        (tmp_path / "new").mkdir()
        try:
            await new.start(timeout=10)
        except RuntimeError:
            pass
        else:
            raise AssertionError("the new meshd should not have started")
        assert await new.wait(timeout=10) != 0
        await wait_until(lambda: "went away before it was ready" in old.log_text(), timeout=10,
                         message="the old one to notice")
        conn = await RawConnection.open(old.port)
        assert (await conn.request("GET", "/", host="svc")).status in (200, 502)  # serving (svc may still be loading)
        await conn.close()
        assert old.returncode is None
