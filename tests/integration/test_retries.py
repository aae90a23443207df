"""Retries in the running proxy: classifiers, budget, replay, union branches, cancellation, access log.

Real upstreams and a real meshd listener on loopback. Counts are taken at the upstreams (what
really reached a replica), not only from meshd's own counters.
"""

from __future__ import annotations

import asyncio
import logging
import pathlib
import random
import socket
import struct
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import yaml

from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from meshd.daemon import Daemon
from meshd.listener import CONNECTION_TASK
from meshd.router import ServiceState
from meshd.runtime import Runtime
from routing.path import Path
from tests.conftest import base_config
from tests.support.client import RawConnection, build_request
from tests.support.clock import FakeClock, settle
from tests.support.upstreams import Handler, Received, Reply, ScriptedUpstream
from tests.support.waiting import wait_until

NO_BACKOFF = {"kind": "constant", "ms": 0}


def service_state(mesh, name: str) -> ServiceState:
    state: ServiceState = mesh.daemon.routers[0].services[Path.read(name)]
    return state


def retries_of(mesh, name: str, reason: str) -> int:
    """A retry counter of a service, 0 before the service has seen its first request."""
    state = mesh.daemon.routers[0].services.get(Path.read(name))
    return 0 if state is None else int(getattr(state.retries, reason))


def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connecting to it is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def reset(conn: RawConnection) -> None:
    """Drop a client connection the abrupt way (RST), as a killed or timed-out client often does."""
    sock = conn.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.writer.transport.abort()
    await conn.close()


async def scrape(port: int) -> str:
    conn = await RawConnection.open(port)
    try:
        resp = await conn.request("GET", "/metrics", host="127.0.0.1")
    finally:
        await conn.close()
    assert resp.status == 200
    return resp.body.decode()


def metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))  # the exporter sorts them
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not exported")


def flaky(rate: float, seed: int, *, status: int = 503) -> Handler:
    """A handler failing `rate` of GETs (seeded), answering everything else with 200."""
    rng = random.Random(seed)

    async def handler(req: Received) -> Reply:
        if req.method == "GET" and rng.random() < rate:
            return Reply(status, [], b"unavailable\n")
        return Reply(200, [], b"ok\n")

    return handler


def always(status: int) -> Handler:
    async def handler(req: Received) -> Reply:
        return Reply(status, [], b"no\n")

    return handler


def fail_first(n: int, status: int = 503) -> Handler:
    """Fails the first `n` requests it receives, then answers 200 with the request body echoed."""
    seen = [0]

    async def handler(req: Received) -> Reply:
        seen[0] += 1
        if seen[0] <= n:
            return Reply(status, [], b"try again\n")
        return Reply(200, [], req.body or b"ok\n")

    return handler


async def run_clients(port: int, host: str, total: int, concurrency: int, *, on_request=None) -> Counter[int]:
    """`total` GETs over `concurrency` keep-alive connections; returns the count of each status."""
    statuses: Counter[int] = Counter()
    per_conn = total // concurrency

    async def worker() -> None:
        conn = await RawConnection.open(port)
        try:
            for _ in range(per_conn):
                if on_request is not None:
                    on_request()
                resp = await conn.request("GET", "/", host=host)
                statuses[resp.status] += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


# -- availability under partial failure ----------------------------------------------------------


@pytest.mark.parametrize("accrual", ["consecutiveFailures", "none"])
async def test_one_replica_failing_half_of_gets_is_hidden_by_retries_elsewhere(make_mesh, make_upstream, accrual):
    # With failure accrual (the default) the balancer soon ejects the flaky replica and sends
    # it little; without it, the replica keeps a third of the traffic and retries do the work.
    flaky_up = await make_upstream(flaky(0.5, seed=1), name="flaky")
    healthy = [await make_upstream(name=f"healthy{i}") for i in range(2)]
    mesh = await make_mesh(client={"failureAccrual": {"kind": accrual}})
    mesh.register("accounts", flaky_up, *healthy)
    total = 2000

    statuses = await run_clients(mesh.port, "accounts", total, 20)

    success = statuses[200] / total
    upstream_total = flaky_up.requests + sum(h.requests for h in healthy)
    amplification = upstream_total / total
    print(f"\n3 replicas, one failing 50% of GETs, accrual {accrual}: success {success:.4%}, "
          f"amplification {amplification:.3f}, flaky share {flaky_up.requests / upstream_total:.3f}")
    assert success >= 0.999, statuses
    retried = service_state(mesh, "/svc/accounts").retries.response
    assert retried > 0
    assert upstream_total == total + retried  # every retry reached an upstream, nothing else did
    # a retry avoids the endpoint that just failed: no request reached the flaky replica twice
    reqids = Counter(r.header("l5d-reqid") for r in flaky_up.received)
    assert reqids.most_common(1)[0][1] == 1
    if accrual == "none":
        # without accrual the flaky replica keeps getting traffic (how much depends on timing:
        # Peak EWMA weighs its failures, 2-20% here), so the retries above were really exercised
        assert flaky_up.requests >= 20


@pytest.fixture
async def fake_clock_mesh(tmp_path: pathlib.Path) -> AsyncIterator[tuple[Daemon, FakeClock, pathlib.Path]]:
    """meshd whose clock (retry budget, balancer) moves only when the test advances it."""
    clock = FakeClock()
    (tmp_path / "disco").mkdir()
    # maxRetries well above the default 2: these tests are about the budget, and with 2 retries a
    # replica failing half of the answers would still fail 1 request in 8 on its own
    cfg = load_config(
        yaml.safe_dump(base_config(service={"retries": {"backoff": NO_BACKOFF, "maxRetries": 20}})), MeshdConfig
    )
    daemon = Daemon(cfg, Runtime(clock=clock, base_dir=tmp_path, rng=random.Random(3)), admin=False)
    await daemon.start()
    yield daemon, clock, tmp_path / "disco"
    await settle(clock, daemon.shutdown(drain_timeout_s=2.0), 2.0)


async def test_single_replica_failing_half_of_gets_at_a_rate_the_budget_covers(fake_clock_mesh, make_upstream):
    # Default budget (ttl 10 s, 10 retries/s floor, 20 %). At 5 requests/s the floor plus 20 %
    # allows 11 retries/s; a replica failing half of its answers needs about 5 (one per request
    # on average). The fake clock advances 0.2 s per request, so 2000 requests span 400 s of
    # budget time (40 windows) in a second or two of real time. (No backoff: its sleeps are real.)
    daemon, clock, disco = fake_clock_mesh
    up = await make_upstream(flaky(0.5, seed=2))
    (disco / "accounts").write_text(up.address_line + "\n")
    for namer in daemon.namers.values():
        namer.scan()
    total = 2000

    statuses = await run_clients(daemon.port_of("outgoing"), "accounts", total, 10, on_request=lambda: clock.advance(0.2))

    success = statuses[200] / total
    print(f"\n1 replica failing 50% of GETs at 5 req/s: success {success:.4%}, "
          f"amplification {up.requests / total:.3f}")
    assert success >= 0.999, statuses
    state = daemon.routers[0].services[Path.read("/svc/accounts")]
    assert state.retries.response == up.requests - total
    assert up.requests / total > 1.8  # it really took about two attempts per request


# -- the budget -----------------------------------------------------------------------------------


async def test_retries_stop_at_the_budget_when_every_replica_fails(make_mesh, make_upstream):
    ups = [await make_upstream(always(503)) for _ in range(2)]
    mesh = await make_mesh(
        service={"retries": {"budget": {"ttlSecs": 10, "minRetriesPerSec": 5, "percentCanRetry": 0.2},
                             "backoff": NO_BACKOFF, "maxRetries": 100}}  # the budget alone bounds them here
    )
    mesh.register("ledger", *ups)
    total = 500

    statuses = await run_clients(mesh.port, "ledger", total, 10)

    assert statuses == {503: total}
    attempts = sum(u.requests for u in ups)
    retries = attempts - total
    floor = 5 * 10
    # The test runs well inside one 10 s window: the budget allows 20 % of the requests plus the floor.
    assert retries <= 0.2 * total + floor
    assert retries >= 0.2 * total + floor - 2  # and it did spend it
    state = service_state(mesh, "/svc/ledger")
    assert state.retries.response == retries
    assert state.retries.budget_exhausted == total  # every request ended on a refused retry
    text = await scrape(mesh.admin_port)
    labels = {"router": "outgoing", "service": "/svc/ledger"}
    assert metric(text, "meshd_retry_budget_exhausted_total", **labels) == total
    assert metric(text, "meshd_retries_total", **labels, reason="response") == retries
    assert metric(text, "meshd_retry_budget_balance", **labels) == 0


# -- what is and is not retried --------------------------------------------------------------------


async def test_post_answered_503_is_not_retried(make_mesh, make_upstream):
    up = await make_upstream(fail_first(1))
    mesh = await make_mesh()
    mesh.register("payments", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("POST", "/pay", body=b"amount=10", host="payments")
    assert resp.status == 503
    assert up.requests == 1
    put = await conn.request("PUT", "/pay", body=b"amount=10", host="payments")
    assert put.status == 200  # the same service answers when asked again: it was not the budget
    await conn.close()
    assert service_state(mesh, "/svc/payments").retries.response == 0


async def test_post_refused_at_connect_is_retried_on_another_endpoint(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh(service={"retries": {"backoff": NO_BACKOFF}})
    mesh.register("payments", up, f"127.0.0.1 {refused_port()}")
    conn = await RawConnection.open(mesh.port)
    for i in range(20):
        resp = await conn.request("POST", f"/pay/{i}", body=b"amount=10", host="payments")
        assert resp.status == 200, resp
    await conn.close()
    assert service_state(mesh, "/svc/payments").retries.requeue >= 1
    # each POST reached the live replica exactly once
    assert sorted(r.target for r in up.received) == sorted(f"/pay/{i}" for i in range(20))


class ScriptedServer(ScriptedUpstream):
    """A raw loopback HTTP server for shapes `Upstream` cannot make: each request, numbered from 1
    across all connections, is handed to `script(n, writer)`, which writes what it likes (or
    aborts the connection). Requests are read minimally: a head, then a Content-Length body.
    The server itself (lifecycle, connection count, abort at the end) is `ScriptedUpstream`'s."""

    def __init__(self, script, *, read_body: bool = True) -> None:
        super().__init__(self._serve_requests)
        self.script = script
        self.read_body = read_body
        self.requests: list[bytes] = []
        self.closed_by_peer = 0

    async def _serve_requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length and self.read_body else b""
                self.requests.append(head + body)
                await self.script(len(self.requests), writer)
                if writer.transport.is_closing():
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.closed_by_peer += 1


FINE = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nfine"


async def test_reset_after_write_retries_a_get_but_never_a_post(make_mesh):
    async def reset_odd_requests(n: int, writer: asyncio.StreamWriter) -> None:
        if n % 2 == 1:
            writer.transport.abort()  # the request was written; the upstream vanished unanswered
        else:
            writer.write(FINE)

    async with ScriptedServer(reset_odd_requests) as server:
        mesh = await make_mesh(service={"retries": {"backoff": NO_BACKOFF}})
        mesh.register("svc", f"127.0.0.1 {server.port}")
        conn = await RawConnection.open(mesh.port)
        get = await conn.request("GET", "/")
        assert get.status == 200 and get.body == b"fine"
        post = await conn.request("POST", "/", body=b"once")
        await conn.close()
        # (meshd cannot tell this from a keep-alive race, and says so; either way, never resent)
        assert post.status == 502 and "closed" in (post.header("l5d-err") or "")
        assert [r.split(b" ", 1)[0] for r in server.requests] == [b"GET", b"GET", b"POST"]
        assert service_state(mesh, "/svc/svc").retries.error == 1


# -- request bodies: replay buffer, chunked, Expect: 100-continue ------------------------------


async def test_small_body_is_replayed_and_large_body_is_never_retried(make_mesh, make_upstream):
    up = await make_upstream(fail_first(1))
    mesh = await make_mesh(service={"replayBufferBytes": 1024, "retries": {"backoff": NO_BACKOFF}})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    small = b"s" * 1024  # exactly the buffer: still replayable
    resp = await conn.request("PUT", "/small", body=small)
    assert resp.status == 200 and resp.body == small
    assert [r.body for r in up.received] == [small, small]

    up.handler = fail_first(1)
    large = b"L" * 1025
    resp = await conn.request("PUT", "/large", body=large)
    await conn.close()
    assert resp.status == 503  # retryable for PUT, but the body outgrew the copy kept for replay
    assert [r.target for r in up.received] == ["/small", "/small", "/large"]
    state = service_state(mesh, "/svc/svc")
    assert state.retries.response == 1 and state.retries.not_replayable == 1


async def test_a_body_larger_than_the_buffer_is_still_retried_when_connect_was_refused(make_mesh, make_upstream):
    # nothing of the body left meshd before the refused connect, so nothing needs replaying
    up = await make_upstream(fail_first(0))
    mesh = await make_mesh(service={"replayBufferBytes": 1024, "retries": {"backoff": {"kind": "constant", "ms": 300}}})
    mesh.register("svc", f"127.0.0.1 {refused_port()}")
    conn = await RawConnection.open(mesh.port)
    body = bytes(range(256)) * 40  # 10 KiB
    await conn.send(build_request("POST", "/upload", body=body))
    await wait_until(lambda: retries_of(mesh, "/svc/svc", "requeue") == 1, timeout=5)
    mesh.register("svc", up)
    resp = await asyncio.wait_for(conn.read_response(), 5)
    await conn.close()
    assert resp.status == 200 and resp.body == body
    assert [r.body for r in up.received] == [body]


async def test_chunked_body_within_the_buffer_is_replayed_with_its_trailers(make_mesh, make_upstream):
    up = await make_upstream(fail_first(1))
    mesh = await make_mesh(service={"retries": {"backoff": NO_BACKOFF}})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(
        b"PUT /doc HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 7\r\n\r\n"
    )
    resp = await conn.read_response()
    await conn.close()
    assert resp.status == 200 and resp.body == b"hello world"
    assert [r.body for r in up.received] == [b"hello world", b"hello world"]
    assert ("X-Sum", "7") in up.received[1].trailers


async def test_expect_100_continue_is_sent_once_and_the_body_is_replayed(make_mesh, make_upstream):
    up = await make_upstream(fail_first(1))
    mesh = await make_mesh(service={"retries": {"backoff": NO_BACKOFF}})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"PUT /x HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    interim = await conn.read_response()
    assert interim.status == 100
    await conn.send(b"data")
    final = await conn.read_response()
    assert final.status == 200 and final.body == b"data"
    # the next response on the connection is the next request's: no stray second 100 Continue
    nxt = await conn.request("GET", "/after")
    await conn.close()
    assert nxt.status == 200
    assert [(r.method, r.body) for r in up.received] == [("PUT", b"data"), ("PUT", b"data"), ("GET", b"")]


async def test_expect_100_continue_after_a_refused_connect_is_answered_by_the_retry(make_mesh, make_upstream):
    # nothing was sent upstream, so the client has not been told to continue yet; the retry's
    # attempt does that, and the POST is safe to send because the first attempt never wrote it
    up = await make_upstream(fail_first(0))
    mesh = await make_mesh(service={"retries": {"backoff": {"kind": "constant", "ms": 300}}})
    mesh.register("svc", f"127.0.0.1 {refused_port()}")
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"POST /x HTTP/1.1\r\nHost: svc\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    await wait_until(lambda: retries_of(mesh, "/svc/svc", "requeue") == 1, timeout=5)
    mesh.register("svc", up)  # the replica comes up while meshd waits out the backoff
    interim = await asyncio.wait_for(conn.read_response(), 5)
    assert interim.status == 100
    await conn.send(b"data")
    final = await conn.read_response()
    await conn.close()
    assert final.status == 200 and final.body == b"data"
    assert [(r.method, r.body) for r in up.received] == [("POST", b"data")]


async def test_an_answer_before_the_whole_request_body_arrived_is_not_retried(make_mesh):
    async def early_503(n: int, writer: asyncio.StreamWriter) -> None:
        # answers on the head alone, while the client is still sending the body
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy")

    async with ScriptedServer(early_503, read_body=False) as server:
        mesh = await make_mesh(service={"retries": {"backoff": NO_BACKOFF}})
        mesh.register("svc", f"127.0.0.1 {server.port}")
        conn = await RawConnection.open(mesh.port)
        await conn.send(b"PUT /doc HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nhello")
        resp = await conn.read_response()
        # the rest of the body may already be on its way to the first upstream connection:
        # replaying it elsewhere now could mix the two attempts, so the 503 is final
        assert resp.status == 503 and resp.body == b"busy"
        await conn.send(b"world")
        assert await conn.is_closed_by_peer()  # the unread request cannot be followed by another
        await conn.close()
        assert len(server.requests) == 1
        assert retries_of(mesh, "/svc/svc", "not_replayable") == 1
        client = mesh.daemon.routers[0].clients[Path.read("/#/fs/svc")]
        await wait_until(lambda: client.pool_statistics().busy == 0, timeout=5, message="no connection stuck busy")


# -- a retried 5xx's body ------------------------------------------------------------------------


async def test_discarded_small_error_body_is_drained_and_its_connection_kept(make_mesh):
    first_conn_writer: list[asyncio.StreamWriter] = []
    second_arrived = asyncio.Event()

    async def split_503(n: int, writer: asyncio.StreamWriter) -> None:
        if n == 1:
            writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\n")
            first_conn_writer.append(writer)
            await second_arrived.wait()  # the body comes only once meshd has moved on to the retry
            writer.write(b"sorry")
        else:
            if n == 2:
                first_conn_writer[0].write(b"sorry")
                second_arrived.set()
            writer.write(FINE)

    async with ScriptedServer(split_503) as server:
        mesh = await make_mesh(service={"retries": {"backoff": NO_BACKOFF}})
        mesh.register("svc", f"127.0.0.1 {server.port}")
        conn = await RawConnection.open(mesh.port)
        resp = await conn.request("GET", "/")
        assert resp.status == 200 and resp.body == b"fine"
        client = mesh.daemon.routers[0].clients[Path.read("/#/fs/svc")]
        await wait_until(lambda: client.pool_statistics().idle == 2, timeout=5, message="both connections idle")
        for _ in range(4):
            assert (await conn.request("GET", "/")).status == 200
        await conn.close()
        assert client.pool_statistics().closed == 0
        assert server.connections == 2


async def test_discarded_error_body_of_unknown_length_aborts_its_connection(make_mesh, make_upstream):
    calls = [0]
    never = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b"partial error page"
        await never.wait()

    async def chunked_then_ok(req: Received) -> Reply:
        calls[0] += 1
        if calls[0] == 1:
            return Reply(503, [], stream=stalls())  # chunked: meshd cannot tell how much is left
        return Reply(200, [], b"ok")

    up = await make_upstream(chunked_then_ok)
    mesh = await make_mesh(service={"retries": {"backoff": NO_BACKOFF}})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/")
    await conn.close()
    assert resp.status == 200 and resp.body == b"ok"
    await wait_until(lambda: up.open_connections == 1, timeout=5, message="the stalled connection aborted")
    assert up.connections == 2


# -- classifiers and headers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "method", "retried", "success_class"),
    [
        ("retryableIdempotent5XX", "GET", True, "1.0"),
        ("retryableIdempotent5XX", "DELETE", True, "1.0"),
        ("retryableIdempotent5XX", "POST", False, "0.0"),
        ("retryableRead5XX", "GET", True, "1.0"),
        ("retryableRead5XX", "PUT", False, "0.0"),
        ("nonRetryable5XX", "GET", False, "0.0"),
        ("allSuccessful", "GET", False, "1.0"),
    ],
)
async def test_classifier_kinds_decide_what_is_retried(make_mesh, make_upstream, kind, method, retried, success_class):
    up = await make_upstream(fail_first(1, status=500))
    mesh = await make_mesh(
        service={"responseClassifier": {"kind": kind}, "addSuccessClassHeader": True, "retries": {"backoff": NO_BACKOFF}}
    )
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request(method, "/", body=b"x" if method in ("POST", "PUT") else b"")
    await conn.close()
    assert resp.status == (200 if retried else 500)
    assert up.requests == (2 if retried else 1)
    assert resp.header("l5d-success-class") == success_class


async def test_4xx_is_a_success_and_never_retried(make_mesh, make_upstream):
    up = await make_upstream(always(429))
    mesh = await make_mesh(service={"addSuccessClassHeader": True})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("GET", "/")
    await conn.close()
    assert resp.status == 429 and resp.header("l5d-success-class") == "1.0"
    assert up.requests == 1


@pytest.mark.parametrize("honor", [True, False])
async def test_l5d_retryable_hint_lets_a_post_be_retried_only_when_honoured(make_mesh, make_upstream, honor):
    calls = [0]

    async def hinted(req: Received) -> Reply:
        calls[0] += 1
        if calls[0] == 1:
            return Reply(503, [("l5d-retryable", "true")], b"not written downstream\n")
        return Reply(200, [], b"ok")

    up = await make_upstream(hinted)
    mesh = await make_mesh(
        service={"responseClassifier": {"kind": "retryableIdempotent5XX", "honorRetryableHeader": honor},
                 "retries": {"backoff": NO_BACKOFF}}
    )
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    resp = await conn.request("POST", "/", body=b"x")
    await conn.close()
    assert resp.status == (200 if honor else 503)
    assert up.requests == (2 if honor else 1)


# -- union (canary) branches --------------------------------------------------------------------------


async def test_a_retry_binds_again_and_can_take_the_other_union_branch(make_mesh, make_upstream):
    broken = await make_upstream(always(503), name="v2")
    stable = await make_upstream(name="v1")
    mesh = await make_mesh(
        dtab="/svc => /#/fs; /svc/accounts => 1 * /#/fs/accounts-v2 & 1 * /#/fs/accounts;",
        # each attempt draws a branch 50/50: with the default maxRetries (2), 1 request in 8 would
        # draw the broken branch three times and end on its 503
        service={"retries": {"backoff": NO_BACKOFF, "maxRetries": 30}},
    )
    mesh.register("accounts", stable)
    mesh.register("accounts-v2", broken)
    statuses = await run_clients(mesh.port, "accounts", 60, 3)
    assert statuses == {200: 60}
    assert broken.requests > 0  # the broken branch was chosen, and every such attempt was retried
    assert stable.requests == 60
    assert service_state(mesh, "/svc/accounts").retries.response == broken.requests


# -- cancellation -------------------------------------------------------------------------------------


def fail_then_hang(release: asyncio.Event) -> Handler:
    calls = [0]

    async def handler(req: Received) -> Reply:
        calls[0] += 1
        if calls[0] == 1:
            return Reply(503, [], b"")
        await release.wait()
        return Reply(200, [], b"late")

    return handler


async def test_client_disconnecting_mid_retry_cancels_the_attempt_in_flight(make_mesh, make_upstream):
    release = asyncio.Event()  # never set: the retry hangs until meshd gives up on it
    up = await make_upstream(fail_then_hang(release))
    mesh = await make_mesh(service={"retries": {"backoff": NO_BACKOFF}})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("GET", "/"))
    await wait_until(lambda: up.requests == 2, timeout=5, message="the retry reached the upstream")
    await reset(conn)
    # meshd aborts the retry's upstream connection instead of waiting for the answer
    await wait_until(lambda: up.open_connections == 0, timeout=5, message="the upstream connection closed")
    assert up.requests == 2
    assert not handler_tasks()
    client = mesh.daemon.routers[0].clients[Path.read("/#/fs/svc")]
    assert client.balancer.nodes()[0].pending == 0


async def test_client_closing_its_socket_mid_retry_cancels_the_attempt_in_flight(make_mesh, make_upstream):
    release = asyncio.Event()
    up = await make_upstream(fail_then_hang(release))
    mesh = await make_mesh(service={"retries": {"backoff": NO_BACKOFF}})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("GET", "/"))
    await wait_until(lambda: up.requests == 2, timeout=5, message="the retry reached the upstream")
    await conn.close()  # FIN, not RST
    try:
        await wait_until(lambda: up.open_connections == 0, timeout=1, message="the upstream connection closed")
    finally:
        if up.open_connections:
            release.set()  # let the stuck request finish, so that meshd's drain does not wait for it


def handler_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == CONNECTION_TASK]


async def test_client_disconnecting_during_backoff_sends_no_more_attempts(make_mesh, make_upstream):
    up = await make_upstream(always(503))
    mesh = await make_mesh(service={"retries": {"backoff": {"kind": "constant", "ms": 60_000}}})
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("GET", "/"))
    await wait_until(lambda: retries_of(mesh, "/svc/svc", "response") == 1, timeout=5,
                     message="the first retry was decided (meshd now waits out the backoff)")
    assert handler_tasks()
    await reset(conn)
    await wait_until(lambda: not handler_tasks(), timeout=5, message="the request's task was cancelled")
    assert up.requests == 1


# -- access log ----------------------------------------------------------------------------------------


async def test_access_log_shows_each_attempt_of_a_request(make_mesh, make_upstream, caplog):
    up = await make_upstream(fail_first(1))
    refused = refused_port()
    mesh = await make_mesh(
        accessLog=True,
        service={"retries": {"budget": {"minRetriesPerSec": 1, "ttlSecs": 3}, "backoff": NO_BACKOFF}},
    )
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    with caplog.at_level(logging.INFO, logger="meshd.access"):
        resp = await conn.request("GET", "/a%20b?x=1", [("l5d-reqid", "req-1")])
        assert resp.status == 200
        mesh.register("svc", f"127.0.0.1 {refused}")
        failed = await conn.request("POST", "/pay", body=b"x")
    await conn.close()
    assert failed.status == 502
    lines = [r.getMessage() for r in caplog.records if r.name == "meshd.access"]
    assert len(lines) == 2
    ep = f"127.0.0.1:{up.port}"
    assert lines[0].startswith('router=outgoing reqid=req-1 client=127.0.0.1 method=GET target="/a%20b?x=1" ')
    assert f'service=/svc/svc status=200 attempts=2 tries="{ep} 503 retry=response, {ep} 200" ' in lines[0]
    # refused at connect: requeued (safe for a POST) until the budget is spent: its floor of
    # 1/s x 3 s, less the GET's retry, plus 20 % of the two requests' deposits
    dead = f"127.0.0.1:{refused}"
    assert "method=POST target=/pay service=/svc/svc status=502 attempts=3 " in lines[1]
    assert f'tries="{dead} connect_failed retry=requeue x2, {dead} connect_failed" ' in lines[1]


async def test_access_log_is_not_in_the_chain_when_disabled(make_mesh, make_upstream, caplog):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    with caplog.at_level(logging.INFO, logger="meshd.access"):
        assert (await conn.request("GET", "/")).status == 200
    await conn.close()
    assert not [r for r in caplog.records if r.name == "meshd.access"]
    service = service_state(mesh, "/svc/svc").service
    # the service chain starts with the classify filter, not the access log's stage (a compiled
    # closure has no __qualname__; its type is named after it: `one__filtered_obj`)
    name = getattr(service, "__qualname__", type(service).__name__)
    assert "access" not in name.lower()
    assert "_filtered" in name
