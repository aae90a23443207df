"""Issue 13, bug 1: a request can no longer be retried without end.

Each request has bounds of its own besides the service's retry budget: `maxRetries` (2) after
the request was written, `maxRequeues` (10) while it never reached an upstream. With the budget's
floor of 10 retries a second, a GET to a broken replica used to go round and round, and a POST
to a port nobody listens on was re-queued for as long as the client waited (and after). Real
sockets throughout; the counts are taken where the attempts land (the upstream, or the dialer).
"""

from __future__ import annotations

import asyncio
import pathlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import yaml

from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from meshd.daemon import Daemon
from meshd.pool.dialer import TcpDialer
from meshd.runtime import Runtime
from routing.path import Path
from tests.conftest import base_config
from tests.integration.test_retries import always, metric, refused_port, scrape
from tests.support.client import RawConnection, build_request
from tests.support.upstreams import ScriptedUpstream
from tests.support.waiting import wait_until

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def broken_replica(answer: bytes | None, *, how: str = "write") -> tuple[Script, list[int]]:
    """A replica that reads each request head and answers it wrongly: writes `answer`, then
    closes; or, with no answer, closes (`how="close"`, a FIN) or resets (`how="reset"`).
    Returns the script and a one-item list counting the requests it saw."""
    seen = [0]

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        seen[0] += 1
        if answer is not None:
            writer.write(answer)
            await writer.drain()
        if how == "reset":
            writer.transport.abort()
        else:
            writer.close()
            await writer.wait_closed()

    return script, seen


BROKEN = {
    "garbage": (b"\x16\x03\x01 this is not http at all\r\n\r\n", "write", "malformed response"),
    "malformed status line": (b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n", "write", "malformed response"),
    "Content-Length and Transfer-Encoding": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfine\r\n0\r\n\r\n",
        "write",
        "malformed response",
    ),
    "close before the head": (None, "close", "closed the connection before responding"),
    "reset": (None, "reset", "closed the connection before responding"),
}


@pytest.mark.parametrize("shape", list(BROKEN))
async def test_a_get_to_a_broken_replica_gets_three_attempts_then_a_502(make_mesh, shape):
    answer, how, what = BROKEN[shape]
    script, seen = broken_replica(answer, how=how)
    async with ScriptedUpstream(script) as up:
        mesh = await make_mesh()  # the default config: maxRetries 2, jittered backoff
        mesh.register("broken", up.address_line)
        conn = await RawConnection.open(mesh.port)
        for n in (1, 2):
            resp = await asyncio.wait_for(conn.request("GET", "/", host="broken"), 10)
            assert resp.status == 502
            err = resp.header("l5d-err") or ""
            assert what in err, err
            assert err.endswith("; gave up after 3 attempts (maxRetries 2)"), err
            assert seen[0] == 3 * n  # exactly 1 + maxRetries attempts reached the replica, per request
        await conn.close()
        state = mesh.daemon.routers[0].services[Path.read("/svc/broken")]
        assert (state.retries.error, state.retries.limit, state.retries.requeue) == (4, 2, 0)


async def test_a_5xx_on_every_attempt_is_returned_as_the_upstream_sent_it_after_three(make_mesh, make_upstream):
    up = await make_upstream(always(503))
    mesh = await make_mesh()
    mesh.register("failing", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/", host="failing")
    await conn.close()
    assert resp.status == 503 and resp.body == b"no\n"
    assert resp.header("l5d-err") is None  # the upstream's own answer: meshd adds no l5d-err to it
    assert up.requests == 3
    text = await scrape(mesh.admin_port)
    labels = {"router": "outgoing", "service": "/svc/failing"}
    assert metric(text, "meshd_retry_limit_reached_total", **labels) == 1
    assert metric(text, "meshd_retries_total", **labels, reason="response") == 2
    assert metric(text, "meshd_retry_budget_exhausted_total", **labels) == 0


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> Counter[int]:
    """Every connect meshd attempts, by port (the real dialer, counted)."""
    counts: Counter[int] = Counter()
    dial = TcpDialer.dial

    async def counting(self, host, port, factory):  # type: ignore[no-untyped-def]
        counts[port] += 1
        return await dial(self, host, port, factory)

    monkeypatch.setattr(TcpDialer, "dial", counting)
    return counts


async def test_a_post_to_a_refused_port_answers_502_promptly_after_eleven_connects(make_mesh, connects):
    # the issue's reproduction: `curl -m 10 -X POST -d x -H 'Host: dead' localhost:4140/`
    dead = refused_port()
    mesh = await make_mesh()  # the default config throughout
    mesh.register("dead", f"127.0.0.1 {dead}")
    conn = await RawConnection.open(mesh.port)
    started = time.monotonic()
    resp = await asyncio.wait_for(conn.request("POST", "/", body=b"x", host="dead"), 10)
    elapsed = time.monotonic() - started
    await conn.close()
    assert resp.status == 502
    assert resp.header("l5d-err") == (
        f"connect to 127.0.0.1:{dead} failed: connection refused; gave up after 11 attempts (maxRequeues 10)"
    )
    assert connects[dead] == 11  # 1 + maxRequeues
    print(f"\nPOST to a refused port: 502 after {elapsed:.2f} s and {connects[dead]} connects")
    text = await scrape(mesh.admin_port)
    labels = {"router": "outgoing", "service": "/svc/dead"}
    assert metric(text, "meshd_retries_total", **labels, reason="requeue") == 10
    assert metric(text, "meshd_retry_limit_reached_total", **labels) == 1


async def test_shutdown_does_not_wait_the_whole_drain_for_a_request_to_a_dead_port(tmp_path: pathlib.Path, connects):
    (tmp_path / "disco").mkdir()
    dead = refused_port()
    (tmp_path / "disco" / "dead").write_text(f"127.0.0.1 {dead}\n")
    daemon = Daemon(load_config(yaml.safe_dump(base_config()), MeshdConfig), Runtime(base_dir=tmp_path), admin=False)
    await daemon.start()
    try:
        conn = await RawConnection.open(daemon.port_of("outgoing"))
        await conn.send(build_request("POST", "/", body=b"x", headers=[("Host", "dead")]))
        await wait_until(lambda: connects[dead] >= 2, timeout=5, message="the POST is being re-queued")
        started = time.monotonic()
        shutdown = asyncio.ensure_future(daemon.shutdown(drain_timeout_s=60.0))  # SIGTERM, 60 s drain
        resp = await asyncio.wait_for(conn.read_response(), 10)
        assert resp.status == 502 and "gave up after 11 attempts" in (resp.header("l5d-err") or "")
        await conn.close()
        await asyncio.wait_for(shutdown, 10)
        assert time.monotonic() - started < 10
    finally:
        if not daemon._stopped.is_set():
            await daemon.shutdown(drain_timeout_s=0.0)


async def test_bounds_set_per_prefix_apply_to_their_names_only(make_mesh, make_upstream):
    strict = await make_upstream(always(503), name="strict")
    other = await make_upstream(always(503), name="other")
    mesh = await make_mesh(
        service={"retries": {"backoff": {"kind": "constant", "ms": 0}, "maxRetries": 1}},
        services=[{"prefix": "/svc/strict", "retries": {"backoff": {"kind": "constant", "ms": 0}, "maxRetries": 0}}],
    )
    mesh.register("strict", strict)
    mesh.register("other", other)
    conn = await RawConnection.open(mesh.port)
    assert (await conn.request("GET", "/", host="strict")).status == 503
    assert (await conn.request("GET", "/", host="other")).status == 503
    await conn.close()
    assert (strict.requests, other.requests) == (1, 2)


@pytest.mark.parametrize("balancer", ["roundRobin", "ewma"])
async def test_a_retry_is_not_sent_back_to_the_replica_that_just_failed_it(make_mesh, make_upstream, balancer):
    # b and c failed earlier and are ejected; a is the only live replica, and now a fails. A retry
    # must go to b or c (back up since) rather than to a again: another replica exists. (Two of
    # three ejected needs `maxEjectionPercent: 100`; no panic mode, so a alone takes the picks.)
    a = await make_upstream(name="a")
    b = await make_upstream(always(503), name="b")
    c = await make_upstream(always(503), name="c")
    mesh = await make_mesh(
        service={"retries": {"backoff": {"kind": "constant", "ms": 0}}},
        client={
            "loadBalancer": {"kind": balancer},
            "failureAccrual": {"kind": "consecutiveFailures", "failures": 2,
                               "backoff": {"kind": "constant", "ms": 600_000}},
            "maxEjectionPercent": 100,
            "panicThresholdPercent": 0,
        },
    )
    # b and c alone first, until both are ejected (each request tries b, c, b or c, b, c): with
    # a among them, P2C + Peak EWMA would rarely pick a failed replica again, so how soon both
    # were ejected would be up to chance
    mesh.register("accounts", b, c)
    conn = await RawConnection.open(mesh.port)
    live, dead_b, dead_c = (f"127.0.0.1:{u.port}" for u in (a, b, c))

    def states() -> dict[str, str]:
        client = mesh.daemon.routers[0].clients[Path.read("/#/fs/accounts")]
        return {n.member.label: n.state for n in client.balancer.nodes()}

    for _ in range(20):
        assert (await conn.request("GET", "/", host="accounts")).status == 503
        if states() == {dead_b: "ejected", dead_c: "ejected"}:
            break
    else:
        pytest.fail(f"b and c were never both ejected: {states()}")
    mesh.register("accounts", a, b, c)  # a joins; b and c stay ejected (600 s backoff)
    await wait_until(lambda: states() == {live: "live", dead_b: "ejected", dead_c: "ejected"},
                     timeout=5, message="a live beside the ejected b and c")
    client = mesh.daemon.routers[0].clients[Path.read("/#/fs/accounts")]
    assert client is not None
    a.handler = always(503)
    b.handler = c.handler = always(200)
    before = a.requests
    resp = await conn.request("GET", "/", [("l5d-reqid", "the-request")], host="accounts")
    await conn.close()
    assert resp.status == 200
    assert a.requests - before == 1  # a saw this request once: its retry went to b or c
    assert sum(1 for r in (*b.received, *c.received) if r.header("l5d-reqid") == "the-request") == 1
    assert client.balancer.statistics().all_ejected_picks >= 1
