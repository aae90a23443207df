"""SIGHUP reloads a meshd process's whole config without dropping a request (issue #17).

A steady stream of requests runs while the process gets SIGHUP 23 times: a good new config
(applied), a broken one (refused: the running config keeps serving, the reason logged with its
YAML path), the first config again, then 20 more alternating the two good configs and the broken
one. No request fails; the dtab of each config shows in where the requests went.
"""

from __future__ import annotations

import asyncio
import pathlib
import signal

import yaml

from tests.support.client import RawConnection
from tests.support.process import MeshdProcess, process_config
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until


async def test_sighup_reloads_under_steady_traffic_with_no_failed_request(tmp_path: pathlib.Path, make_upstream):
    async def v1(req: Received) -> Reply:
        return Reply(200, [], b"v1")

    async def v2(req: Received) -> Reply:
        return Reply(200, [], b"v2")

    up1, up2 = await make_upstream(v1), await make_upstream(v2)
    first = process_config()
    second = process_config({"dtab": "/svc => /#/fs; /svc/accounts => /#/fs/accounts-v2;"})
    async with MeshdProcess(tmp_path, first) as mesh:
        mesh.register("accounts", up1.address_line)
        mesh.register("accounts-v2", up2.address_line)
        bodies: list[bytes] = []
        failures: list[str] = []
        stop = asyncio.Event()

        async def traffic() -> None:
            conn = await RawConnection.open(mesh.port)
            try:
                while not stop.is_set():
                    resp = await asyncio.wait_for(conn.request("GET", "/", host="accounts"), 5)
                    if resp.status != 200:
                        failures.append(f"{resp.status} {resp.header('l5d-err')}")
                    bodies.append(resp.body)
            finally:
                await conn.close()

        async def serves() -> bool:
            conn = await RawConnection.open(mesh.port)
            try:
                return (await conn.request("GET", "/", host="accounts")).status == 200
            finally:
                await conn.close()

        await wait_until(serves, timeout=10, message="the fs namer to find accounts")
        loader = asyncio.ensure_future(traffic())
        await wait_until(lambda: b"v1" in bodies, timeout=10, message="traffic to v1")

        mesh.config_path.write_text(yaml.safe_dump(second, sort_keys=False))
        mesh.send_signal(signal.SIGHUP)
        seen = len(bodies)
        await wait_until(lambda: b"v2" in bodies[seen:], timeout=10, message="traffic to move to v2")

        mesh.config_path.write_text("routers:\n- label: outgoing\n  servers: [{ip: 127.0.0.1, port: not-a-port}]\n")
        mesh.send_signal(signal.SIGHUP)
        await wait_until(lambda: "config reload refused" in mesh.log_text(), timeout=10, message="the refusal")
        seen = len(bodies)
        await wait_until(lambda: len(bodies) > seen + 50, timeout=10, message="more traffic")
        assert set(bodies[seen:]) == {b"v2"}  # the running config kept serving

        mesh.config_path.write_text(yaml.safe_dump(first, sort_keys=False))
        mesh.send_signal(signal.SIGHUP)
        seen = len(bodies)
        await wait_until(lambda: b"v1" in bodies[seen:], timeout=10, message="traffic back to v1")

        # 20 more reloads, alternating the two good configs and the broken one, under the same
        # steady traffic: each one applied or refused in turn, and still no request fails
        texts = {"v1": yaml.safe_dump(first, sort_keys=False), "v2": yaml.safe_dump(second, sort_keys=False)}
        broken = "routers:\n- label: outgoing\n  servers: [{ip: 127.0.0.1, port: not-a-port}]\n"
        expected = b"v1"
        for n in range(20):
            kind = ("v2", "broken", "v1", "broken")[n % 4]
            applied = mesh.log_text().count("config reload applied")
            refused = mesh.log_text().count("config reload refused")
            mesh.config_path.write_text(broken if kind == "broken" else texts[kind])
            mesh.send_signal(signal.SIGHUP)
            if kind == "broken":
                await wait_until(lambda r=refused: mesh.log_text().count("config reload refused") > r, timeout=10,
                                 message=f"reload {n} refused")
            else:
                await wait_until(lambda a=applied: mesh.log_text().count("config reload applied") > a, timeout=10,
                                 message=f"reload {n} applied")
                expected = kind.encode()
            seen = len(bodies)
            await wait_until(lambda s=seen: len(bodies) > s + 5, timeout=10, message="traffic after the reload")
            assert bodies[-1] == expected
        stop.set()
        await asyncio.wait_for(loader, 10)

    assert failures == []
    assert "routers[0].servers[0].port" in mesh.log_text() and str(mesh.config_path) in mesh.log_text()
