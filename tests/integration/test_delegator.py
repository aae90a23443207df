"""`/admin/delegator`: every step of a binding, as JSON, from the running proxy's current rules."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import aiohttp

from tests.integration.test_canary import CANARY_50_50, CANARY_95_5, start_accounts
from tests.support.waiting import wait_until


async def delegator(mesh, **query: str) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{mesh.admin_port}/admin/delegator?{urlencode(query)}"
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


def endpoints(outcome: dict[str, Any]) -> list[str]:
    return [e["address"] for e in outcome["addr"]["endpoints"]]


async def test_delegator_shows_every_step_of_the_canary_binding(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": CANARY_95_5})
    v1, v2 = await start_accounts(make_upstream, mesh)

    status, body = await delegator(mesh, path="/svc/accounts")

    assert status == 200
    assert body["router"] == "outgoing"
    assert body["path"] == "/svc/accounts"
    routes = mesh.root / "routes.yaml"
    assert body["dentries"] == [
        {"index": 0, "dentry": "/svc=>/#/fs", "from": "router outgoing dtab"},
        {
            "index": 1,
            "dentry": "/svc/accounts=>0.95*/#/fs/accounts & 0.05*/#/fs/accounts-v2",
            "from": f"{routes}: rule accounts-canary (line 2)",
        },
    ]
    # step 1: both dentries match; the later one (the rule) is tried first, the base is its fallback
    root = body["trace"]["root"]
    assert [d["index"] for d in root["dentries"]] == [1, 0]
    assert [d["rewrite"] for d in root["dentries"]] == ["0.95*/#/fs/accounts & 0.05*/#/fs/accounts-v2", "/#/fs/accounts"]
    (alt,) = root["children"]
    assert alt["kind"] == "alt" and alt["skipped"] == ["/#/fs/accounts"]
    # step 2: the union's branches, each resolved by the fs namer
    (union,) = alt["children"]
    assert union["kind"] == "union" and union["weights"] == [0.95, 0.05]
    asked = [(b["namers"][0]["path"], b["namers"][0]["answer"]) for b in union["children"]]
    assert asked == [("/accounts", "/#/fs/accounts"), ("/accounts-v2", "/#/fs/accounts-v2")]
    assert body["trace"]["result"] == "0.95*/#/fs/accounts & 0.05*/#/fs/accounts-v2"
    assert "namer /#/fs asked for /accounts-v2  ->  /#/fs/accounts-v2" in body["explanation"]
    # step 3: what requests get, with each bound name's replicas
    first, second = body["outcomes"]
    assert (first["probability"], first["client"]) == (0.95, "/#/fs/accounts")
    assert (second["probability"], second["client"]) == (0.05, "/#/fs/accounts-v2")
    assert endpoints(first) == sorted(f"127.0.0.1:{u.port}" for u in v1)
    assert endpoints(second) == sorted(f"127.0.0.1:{u.port}" for u in v2)


async def test_delegator_with_a_local_dtab_shows_the_override_winning(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": CANARY_95_5})
    await start_accounts(make_upstream, mesh)

    status, body = await delegator(mesh, path="/svc/accounts", dtab="/svc/accounts => /#/fs/accounts-v2")

    assert status == 200
    assert body["dentries"][2] == {"index": 2, "dentry": "/svc/accounts=>/#/fs/accounts-v2", "from": "local dtab"}
    assert [d["index"] for d in body["trace"]["root"]["dentries"]] == [2, 1, 0]
    assert [(o["probability"], o["client"]) for o in body["outcomes"]] == [(1.0, "/#/fs/accounts-v2")]


async def test_delegator_follows_a_reload(make_mesh, make_upstream):
    mesh = await make_mesh(routes="routes.yaml", files={"routes.yaml": CANARY_95_5})
    await start_accounts(make_upstream, mesh)
    watcher = mesh.daemon.routes_watchers["outgoing"]

    (mesh.root / "routes.yaml").write_text(CANARY_50_50)
    await wait_until(lambda: watcher.successes == 2, timeout=2, message="the reload")

    _, body = await delegator(mesh, path="/svc/accounts")
    assert [o["probability"] for o in body["outcomes"]] == [0.5, 0.5]


async def test_malformed_local_dtab_is_a_400_with_a_one_line_error(make_mesh):
    mesh = await make_mesh()

    status, body = await delegator(mesh, path="/svc/accounts", dtab="/svc/accounts /x")

    assert status == 400
    assert body["error"] == "bad dtab: line 1, column 15: expected '=>', found '/'"
    assert body["errorContext"].splitlines()[1:] == ["1 | /svc/accounts /x", "  |               ^"]


async def test_unknown_name_explains_why_it_is_negative(make_mesh):
    mesh = await make_mesh()

    status, body = await delegator(mesh, path="/svc/nope")

    assert status == 200
    assert body["outcomes"] == [{"probability": 1.0, "result": "neg"}]
    assert body["trace"]["root"]["children"][0]["namers"] == [{"prefix": "/#/fs", "path": "/nope", "answer": "~"}]
    assert "(no namer knows this name)" in body["explanation"]


async def test_fixedinet_destination_shows_its_address(make_mesh):
    mesh = await make_mesh(dtab="/svc => /#/fs; /svc/pinned => /$/fixedinet/127.0.0.1/8080;")

    _, body = await delegator(mesh, path="/svc/pinned")

    (outcome,) = body["outcomes"]
    assert outcome["client"] == "/$/fixedinet/127.0.0.1/8080"
    assert outcome["addr"] == {"state": "bound", "endpoints": [{"address": "127.0.0.1:8080", "weight": 1.0, "node": None}]}


async def test_a_dtab_loop_is_explained_not_hidden(make_mesh):
    mesh = await make_mesh()

    status, body = await delegator(mesh, path="/svc/a", dtab="/svc/a => /b; /b => /svc/a")

    assert status == 200
    assert body["error"].startswith("Max recursion level: 100 reached in Namer lookup")
    assert body["trace"]["root"]["dentries"][0] == {"index": 1, "dentry": "/svc/a=>/b", "rewrite": "/b"}
    assert body["explanation"].splitlines()[-1].startswith("result: error: Max recursion level")


async def test_bad_queries_are_refused(make_mesh):
    mesh = await make_mesh()

    assert (await delegator(mesh))[0] == 400
    status, body = await delegator(mesh, path="/svc/a", router="nope")
    assert (status, body) == (404, {"error": "no router 'nope'"})
    status, body = await delegator(mesh, path="svc/a")
    assert status == 400 and body["error"].startswith("bad path:")
