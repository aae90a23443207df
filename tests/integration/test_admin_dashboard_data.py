"""What the dashboard reads, from a meshd in-process with real upstreams and traffic:
`/admin/requests` (the ring of recent requests), `/admin/replicas` (per-replica latency and
success over the last minutes) and `/admin/dtab/playground` (a path through a typed dtab, a bad
dtab refused with the parser's line and column)."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

import pytest

from routing.parser import DtabSyntaxError, parse_dtab
from tests.integration.test_metrics import http_get
from tests.support.client import RawConnection
from tests.support.upstreams import Received, Reply


async def failing(req: Received) -> Reply:
    return Reply(500, [], b"broken\n")


async def admin_json(mesh, target: str) -> tuple[int, Any]:
    resp = await http_get(mesh.admin_port, target)
    return resp.status, json.loads(resp.body)


async def test_recent_requests_newest_first_bounded_with_endpoint_status_latency_attempts(make_mesh, make_upstream):
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("accounts", up)
    conn = await RawConnection.open(mesh.port)
    try:
        for i in range(140):
            assert (await conn.request("GET", f"/{i}", host="accounts")).status == 200
        assert (await conn.request("GET", "/", host="nobody")).status >= 400
    finally:
        await conn.close()
    status, body = await admin_json(mesh, "/admin/requests")
    assert status == 200
    (router,) = body
    assert router["router"] == "outgoing" and router["recorded"] == 141
    rows = router["requests"]
    assert len(rows) == 128  # the ring's size: the oldest 13 were overwritten
    newest, previous = rows[0], rows[1]
    assert newest["service"] == "/svc/nobody" and newest["status"] >= 400 and newest["endpoint"] is None
    assert previous["service"] == "/svc/accounts" and previous["status"] == 200
    assert previous["endpoint"] == f"127.0.0.1:{up.port}" and previous["attempts"] == 1
    assert 0 < previous["latencyMs"] < 1000
    assert previous["reqid"] and previous["traceId"] is None  # not traced
    times = [row["time"] for row in rows]
    assert times == sorted(times, reverse=True) and times[0].endswith("Z")


async def test_replicas_show_each_endpoints_attempts_success_and_latency(make_mesh, make_upstream):
    good, bad = await make_upstream(), await make_upstream(failing)
    mesh = await make_mesh()
    mesh.register("accounts", good, bad)
    conn = await RawConnection.open(mesh.port)
    try:
        for _ in range(30):
            await conn.request("POST", "/", host="accounts", body=b"x")  # not retried
    finally:
        await conn.close()
    status, body = await admin_json(mesh, "/admin/replicas")
    assert status == 200 and body["intervalSeconds"] == 10.0 and body["window"] == 30
    by_endpoint = {e["endpoint"]: e for e in body["endpoints"] if e["client"] == "/#/fs/accounts"}
    g, b = by_endpoint[f"127.0.0.1:{good.port}"], by_endpoint[f"127.0.0.1:{bad.port}"]
    # the interval under way, up to now (the first closed one was taken at start, before traffic)
    assert sum(p["requests"] for p in g["points"]) == good.requests
    assert sum(p["requests"] for p in b["points"]) == bad.requests
    assert g["points"][-1]["partial"] and g["points"][-1]["success"] == 1.0
    assert b["points"][-1]["success"] == 0.0
    assert 0 < g["points"][-1]["p50"] <= g["points"][-1]["p99"] < 1.0


async def test_playground_explains_a_path_through_a_typed_dtab(make_mesh, make_upstream):
    acc, led = await make_upstream(), await make_upstream()
    mesh = await make_mesh()
    mesh.register("accounts", acc)
    mesh.register("ledger", led)
    # nothing typed yet: the router's dtab, to start from
    status, body = await admin_json(mesh, "/admin/dtab/playground")
    assert status == 200 and body["dtab"] == "/svc=>/#/fs" and body["routers"] == ["outgoing"]
    # the router's own dtab
    status, body = await admin_json(mesh, "/admin/dtab/playground?path=/svc/accounts")
    assert status == 200
    assert [o["client"] for o in body["outcomes"]] == ["/#/fs/accounts"]
    # a typed dtab replaces it: accounts now goes to ledger's replicas, 30% of the time
    dtab = "/svc => /#/fs;\n/svc/accounts => 7 * /#/fs/accounts & 3 * /#/fs/ledger;"
    query = urllib.parse.urlencode({"path": "/svc/accounts", "dtab": dtab})
    status, body = await admin_json(mesh, f"/admin/dtab/playground?{query}")
    assert status == 200, body
    outcomes = {o["client"]: o for o in body["outcomes"]}
    assert outcomes["/#/fs/ledger"]["probability"] == pytest.approx(0.3)
    addr = outcomes["/#/fs/ledger"]["addr"]
    assert addr["state"] == "bound" and [e["address"] for e in addr["endpoints"]] == [f"127.0.0.1:{led.port}"]
    assert {d["from"] for d in body["dentries"]} == {"playground"}
    assert body["trace"]["root"]["children"]  # the delegation tree
    # nothing was changed in meshd: a request still goes to accounts
    assert (await http_get(mesh.port, "/", host="accounts")).status == 200
    assert acc.requests == 1 and led.requests == 0


@pytest.mark.parametrize(
    "dtab",
    [
        "/svc => /#/fs;\n/svc/accounts => ;",
        "/svc => /#/fs;\n\n  /svc/x =>> /#/fs/y;",
        "/svc => /#/fs",  # fine
        "svc => /#/fs;",
    ],
)
async def test_playground_refuses_a_bad_dtab_with_the_parsers_line_and_column(make_mesh, dtab):
    mesh = await make_mesh()
    query = urllib.parse.urlencode({"path": "/svc/accounts", "dtab": dtab})
    status, body = await admin_json(mesh, f"/admin/dtab/playground?{query}")
    try:
        parse_dtab(dtab)
    except DtabSyntaxError as exc:
        assert status == 400
        assert (body["line"], body["column"], body["reason"]) == (exc.line, exc.column, exc.reason)
        assert body["error"] == f"bad dtab: line {exc.line}, column {exc.column}: {exc.reason}"
        assert "^" in body["errorContext"]
    else:
        assert status == 200 and "outcomes" in body
