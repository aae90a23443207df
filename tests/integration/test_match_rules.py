"""Routing-file rules with `match:` under load, with real upstreams: requests that carry the
header (or method, or path) go to the rule's destination, the others follow the dtab, counted
at the upstreams; a reload removes the rule; nothing else changes."""

from __future__ import annotations

import asyncio
import logging

from tests.integration.test_canary import drive, served, start_accounts
from tests.integration.test_routes_reload import version_served
from tests.support.client import RawConnection
from tests.support.waiting import wait_until

STAGING = """\
rules:
  - name: accounts-for-user-42
    description: user 42 tries accounts v2
    prefix: /svc/accounts
    match:
      headers: {x-canary-user: 42}
    dst: /#/fs/accounts-v2
"""


async def test_the_header_sends_exactly_its_requests_to_v2_under_load(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": STAGING})
    v1, v2 = await start_accounts(make_upstream, mesh)

    marked, plain, other_user = await asyncio.gather(
        drive(mesh.port, connections=8, per_connection=250, headers=[("x-canary-user", "42")]),
        drive(mesh.port, connections=8, per_connection=250),
        drive(mesh.port, connections=4, per_connection=250, headers=[("X-Canary-User", "420")]),
    )

    for load in (marked, plain, other_user):
        assert load.failed == 0, (load.statuses, load.errors[:3])
    assert marked.bodies == {b"v2": 2000}
    assert plain.bodies == {b"v1": 2000} and other_user.bodies == {b"v1": 1000}
    assert served(v2) == 2000 and served(v1) == 3000  # counted at the upstreams
    # the rule is shown with its match, and is not part of the dtab
    watcher = mesh.daemon.routes_watchers["outgoing"]
    assert watcher.current is not None
    assert watcher.current.to_json()["rules"][0]["match"] == {"headers": {"x-canary-user": {"exact": "42"}}}
    assert mesh.daemon.router("outgoing").dtab.get().show() == "/svc=>/#/fs"


async def test_method_and_path_prefix_and_a_reload_that_removes_the_rule(make_mesh, make_upstream):
    routes = STAGING.replace("      headers: {x-canary-user: 42}\n", "      method: POST\n      pathPrefix: /balance\n")
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": routes})
    await start_accounts(make_upstream, mesh, replicas=1)

    async def served_by(method: str, target: str) -> bytes:
        conn = await RawConnection.open(mesh.port)
        try:
            response = await conn.request(method, target, [("content-length", "0")] if method == "POST" else [],
                                          host="accounts")
        finally:
            await conn.close()
        assert response.status == 200
        return response.body

    assert await served_by("POST", "/balance") == b"v2"
    assert await served_by("POST", "/balance/7?x=1") == b"v2"
    assert await served_by("POST", "/balances") == b"v1"  # prefixes match whole path segments
    assert await served_by("GET", "/balance") == b"v1"
    assert await served_by("POST", "/other") == b"v1"

    (mesh.root / "routes.yaml").write_text("rules: []\n")
    await wait_until(lambda: mesh.daemon.router("outgoing").match_rules.rules == (), timeout=1.0,
                     message="the reload")
    assert await served_by("POST", "/balance") == b"v1"
    assert await version_served(mesh.port) == "v1"


REGEX = STAGING.replace("headers: {x-canary-user: 42}", "headers: {x-canary-user: {regex: '4[0-9]'}}")


async def test_a_regex_rule_under_load_and_a_refused_regex_keeps_the_last_good_rules(make_mesh, make_upstream, caplog):
    caplog.set_level(logging.INFO, logger="meshd.reload")
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": REGEX})
    v1, v2 = await start_accounts(make_upstream, mesh)

    marked, plain, near = await asyncio.gather(
        drive(mesh.port, connections=4, per_connection=250, headers=[("x-canary-user", "42")]),
        drive(mesh.port, connections=4, per_connection=250),
        drive(mesh.port, connections=4, per_connection=250, headers=[("x-canary-user", "420")]),  # full match only
    )
    for load in (marked, plain, near):
        assert load.failed == 0, (load.statuses, load.errors[:3])
    assert marked.bodies == {b"v2": 1000} and plain.bodies == {b"v1": 1000} and near.bodies == {b"v1": 1000}
    assert served(v2) == 1000 and served(v1) == 2000

    watcher = mesh.daemon.routes_watchers["outgoing"]
    routes = mesh.root / "routes.yaml"
    routes.write_text(REGEX.replace("'4[0-9]'", "'(4)\\1'"))  # a backreference: RE2 refuses it
    await wait_until(lambda: watcher.errors == 1, timeout=1.0, message="the refusal")
    refusals = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusals) == 1
    assert f"{routes}: rules[0].match.headers.x-canary-user.regex: line 6: RE2 cannot use this pattern" in refusals[0]
    again = await drive(mesh.port, connections=2, per_connection=50, headers=[("x-canary-user", "41")])
    assert again.failed == 0 and again.bodies == {b"v2": 100}  # the last good rule keeps serving
