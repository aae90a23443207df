"""Whole-config reload (issue #17): a new meshd.yaml is applied without dropping a request; a bad
one is refused with its YAML path and line, and the running config keeps serving.

In-process meshds (`make_mesh`) for the seams; tests/system/test_sighup.py does the same to a
meshd process with SIGHUP.
"""

from __future__ import annotations

import asyncio
import json

import yaml

from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from tests.conftest import base_config
from tests.support.client import ConnectionClosed, RawConnection
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until


def config(**router: object) -> MeshdConfig:
    return load_config(yaml.safe_dump(base_config(**router)), MeshdConfig)


async def named(make_upstream, name: str, gate: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
    async def answer(request: Received) -> Reply:
        if gate is not None and request.target == "/slow":
            await gate.wait()
        return Reply(200, [], name.encode())

    return await make_upstream(answer)


async def admin(mesh, method: str, target: str) -> tuple[int, dict[str, object]]:  # type: ignore[no-untyped-def]
    conn = await RawConnection.open(mesh.admin_port)
    try:
        resp = await asyncio.wait_for(conn.request(method, target, host="localhost"), 10)
    finally:
        await conn.close()
    return resp.status, json.loads(resp.body)


async def test_a_new_dtab_applies_on_the_same_socket_while_the_request_in_flight_finishes(make_mesh, make_upstream):
    gate = asyncio.Event()
    v1 = await named(make_upstream, "v1", gate)
    v2 = await named(make_upstream, "v2")
    mesh = await make_mesh()
    mesh.register("accounts", v1)
    mesh.register("accounts-v2", v2)
    port = mesh.port
    keepalive = await RawConnection.open(port)
    assert (await keepalive.request("GET", "/", host="accounts")).body == b"v1"
    slow = await RawConnection.open(port)
    in_flight = asyncio.ensure_future(slow.request("GET", "/slow", host="accounts"))
    await wait_until(lambda: any(r.target == "/slow" for r in v1.received), timeout=5, message="/slow at v1")
    old_router = mesh.daemon.routers[0]

    outcome = await mesh.daemon.reload(config(dtab="/svc => /#/fs; /svc/accounts => /#/fs/accounts-v2;"))

    assert outcome.result == "applied" and "outgoing" in outcome.message
    assert mesh.port == port  # the same socket
    # the connection opened before the reload: its next request goes by the new config
    assert (await keepalive.request("GET", "/", host="accounts")).body == b"v2"
    fresh = await RawConnection.open(port)
    assert (await fresh.request("GET", "/", host="accounts")).body == b"v2"
    gate.set()
    answer = await asyncio.wait_for(in_flight, 5)
    assert (answer.status, answer.body) == (200, b"v1")  # finished on the old router
    # then the old router retires: its clients' pools close once its last request was answered
    await wait_until(lambda: not mesh.daemon._retiring, timeout=5, message="the old router to retire")
    pools = [e.pool for c in old_router.clients.values() for e in c._endpoints.values()]
    assert pools and all(p._closed for p in pools)
    for conn in (keepalive, slow, fresh):
        await conn.close()


async def test_an_unchanged_router_keeps_its_clients_and_counters(make_mesh, make_upstream):
    up = await named(make_upstream, "up")
    mesh = await make_mesh()
    mesh.register("accounts", up)
    conn = await RawConnection.open(mesh.port)
    assert (await conn.request("GET", "/", host="accounts")).status == 200
    router = mesh.daemon.routers[0]
    assert (await mesh.daemon.reload(config())).result == "unchanged"
    new = config()
    changed = MeshdConfig(admin=new.admin, namers=new.namers, routers=new.routers, drain_timeout_ms=5_000)
    outcome = await mesh.daemon.reload(changed)
    assert outcome.result == "applied" and outcome.message == "applied: routers rebuilt: none"
    assert mesh.daemon.routers[0] is router and router.clients
    assert (await conn.request("GET", "/", host="accounts")).status == 200
    await conn.close()


async def test_servers_added_open_and_servers_removed_drain_and_close(make_mesh, make_upstream):
    up = await named(make_upstream, "up")
    mesh = await make_mesh()
    mesh.register("accounts", up)
    first = mesh.port
    two = [{"ip": "127.0.0.1", "port": 0}, {"ip": "127.0.0.1", "port": 0}]
    assert (await mesh.daemon.reload(config(servers=two))).result == "applied"
    second = mesh.daemon.port_of("outgoing", 1)
    assert mesh.daemon.port_of("outgoing", 0) == first
    conn = await RawConnection.open(second)
    assert (await conn.request("GET", "/", host="accounts")).body == b"up"
    await conn.close()
    assert (await mesh.daemon.reload(config())).result == "applied"  # back to one server
    await wait_until(lambda: _refused(second), timeout=5, message="the removed server to close")
    conn = await RawConnection.open(first)
    assert (await conn.request("GET", "/", host="accounts")).body == b"up"
    await conn.close()


async def _refused(port: int) -> bool:
    try:
        conn = await RawConnection.open(port)
    except ConnectionRefusedError:
        return True
    try:
        await conn.request("GET", "/", host="accounts")
    except (ConnectionClosed, ConnectionError):
        return True
    finally:
        await conn.close()
    return False


async def test_a_bad_file_is_refused_with_its_line_and_the_running_config_keeps_serving(make_mesh, make_upstream):
    up = await named(make_upstream, "up")
    mesh = await make_mesh()
    mesh.register("accounts", up)
    path = mesh.root / "meshd.yaml"
    mesh.daemon.config_path = path
    good = base_config()
    broken = yaml.safe_dump(good).replace("routers:", "routers:\n- label: bad label\n  dtab: '/svc => '")
    path.write_text(broken)
    version = mesh.daemon.config_version

    outcome = await mesh.daemon.reload_from_file()

    assert outcome.result == "refused"
    assert str(path) in outcome.message and "routers[0].label" in outcome.message and "line" in outcome.message
    assert mesh.daemon.config_version == version
    conn = await RawConnection.open(mesh.port)
    assert (await conn.request("GET", "/", host="accounts")).body == b"up"
    await conn.close()
    status, shown = await admin(mesh, "GET", "/admin/config")
    assert status == 200 and shown["version"] == version
    assert "routers[0].label" in str(shown["lastReloadError"])
    assert shown["config"]["routers"][0]["label"] == "outgoing"  # type: ignore[index]


async def test_post_admin_reload_applies_the_file_and_counts(make_mesh, make_upstream):
    v1 = await named(make_upstream, "v1")
    v2 = await named(make_upstream, "v2")
    mesh = await make_mesh()
    mesh.register("accounts", v1)
    mesh.register("accounts-v2", v2)
    path = mesh.root / "meshd.yaml"
    mesh.daemon.config_path = path
    path.write_text(yaml.safe_dump(base_config(dtab="/svc => /#/fs; /svc/accounts => /#/fs/accounts-v2;")))

    status, body = await admin(mesh, "POST", "/admin/reload")
    assert status == 200 and body["result"] == "applied"
    conn = await RawConnection.open(mesh.port)
    assert (await conn.request("GET", "/", host="accounts")).body == b"v2"
    await conn.close()
    status, body = await admin(mesh, "POST", "/admin/reload")
    assert status == 200 and body["result"] == "unchanged"
    path.write_text("routers: [")
    status, body = await admin(mesh, "POST", "/admin/reload")
    assert status == 422 and body["result"] == "refused"
    scrape = await RawConnection.open(mesh.admin_port)
    metrics = (await scrape.request("GET", "/metrics", host="localhost")).body.decode()
    await scrape.close()
    for result, count in (("applied", 1), ("unchanged", 1), ("refused", 1)):
        assert f'meshd_config_file_reloads_total{{result="{result}"}} {count}' in metrics


async def test_a_routing_file_that_does_not_load_refuses_the_whole_reload(make_mesh, make_upstream):
    up = await named(make_upstream, "up")
    mesh = await make_mesh()
    mesh.register("accounts", up)
    (mesh.root / "routes.yaml").write_text("dtab: |\n  /svc => \n")
    router = mesh.daemon.routers[0]

    outcome = await mesh.daemon.reload(config(routes="routes.yaml"))

    assert outcome.result == "refused" and "routes.yaml" in outcome.message
    assert mesh.daemon.routers[0] is router
    conn = await RawConnection.open(mesh.port)
    assert (await conn.request("GET", "/", host="accounts")).body == b"up"
    await conn.close()
