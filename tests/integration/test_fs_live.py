"""The fs namer, live: endpoint-file edits apply within a second, under load, without failing a request.

These tests edit the files the way an operator's tooling does (write a temporary file, rename it
over the old one) and let the namer's own polling find the change; nothing calls `scan()`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.support.client import RawConnection
from tests.support.clock import FakeClock
from tests.support.upstreams import Received, Reply, Upstream
from tests.support.waiting import wait_until


def _write(mesh, service: str, text: str) -> None:
    tmp = mesh.disco / f".{service}.edit"
    tmp.write_text(text)
    tmp.replace(mesh.disco / service)


def _lines(*ups: Upstream) -> str:
    return "".join(f"{u.address_line}\n" for u in ups)


async def _named_upstream(make_upstream, name: str) -> Upstream:
    async def handler(req: Received) -> Reply:
        return Reply(200, [], name.encode())

    up: Upstream = await make_upstream(handler, name=name)
    return up


class Load:
    """Clients sending GETs back to back on keep-alive connections; every status is recorded."""

    def __init__(self, port: int, host: str = "svc", workers: int = 4) -> None:
        self._port = port
        self._host = host
        self._workers = workers
        self.statuses: list[int] = []
        self.bodies: list[bytes] = []
        self._stop = asyncio.Event()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Load]:
        async with asyncio.TaskGroup() as group:
            for _ in range(self._workers):
                group.create_task(self._worker())
            try:
                yield self
            finally:
                self._stop.set()

    async def _worker(self) -> None:
        conn = await RawConnection.open(self._port)
        try:
            while not self._stop.is_set():
                response = await asyncio.wait_for(conn.request("GET", "/", host=self._host), 5)
                self.statuses.append(response.status)
                self.bodies.append(response.body)
        finally:
            await conn.close()

    def served_by(self, name: str, since: int = 0) -> int:
        return self.bodies[since:].count(name.encode())


async def test_edit_applies_at_the_next_poll_without_a_restart(make_mesh, make_upstream):
    # on the fake clock: the poll (pollIntervalMs, 250 ms by default) finds the edit at its instant
    # exactly; the other tests here poll on the real clock (the smoke of the same behaviour)
    clock = FakeClock(start=0.0)
    a = await _named_upstream(make_upstream, "a")
    b = await _named_upstream(make_upstream, "b")
    mesh = await make_mesh(clock=clock)
    await wait_until(lambda: 0.25 in poll_sleeps(clock), timeout=5, message="the namer's first poll sleep")
    _write(mesh, "svc", _lines(a))
    clock.advance(0.25)  # the first poll finds svc
    await wait_until(lambda: _served(mesh.port), timeout=5, message="meshd to see svc")
    conn = await RawConnection.open(mesh.port)
    assert (await conn.request("GET", "/")).body == b"a"
    await wait_until(lambda: 0.5 in poll_sleeps(clock), timeout=5, message="the namer's next poll sleep")
    _write(mesh, "svc", _lines(b))
    clock.advance(0.25 - 1 / 1024)
    assert (await conn.request("GET", "/")).body == b"a"  # not polled yet
    clock.advance(1 / 1024)  # the poll, 250 ms after the last

    async def served_by_b() -> bool:
        return (await conn.request("GET", "/")).body == b"b"

    await wait_until(served_by_b, timeout=5, interval=0.01, message="the edit to apply")
    assert clock.now() == 0.5
    for _ in range(5):
        assert (await conn.request("GET", "/")).body == b"b"
    await conn.close()


def poll_sleeps(clock: FakeClock) -> list[float]:
    return [t.when for t in clock.pending]


async def _served(port: int, host: str = "svc") -> bool:
    conn = await RawConnection.open(port)
    try:
        return (await conn.request("GET", "/", host=host)).status == 200
    finally:
        await conn.close()


async def test_edits_under_load_never_fail_a_request(make_mesh, make_upstream):
    ups = [await _named_upstream(make_upstream, name) for name in ("a", "b", "c")]
    a, b, c = ups
    mesh = await make_mesh()
    _write(mesh, "svc", _lines(a))
    await wait_until(lambda: _served(mesh.port), timeout=5, message="meshd to see svc")
    load = Load(mesh.port)
    async with load.running():
        for members, newcomer in (((a, b), b), ((b,), None), ((b, c), c), ((c,), None), ((a, c), a)):
            _write(mesh, "svc", _lines(*members))
            mark = len(load.bodies)
            names = {u.name.encode() for u in members}

            def newcomer_served(name: str = newcomer.name if newcomer else "", mark: int = mark) -> bool:
                return load.served_by(name, mark) > 0

            def only_members_served(names: set[bytes] = names, mark: int = mark) -> bool:
                # 20 responses in a row after the edit, all from the members
                recent = load.bodies[mark:][-20:]
                return len(recent) == 20 and set(recent) <= names

            if newcomer is not None:
                await wait_until(newcomer_served, timeout=2, message=f"{newcomer.name} to get traffic")
            else:
                await wait_until(
                    only_members_served, timeout=2, message="removed endpoints to stop getting traffic"
                )
    assert len(load.statuses) > 50
    assert set(load.statuses) == {200}


async def test_request_in_flight_to_a_removed_endpoint_completes_and_its_pool_drains(
    make_mesh, make_upstream
):
    release = asyncio.Event()

    async def slow(req: Received) -> Reply:
        await release.wait()
        return Reply(200, [], b"old")

    old = await make_upstream(slow, name="old")
    new = await _named_upstream(make_upstream, "new")
    mesh = await make_mesh()
    _write(mesh, "svc", _lines(old))
    await wait_until(lambda: _known(mesh), timeout=5, message="meshd to see svc")
    held = await RawConnection.open(mesh.port)
    await held.send(b"GET /slow HTTP/1.1\r\nHost: svc\r\n\r\n")
    await wait_until(lambda: old.request_event.is_set(), timeout=5, message="the slow request to arrive")
    _write(mesh, "svc", _lines(new))
    (client,) = mesh.daemon.routers[0].clients.values()
    await wait_until(
        lambda: [e.label for e in client.endpoints()] == [f"127.0.0.1:{new.port}"],
        timeout=2,
        message="the edit to apply",
    )
    assert await _served(mesh.port)
    assert old.open_connections == 1  # the busy connection is kept until its exchange ends
    release.set()
    response = await asyncio.wait_for(held.read_response(), 5)
    assert (response.status, response.body) == (200, b"old")
    await wait_until(
        lambda: old.open_connections == 0, timeout=5, message="the removed endpoint's pool to close"
    )
    await held.close()


def _known(mesh) -> bool:
    namer = next(iter(mesh.daemon.namers.values()))
    return bool(namer.statistics()["services"])


async def test_bad_edit_keeps_the_last_good_endpoints(make_mesh, make_upstream):
    a = await _named_upstream(make_upstream, "a")
    b = await _named_upstream(make_upstream, "b")
    mesh = await make_mesh()
    _write(mesh, "svc", _lines(a))
    await wait_until(lambda: _served(mesh.port), timeout=5, message="meshd to see svc")
    namer = next(iter(mesh.daemon.namers.values()))
    scans = namer.statistics()["scans"]
    _write(mesh, "svc", "127.0.0.1 not-a-port\n")
    await wait_until(lambda: namer.statistics()["scans"] >= scans + 2, timeout=5, message="two scans")
    conn = await RawConnection.open(mesh.port)
    for _ in range(5):
        assert (await conn.request("GET", "/")).body == b"a"
    _write(mesh, "svc", _lines(b) + "# fixed\n")

    async def served_by_b() -> bool:
        return (await conn.request("GET", "/")).body == b"b"

    await wait_until(served_by_b, timeout=2, message="the fixed file to apply")
    await conn.close()


async def test_deleted_file_makes_the_service_unknown_and_a_new_file_is_served(make_mesh, make_upstream):
    a = await _named_upstream(make_upstream, "a")
    mesh = await make_mesh()
    _write(mesh, "svc", _lines(a))
    await wait_until(lambda: _served(mesh.port), timeout=5, message="meshd to see svc")
    (mesh.disco / "svc").unlink()
    conn = await RawConnection.open(mesh.port)

    async def svc_unknown() -> bool:
        return (await conn.request("GET", "/", host="svc")).status == 502

    async def fresh_served() -> bool:
        return (await conn.request("GET", "/", host="fresh")).status == 200

    await wait_until(svc_unknown, timeout=2, message="svc to be unknown")
    resp = await conn.request("GET", "/", host="svc")
    assert "No hosts are available for /svc/svc" in (resp.header("l5d-err") or "")
    _write(mesh, "fresh", _lines(a))
    await wait_until(fresh_served, timeout=2, message="the new service")
    await conn.close()


async def test_weights_in_the_file_steer_traffic(make_mesh, make_upstream):
    heavy = await _named_upstream(make_upstream, "heavy")
    light = await _named_upstream(make_upstream, "light")
    mesh = await make_mesh(client={"loadBalancer": {"kind": "roundRobin"}})
    _write(mesh, "svc", f"{heavy.address_line} 4\n{light.address_line} 1\n")
    await wait_until(lambda: _served(mesh.port), timeout=5, message="meshd to see svc")
    conn = await RawConnection.open(mesh.port)
    bodies = [(await conn.request("GET", "/")).body for _ in range(100)]
    await conn.close()
    assert bodies.count(b"heavy") + bodies.count(b"light") == 100
    assert bodies.count(b"heavy") >= 3 * bodies.count(b"light")
