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
import gc
import time

import pytest

from tests.integration.test_canary import drive, start_accounts
from tests.support.client import RawConnection, RawResponse, build_request
from tests.support.upstreams import Received, Reply, Upstream

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


# -- hostile per-request dtabs (issue 13, bug 5) ------------------------------------------------


def alternations(n: int, tag: int) -> str:
    """The header of the issue: `/xi => /x(i+1) | /x(i+1)`, 2**n nodes when bound naively. The
    unused first dentry makes every request's header different, so no cache helps."""
    links = "; ".join(f"/x{i} => /x{i + 1} | /x{i + 1}" for i in range(n))
    return f"/unused{tag} => /z; /svc/accounts => /x0; {links}"


def diverging(n: int, tag: int) -> str:
    """The same shape with paths that all differ (`/x1/a`, `/x1/b`, `/x2/a/a`, ...)."""
    links = "; ".join(f"/x{i} => /x{i + 1}/a | /x{i + 1}/b" for i in range(n))
    return f"/unused{tag} => /z; /svc/accounts => /x0; {links}"


WORK_LIMIT_ERR = (
    "cannot bind /svc/accounts: binding /svc/accounts needed more than 1000 steps of work, "
    "the limit for a binding with a per-request dtab (l5d-dtab, l5d-ctx-dtab)"
)


@pytest.mark.parametrize(
    ("craft", "status", "l5d_err"),
    [
        # `/x0` binds to `~` (no namer knows `/x40`), so the request falls back to `/svc => /#/fs`
        (alternations, 200, None),
        (diverging, 502, WORK_LIMIT_ERR),
    ],
)
async def test_crafted_l5d_dtabs_are_answered_promptly_and_do_not_stall_a_normal_request(
    make_mesh, make_upstream, craft, status, l5d_err
):
    mesh = await make_mesh()
    v1, v2 = await start_accounts(make_upstream, mesh, replicas=1)
    assert (await call(mesh.port, "accounts")).status == 200  # the normal binding and client exist
    crafted = [await RawConnection.open(mesh.port) for _ in range(20)]
    normal = await RawConnection.open(mesh.port)
    try:
        for tag, conn in enumerate(crafted):
            header = craft(40, tag)
            await conn.send(build_request("GET", "/balance", [("l5d-dtab", header)], host="accounts"))
        # CPU time of this process (meshd runs in it), not wall time: what the crafted headers cost
        # meshd does not depend on what else the machine is running. The test process's own heap
        # (the whole suite's objects) is collected first and the collector held off meanwhile, as
        # a meshd process freezes its start-up objects (meshd/daemon.py, `_tune_gc`): a full
        # collection of the suite's heap would otherwise be charged to meshd.
        gc.collect()
        gc.disable()
        try:
            started = time.process_time()
            plain = await normal.request("GET", "/balance", host="accounts")
            elapsed = time.process_time() - started
        finally:
            gc.enable()
        answers = [await conn.read_response() for conn in crafted]
    finally:
        for conn in [*crafted, normal]:
            await conn.close()

    assert (plain.status, plain.body) == (200, b"v1")
    assert elapsed < 0.2, f"a normal request took {elapsed * 1000:.0f} ms of CPU behind 20 crafted l5d-dtab headers"
    assert [a.status for a in answers] == [status] * 20
    assert [a.header("l5d-err") for a in answers] == [l5d_err] * 20
    assert v2[0].requests == 0


@pytest.mark.parametrize(
    ("headers", "status", "l5d_err"),
    [
        (
            [("l5d-dtab", "/svc/accounts => /#/fs/accounts-v2; " + "#" * 4100)],
            431,
            "l5d-dtab header is 4136 bytes; a per-request dtab may have at most 4096 bytes",
        ),
        (
            [("l5d-ctx-dtab", ";".join(f"/a{i}=>/b" for i in range(101)))],
            400,
            "l5d-ctx-dtab header has 101 dentries; a per-request dtab may have at most 100",
        ),
        (
            [("l5d-ctx-dtab", ";".join(f"/a{i}=>/b" for i in range(60))), ("l5d-dtab", ";".join(f"/c{i}=>/d" for i in range(41)))],
            400,
            "l5d-ctx-dtab and l5d-dtab have 101 dentries; a per-request dtab may have at most 100",
        ),
        (
            [("l5d-ctx-dtab", "/svc/accounts=>/#/fs/" + "a" * 2500), ("l5d-dtab", "/svc/accounts=>/#/fs/" + "b" * 2500)],
            431,
            "l5d-ctx-dtab and l5d-dtab together are 5043 bytes as forwarded; a per-request dtab may have at most 4096 bytes",
        ),
    ],
)
async def test_oversized_per_request_dtabs_are_refused_with_the_limit_named(make_mesh, make_upstream, headers, status, l5d_err):
    mesh = await make_mesh()
    v1, v2 = await start_accounts(make_upstream, mesh, replicas=1)

    response = await call(mesh.port, "accounts", headers)
    at_the_limit = await call(mesh.port, "accounts", [("l5d-dtab", ";".join(f"/a{i}=>/b" for i in range(99)) + ";" + OVERRIDE)])

    assert response.status == status
    assert response.header("l5d-err") == l5d_err
    assert (at_the_limit.status, at_the_limit.body) == (200, b"v2")  # 100 dentries are fine
    assert (v1[0].requests, v2[0].requests) == (0, 1)  # the refused request reached no upstream
