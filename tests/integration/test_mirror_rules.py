"""Request mirroring rules under load with real upstreams: the share of matching requests copied
to the shadow is counted at the shadow (and by the metric), copies carry `l5d-mirror` and the same
body; a shadow that is down or hangs changes nothing for the callers (every request answered,
none waits for its copy), the copies in flight stay bounded, and skips are counted."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import time

from tests.integration.test_canary import drive, served, start_accounts
from tests.integration.test_fault_rules import metric
from tests.integration.test_routes_reload import admin_get
from tests.support.client import RawConnection, build_request
from tests.support.upstreams import Received, Reply
from tests.support.waiting import wait_until

SHADOW = """\
rules:
  - name: accounts-shadow
    prefix: /svc/accounts
    mirror: {dst: /#/fs/accounts-shadow, share: 0.25}
"""


async def shadow_handler(request: Received) -> Reply:
    return Reply(200, [], b"shadow")


def mirrored(text: str, result: str, rule: str = "accounts-shadow") -> float:
    return metric(text, "meshd_mirrored_requests_total", rule=rule, result=result) or 0.0


async def test_a_share_of_requests_is_copied_to_the_shadow_and_the_answers_are_dropped(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": SHADOW})
    v1, _v2 = await start_accounts(make_upstream, mesh)
    shadow = await make_upstream(shadow_handler)
    mesh.register("accounts-shadow", shadow)

    load, other = await asyncio.gather(
        drive(mesh.port, connections=8, per_connection=500),
        drive(mesh.port, connections=2, per_connection=250, host="books"),  # not under the prefix
    )

    assert load.failed == 0 and load.bodies == {b"v1": 4000}  # callers see only the real answers
    assert served(v1) == 4000
    assert other.statuses.keys() == {502}  # books is unknown, and its requests are never copied

    async def copies_done() -> bool:
        _, text = await admin_get(mesh.admin_port, "/metrics")
        in_flight: int = mesh.daemon.router("outgoing").mirroring.in_flight["accounts-shadow"]
        return mirrored(text, "success") == shadow.requests and in_flight == 0

    await wait_until(copies_done, timeout=5.0, message="every copy counted")
    # binomial(4000, 0.25): sd 27 requests (0.7%); +-4% is about 6 sd
    assert 0.21 <= shadow.requests / 4000 <= 0.29, f"the shadow got {shadow.requests / 4000:.1%}"
    assert {r.header("l5d-mirror") for r in shadow.received} == {"accounts-shadow"}
    assert {r.header("host") for r in shadow.received} == {"accounts"}
    assert all(r.header("l5d-mirror") is None for up in v1 for r in up.received)
    _, text = await admin_get(mesh.admin_port, "/metrics")
    assert mirrored(text, "error") == mirrored(text, "timeout") == 0
    _, body = await admin_get(mesh.admin_port, "/admin/routes")
    (shown,) = json.loads(body)
    assert shown["mirrorsActive"] == [{"rule": "accounts-shadow", "prefix": "/svc/accounts", "mirror": {
        "dst": "/#/fs/accounts-shadow", "share": 0.25, "maxInFlight": 100, "maxBodyBytes": 65536, "timeoutMs": 1000}}]


POST_SHADOW = """\
rules:
  - name: posts
    prefix: /svc/accounts
    match: {method: POST}
    mirror: {dst: /#/fs/accounts-shadow, share: 1, maxBodyBytes: 1024}
"""


async def test_bodies_up_to_the_limit_are_copied_whole_and_larger_ones_are_skipped(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": POST_SHADOW})
    v1, _v2 = await start_accounts(make_upstream, mesh, replicas=1)
    shadow = await make_upstream(shadow_handler)
    mesh.register("accounts-shadow", shadow)

    conn = await RawConnection.open(mesh.port)
    try:
        small = await conn.request("POST", "/transfer", [("content-length", "11")], b"amount=1000", host="accounts")
        chunked = await conn.request(
            "POST", "/transfer", [("transfer-encoding", "chunked")], b"5\r\nhello\r\n0\r\n\r\n", host="accounts"
        )
        large = await conn.request("POST", "/upload", [("content-length", "5000")], b"x" * 5000, host="accounts")
        get = await conn.request("GET", "/balance", host="accounts")
    finally:
        await conn.close()
    assert [r.status for r in (small, chunked, large, get)] == [200, 200, 200, 200]
    await wait_until(lambda: shadow.requests == 2, timeout=5.0, message="two copies")
    assert [(r.method, r.target, r.body) for r in shadow.received] == [
        ("POST", "/transfer", b"amount=1000"), ("POST", "/transfer", b"hello")
    ]
    assert [r.body for r in v1[0].received] == [b"amount=1000", b"hello", b"x" * 5000, b""]
    _, text = await admin_get(mesh.admin_port, "/metrics")
    assert metric(text, "meshd_mirror_skipped_total", rule="posts", reason="body_too_large") == 1
    assert mirrored(text, "success", rule="posts") == 2

    # a body that arrives after routing began: the copy waits for it (in flight meanwhile)
    conn = await RawConnection.open(mesh.port)
    try:
        await conn.send(build_request("POST", "/late", [("content-length", "4")], b"", host="accounts"))
        router = mesh.daemon.router("outgoing")
        await wait_until(lambda: router.mirroring.in_flight.get("posts") == 1, timeout=5.0, message="the copy waits")
        assert shadow.requests == 2
        await conn.send(b"late")
        late = await conn.read_response()
    finally:
        await conn.close()
    assert late.status == 200
    await wait_until(lambda: shadow.requests == 3, timeout=5.0, message="the late copy")
    assert (shadow.received[2].target, shadow.received[2].body) == ("/late", b"late")

    # a caller that leaves before its body ends: the waiting copy is skipped, not sent half
    conn = await RawConnection.open(mesh.port)
    await conn.send(build_request("POST", "/gone", [("content-length", "10")], b"", host="accounts") + b"ab")
    await wait_until(lambda: router.mirroring.in_flight.get("posts") == 1, timeout=5.0, message="the copy waits")
    await conn.close()
    await wait_until(lambda: router.mirroring.in_flight.get("posts") == 0, timeout=5.0, message="the copy gives up")
    assert router.mirroring.skipped[("posts", "body_incomplete")] == 1 and shadow.requests == 3


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_shadow_that_is_down_or_hangs_changes_nothing_for_the_callers(make_mesh, make_upstream):
    routes = """\
rules:
  - name: to-down
    prefix: /svc/accounts
    mirror: {dst: /#/fs/shadow-down, share: 1}
  - name: to-hung
    prefix: /svc/accounts
    mirror: {dst: /#/fs/shadow-hung, share: 1, maxInFlight: 16, timeoutMs: 60000}
"""
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": "rules: []\n"})
    v1, _v2 = await start_accounts(make_upstream, mesh)
    never = asyncio.Event()

    async def hang(request: Received) -> Reply:
        await never.wait()
        return Reply(200)

    hung = await make_upstream(hang)
    mesh.register("shadow-hung", hung)
    mesh.register("shadow-down", f"127.0.0.1 {closed_port()}")
    router = mesh.daemon.router("outgoing")

    async def timed(latencies: list[float]) -> None:
        conn = await RawConnection.open(mesh.port)
        try:
            for _ in range(200):
                started = time.perf_counter()
                response = await conn.request("GET", "/balance", host="accounts")
                latencies.append(time.perf_counter() - started)
                assert response.status == 200 and response.body == b"v1"
                assert router.mirroring.in_flight.get("to-hung", 0) <= 16
        finally:
            await conn.close()

    control: list[float] = []  # the same load without the mirror rules
    await asyncio.gather(*(timed(control) for _ in range(8)))
    (mesh.root / "routes.yaml").write_text(routes)
    await wait_until(lambda: len(router.match_rules.mirrors) == 2, timeout=2.0, message="the mirror rules")
    latencies: list[float] = []
    await asyncio.gather(*(timed(latencies) for _ in range(8)))

    assert served(v1) == 3200 and len(latencies) == 1600
    # a copy to the hung shadow would hold its caller for 60 s (its timeoutMs); none waited for it
    assert max(latencies) < 5.0, f"slowest request {max(latencies):.2f} s"
    # and the callers' typical latency stays of the same order (meshd, the upstreams and this
    # client share one event loop here, so the copies' own work shows a little)
    median, control_median = statistics.median(latencies), statistics.median(control)
    assert median <= 3 * control_median + 0.005, f"median {median * 1e3:.2f} ms, without copies {control_median * 1e3:.2f} ms"
    assert hung.requests == 16  # the 16 copies allowed in flight reached it, and hang there
    _, text = await admin_get(mesh.admin_port, "/metrics")
    assert metric(text, "meshd_mirror_skipped_total", rule="to-hung", reason="in_flight_limit") == 1600 - 16
    await wait_until(lambda: router.mirroring.in_flight.get("to-down", 0) == 0, timeout=5.0, message="copies end")
    _, text = await admin_get(mesh.admin_port, "/metrics")
    assert mirrored(text, "error", rule="to-down") == 1600  # connection refused: counted, never retried
    assert mirrored(text, "success", rule="to-down") == 0
    never.set()


async def test_a_request_a_fault_aborts_is_not_copied_and_a_delayed_one_is_copied_at_once(make_mesh, make_upstream):
    routes = """\
rules:
  - name: abort-some
    prefix: /svc/accounts
    match: {headers: {x-fault: abort}}
    fault: {share: 1, abort: 503}
  - name: delay-some
    prefix: /svc/accounts
    match: {headers: {x-fault: delay}}
    fault: {share: 1, delayMs: 60000}
  - name: copy-all
    prefix: /svc/accounts
    mirror: {dst: /#/fs/accounts-shadow, share: 1}
"""
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": routes})
    v1, _v2 = await start_accounts(make_upstream, mesh, replicas=1)
    shadow = await make_upstream(shadow_handler)
    mesh.register("accounts-shadow", shadow)

    conn = await RawConnection.open(mesh.port)
    try:
        aborted = await conn.request("GET", "/a", [("x-fault", "abort")], host="accounts")
    finally:
        await conn.close()
    assert aborted.status == 503
    delayed = await RawConnection.open(mesh.port)
    try:
        await delayed.send(build_request("GET", "/d", [("x-fault", "delay")], host="accounts"))
        # the copy arrives while the request itself still waits out its 60 s delay
        await wait_until(lambda: shadow.requests == 1, timeout=5.0, message="the delayed request's copy")
    finally:
        await delayed.close()
    assert [r.target for r in shadow.received] == ["/d"] and served(v1) == 0
