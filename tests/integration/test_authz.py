"""Authorization on an incoming router: which identities (from client certificates) may call
which logical names; a denial is a 403 naming the rule, counted, and never reaches an upstream.
The policy comes from the config, or from the routes file, which replaces it when reloaded."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Callable

import pytest

from meshd.admin.metrics import render_now
from tests.conftest import Mesh, base_config
from tests.support.client import RawConnection
from tests.support.tls import Pair, Pki, server_tls, spiffe
from tests.support.upstreams import Upstream
from tests.support.waiting import wait_until

MakeMesh = Callable[..., Awaitable[Mesh]]
MakeUpstream = Callable[..., Awaitable[Upstream]]

POLICY = {
    "rules": [
        {"name": "ledger-callers", "prefix": "/svc/ledger", "allow": [spiffe("payments"), spiffe("accounts")]},
        {"name": "bank", "prefix": "/svc/*", "allow": ["spiffe://bank.local/ns/bank/*"]},
    ]
}


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(tmp_path / "pki")


async def call(mesh: Mesh, pki: Pki, pair: Pair | None, host: str) -> tuple[int, str | None]:
    ctx = pki.client_context(pair)
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.port, ssl=ctx, server_hostname="localhost")
    conn = RawConnection(reader, writer)
    try:
        response = await conn.request("GET", "/", host=host)
        return response.status, response.header("l5d-err")
    finally:
        await conn.close()


async def incoming(make_mesh: MakeMesh, pki: Pki, *, require: bool = True, **router: object) -> Mesh:
    pair = pki.issue("meshd")
    tls = server_tls(pki, pair, require_client_cert=require)
    if not require:
        tls["caPath"] = str(pki.ca_path)  # client certificates asked for, not required
    files = router.pop("files", None)
    return await make_mesh(base_config(servers=[{"ip": "127.0.0.1", "port": 0, "tls": tls}], **router), files=files)


async def test_a_policy_allows_one_caller_and_denies_another_before_any_upstream(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki
) -> None:
    ledger, accounts = await make_upstream(name="ledger"), await make_upstream(name="accounts")
    mesh = await incoming(make_mesh, pki, authorization=POLICY)
    mesh.register("ledger", ledger)
    mesh.register("accounts", accounts)
    payments = pki.issue("payments", uris=(spiffe("payments"),))
    outbox = pki.issue("outbox", uris=(spiffe("outbox"),))
    web = pki.issue("web", uris=(spiffe("frontend", "web"),))

    assert await call(mesh, pki, payments, "ledger") == (200, None)
    status, err = await call(mesh, pki, outbox, "ledger")
    assert status == 403
    assert err == f"{spiffe('outbox')} may not call /svc/ledger: denied by authorization rule 'ledger-callers' (config)"
    assert ledger.requests == 1 and ledger.received[0].header("l5d-client-id") == spiffe("payments")

    assert await call(mesh, pki, outbox, "accounts") == (200, None)
    status, err = await call(mesh, pki, web, "accounts")
    assert status == 403 and err is not None and "'bank'" in err
    assert accounts.requests == 1

    text = render_now(mesh.daemon).decode()  # type: ignore[arg-type]
    assert 'meshd_authz_denied_total{router="outgoing",rule="ledger-callers"} 1.0' in text
    assert 'meshd_authz_denied_total{router="outgoing",rule="bank"} 1.0' in text
    assert 'meshd_requests_total{router="outgoing",service="/svc/ledger",status_class="4xx"} 1.0' in text


async def test_names_no_rule_covers_are_denied_by_default_and_callers_without_a_certificate_match_nothing(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki
) -> None:
    up = await make_upstream()
    mesh = await incoming(
        make_mesh, pki, require=False, identifier={"kind": "header", "header": "host", "prefix": "/app"}, authorization=POLICY
    )
    mesh.register("other", up)
    mesh.register("ledger", up)
    payments = pki.issue("payments", uris=(spiffe("payments"),))
    status, err = await call(mesh, pki, payments, "other")
    assert status == 403 and err is not None and "denied by authorization rule 'default'" in err
    assert up.requests == 0


async def test_without_a_policy_every_caller_that_completes_the_handshake_is_allowed(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki
) -> None:
    up = await make_upstream()
    mesh = await incoming(make_mesh, pki)
    mesh.register("ledger", up)
    assert await call(mesh, pki, pki.issue("web", uris=(spiffe("frontend", "web"),)), "ledger") == (200, None)


async def test_a_plaintext_router_has_neither_filter_even_with_a_routes_file(make_mesh: MakeMesh) -> None:
    routes = "dtab: |\n  /svc => /#/fs;\n"
    mesh = await make_mesh(base_config(routes="routes.yaml", dtab=""), files={"routes.yaml": routes})
    router = mesh.daemon.routers[0]
    assert router.authorization is None
    assert router.stack.roles() == ["hygiene", "identify"]


async def test_the_routes_files_policy_replaces_the_configs_on_reload(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki
) -> None:
    up = await make_upstream()
    routes = "dtab: |\n  /svc => /#/fs;\n"
    mesh = await incoming(make_mesh, pki, authorization=POLICY, routes="routes.yaml", dtab="", files={"routes.yaml": routes})
    mesh.register("ledger", up)
    outbox = pki.issue("outbox", uris=(spiffe("outbox"),))
    assert (await call(mesh, pki, outbox, "ledger"))[0] == 403  # the config's policy (the file has none)

    router = mesh.daemon.routers[0]
    (mesh.root / "routes.yaml").write_text(
        routes + f"authorization:\n  rules:\n    - name: outbox-too\n      prefix: /svc/ledger\n      allow: [{spiffe('outbox')}]\n"
    )
    await wait_until(
        lambda: router.authorization is not None and router.authorization.policy is not None
        and router.authorization.policy.rules[0].name == "outbox-too",
        message="the routes file's policy",
    )
    assert await call(mesh, pki, outbox, "ledger") == (200, None)
    payments = pki.issue("payments", uris=(spiffe("payments"),))
    status, err = await call(mesh, pki, payments, "ledger")
    assert status == 403 and err is not None and "'outbox-too'" in err and "routes.yaml" in err

    (mesh.root / "routes.yaml").write_text(routes)  # no section: the config's policy again
    await wait_until(
        lambda: router.authorization is not None and router.authorization.policy is not None
        and router.authorization.policy.rules[0].name == "ledger-callers",
        message="the config's policy back",
    )
    assert await call(mesh, pki, payments, "ledger") == (200, None)


