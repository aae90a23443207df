"""Fault injection rules (game days) under load with real upstreams: the share of matching
requests is aborted with the rule's status (counted by clients, by the metric, and missing at the
upstreams), the others pass; a delay rule delays; the rules are loudly visible while on."""

from __future__ import annotations

import asyncio
import json
import logging
import time

from tests.integration.test_canary import drive, served, start_accounts
from tests.integration.test_routes_reload import admin_get
from tests.support.client import RawConnection
from tests.support.waiting import wait_until

GAME_DAY = """\
rules:
  - name: accounts-game-day
    prefix: /svc/accounts
    match:
      headers: {x-game-day: "on"}
    fault: {share: 0.25, abort: 503}
"""


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_abort_a_share_of_matching_requests_under_load(make_mesh, make_upstream, caplog):
    caplog.set_level(logging.WARNING, logger="meshd.router")
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": GAME_DAY})
    v1, _v2 = await start_accounts(make_upstream, mesh)

    game, normal = await asyncio.gather(
        drive(mesh.port, connections=8, per_connection=500, headers=[("x-game-day", "on")]),
        drive(mesh.port, connections=4, per_connection=250),
    )

    assert normal.statuses == {200: 1000}  # requests the rule does not match are never touched
    aborted = game.statuses[503]
    assert game.statuses[200] + aborted == 4000 and not game.errors
    assert 0.20 <= aborted / 4000 <= 0.30, f"aborted {aborted / 4000:.1%} of matching requests"
    assert served(v1) == 1000 + game.statuses[200]  # aborted requests never reached an upstream
    _, metrics = await admin_get(mesh.admin_port, "/metrics")
    assert metric(metrics, "meshd_faults_injected_total", rule="accounts-game-day", kind="abort") == aborted
    assert metric(metrics, "meshd_fault_rules_active", router="outgoing") == 1
    _, body = await admin_get(mesh.admin_port, "/admin/routes")
    (shown,) = json.loads(body)
    assert shown["faultsActive"] == [{"rule": "accounts-game-day", "prefix": "/svc/accounts",
                                      "fault": {"share": 0.25, "abort": 503}}]
    warnings = [r.getMessage() for r in caplog.records if "FAULT INJECTION ON" in r.getMessage()]
    assert warnings == ['router outgoing: FAULT INJECTION ON: rule accounts-game-day: abort 503 for 25% of '
                        'matching requests under /svc/accounts when x-game-day: on']

    conn = await RawConnection.open(mesh.port)
    try:
        for _ in range(200):  # one aborted answer, to read its l5d-err
            response = await conn.request("GET", "/balance", [("x-game-day", "on")], host="accounts")
            if response.status == 503:
                break
    finally:
        await conn.close()
    assert response.status == 503
    assert response.header("l5d-err") == "fault injected by routing rule accounts-game-day: abort 503 for 25% of /svc/accounts"

    (mesh.root / "routes.yaml").write_text("rules: []\n")  # off again
    await wait_until(lambda: not mesh.daemon.router("outgoing").match_rules.active, timeout=1.0, message="the reload")
    after = await drive(mesh.port, connections=4, per_connection=100, headers=[("x-game-day", "on")])
    assert after.statuses == {200: 400}
    _, metrics = await admin_get(mesh.admin_port, "/metrics")
    assert metric(metrics, "meshd_fault_rules_active", router="outgoing") == 0


async def test_delay_rule_delays_every_matching_request(make_mesh, make_upstream):
    routes = GAME_DAY.replace("fault: {share: 0.25, abort: 503}", "fault: {share: 1, delayMs: 150}")
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": routes})
    await start_accounts(make_upstream, mesh, replicas=1)

    async def timed(headers: list[tuple[str, str]]) -> float:
        conn = await RawConnection.open(mesh.port)
        try:
            started = time.monotonic()
            response = await conn.request("GET", "/balance", headers, host="accounts")
            assert response.status == 200 and response.body == b"v1"
            return time.monotonic() - started
        finally:
            await conn.close()

    assert await timed([("x-game-day", "on")]) >= 0.150
    await timed([])  # not matched: not delayed (the metric below counts one delay only)
    _, metrics = await admin_get(mesh.admin_port, "/metrics")
    assert metric(metrics, "meshd_faults_injected_total", rule="accounts-game-day", kind="delay") == 1
