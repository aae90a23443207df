"""Per-request overrides: `l5d-dtab` from trusted sources, `l5d-ctx-dtab` downstream, and refusals.

The topology: `web` is an upstream that, for each request, calls `accounts` back through meshd and
copies the `l5d-ctx-*` headers it received onto that call (what an instrumented service does).
`accounts` (v1) and `accounts-v2` are plain upstreams answering their version.

Untrusted sources are tested for real, with the client address taken from the socket: meshd's
listener is on 127.0.0.1 and the router trusts only `127.0.0.1/32`; the "remote" client connects
from 127.0.0.2 (still loopback, so no traffic leaves the machine, but a different source address
that the trust policy must reject). A second mesh with `trustedSources: []` shows that an empty
list makes every source untrusted, 127.0.0.1 included.
"""

from __future__ import annotations

import asyncio

import pytest

from meshd.testing.client import RawConnection, RawResponse
from meshd.testing.upstreams import Received, Reply, Upstream
from tests.integration.test_canary import drive, start_accounts

OVERRIDE = "/svc/accounts => /#/fs/accounts-v2"
REMOTE_IP = "127.0.0.2"


async def call(port: int, host: str, headers: list[tuple[str, str]] | None = None, *, source: str = "127.0.0.1") -> RawResponse:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    conn = RawConnection(reader, writer)
    try:
        return await conn.request("GET", "/balance", headers, host=host)
    finally:
        await conn.close()


async def start_web(make_upstream, mesh) -> Upstream:
    """`web`: calls accounts through meshd, propagating l5d-ctx-* headers; answers with its reply."""

    async def web(request: Received) -> Reply:
        ctx = [(n, v) for n, v in request.headers if n.lower().startswith("l5d-ctx-")]
        downstream = await call(mesh.port, "accounts", ctx)
        return Reply(downstream.status, [], b"web->" + downstream.body)

    up: Upstream = await make_upstream(web)
    mesh.register("web", up)
    return up


async def test_l5d_dtab_from_loopback_routes_the_request_and_its_downstream_calls_to_v2(make_mesh, make_upstream):
    mesh = await make_mesh()
    v1, v2 = await start_accounts(make_upstream, mesh, replicas=1)
    web = await start_web(make_upstream, mesh)

    direct = await call(mesh.port, "accounts", [("l5d-dtab", OVERRIDE)])
    through_web = await call(mesh.port, "web", [("l5d-dtab", OVERRIDE)])
    plain = await call(mesh.port, "web")

    assert (direct.status, direct.body) == (200, b"v2")
    assert (through_web.status, through_web.body) == (200, b"web->v2")
    assert (plain.status, plain.body) == (200, b"web->v1")  # the override's binding is cached apart
    # the override travels as l5d-ctx-dtab; l5d-dtab itself is not forwarded
    assert web.received[0].header("l5d-ctx-dtab") == OVERRIDE
    assert web.received[0].header("l5d-dtab") is None
    assert [r.header("l5d-ctx-dtab") for r in v2[0].received] == [OVERRIDE, OVERRIDE]
    assert v2[0].received[0].header("l5d-dst-client") == "/#/fs/accounts-v2"
    assert web.received[1].header("l5d-ctx-dtab") is None
    assert v1[0].requests == 1


async def test_l5d_dtab_from_an_untrusted_source_is_ignored(make_mesh, make_upstream):
    mesh = await make_mesh(trustedSources=["127.0.0.1/32"])
    v1, v2 = await start_accounts(make_upstream, mesh, replicas=1)
    web = await start_web(make_upstream, mesh)
    headers = [("l5d-dtab", OVERRIDE), ("l5d-ctx-dtab", OVERRIDE), ("l5d-ctx-trace", "t1")]

    remote_direct = await call(mesh.port, "accounts", headers, source=REMOTE_IP)
    remote_web = await call(mesh.port, "web", headers, source=REMOTE_IP)
    local_web = await call(mesh.port, "web", [("l5d-dtab", OVERRIDE)])  # the control: trusted

    assert (remote_direct.status, remote_direct.body) == (200, b"v1")
    assert (remote_web.status, remote_web.body) == (200, b"web->v1")
    assert (local_web.status, local_web.body) == (200, b"web->v2")
    seen = v1[0].received[0]
    assert seen.header("x-forwarded-for") == REMOTE_IP  # the source really was 127.0.0.2
    for name in ("l5d-dtab", "l5d-ctx-dtab", "l5d-ctx-trace"):
        assert seen.header(name) is None, name
        assert web.received[0].header(name) is None, name
    assert v2[0].requests == 1  # only the trusted control reached v2


async def test_empty_trusted_sources_ignore_overrides_even_from_loopback(make_mesh, make_upstream):
    mesh = await make_mesh(trustedSources=[])
    v1, v2 = await start_accounts(make_upstream, mesh, replicas=1)

    load = await drive(mesh.port, connections=4, per_connection=50, headers=[("l5d-dtab", OVERRIDE)])
    malformed = await call(mesh.port, "accounts", [("l5d-dtab", "/svc/accounts =>")])

    assert load.bodies == {b"v1": 200}
    assert v2[0].requests == 0
    assert (malformed.status, malformed.body) == (200, b"v1")  # untrusted, so not even parsed


@pytest.mark.parametrize(
    ("header", "value", "l5d_err"),
    [
        (
            "l5d-dtab",
            "/svc/accounts => ",
            "malformed l5d-dtab header: line 1, column 18: expected a path, '(', '!', '~' or '$', found end of input",
        ),
        (
            "l5d-ctx-dtab",
            "/svc/accounts /#/fs/accounts-v2",
            "malformed l5d-ctx-dtab header: line 1, column 15: expected '=>', found '/'",
        ),
    ],
)
async def test_malformed_override_is_a_400_with_a_one_line_l5d_err(make_mesh, make_upstream, header, value, l5d_err):
    mesh = await make_mesh()
    v1, v2 = await start_accounts(make_upstream, mesh, replicas=1)

    response = await call(mesh.port, "accounts", [(header, value)])

    assert response.status == 400
    assert response.header("l5d-err") == l5d_err
    assert response.body == l5d_err.encode() + b"\n"
    assert v1[0].requests == v2[0].requests == 0


async def test_l5d_dtab_wins_over_l5d_ctx_dtab_and_both_travel_downstream(make_mesh, make_upstream):
    mesh = await make_mesh()
    v1, v2 = await start_accounts(make_upstream, mesh, replicas=1)
    # a trailing comment in the context must not swallow the request's own override
    ctx = "/svc/accounts => /#/fs/accounts # pinned by the caller"

    response = await call(mesh.port, "accounts", [("l5d-ctx-dtab", ctx), ("l5d-dtab", OVERRIDE)])

    assert (response.status, response.body) == (200, b"v2")
    assert v2[0].received[0].header("l5d-ctx-dtab") == "/svc/accounts=>/#/fs/accounts;/svc/accounts=>/#/fs/accounts-v2"


async def test_override_to_a_missing_service_falls_back_unless_it_says_fail(make_mesh, make_upstream):
    mesh = await make_mesh()
    await start_accounts(make_upstream, mesh, replicas=1)

    fallback = await call(mesh.port, "accounts", [("l5d-dtab", "/svc/accounts => /#/fs/accounts-staging")])
    strict = await call(mesh.port, "accounts", [("l5d-dtab", "/svc/accounts => /#/fs/accounts-staging | !")])

    assert (fallback.status, fallback.body) == (200, b"v1")
    assert strict.status == 502
    assert strict.header("l5d-err") == (
        "No hosts are available for /svc/accounts: the dtab says it fails (!); "
        "Dtab.base=[/svc=>/#/fs], Dtab.local=[/svc/accounts => /#/fs/accounts-staging | !]"
    )


@pytest.mark.parametrize("namer", ["inet", "fixedinet"])
async def test_override_to_an_inet_address_reaches_it(make_mesh, make_upstream, namer):
    mesh = await make_mesh()
    v1, v2 = await start_accounts(make_upstream, mesh, replicas=1)
    dentry = f"/svc/accounts => /$/{namer}/127.0.0.1/{v2[0].port}"

    response = await call(mesh.port, "accounts", [("l5d-dtab", dentry)])

    assert (response.status, response.body) == (200, b"v2")
    assert v2[0].received[0].header("l5d-dst-client") == f"/$/{namer}/127.0.0.1/{v2[0].port}"
