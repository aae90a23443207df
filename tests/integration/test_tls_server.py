"""TLS on meshd's servers, over real sockets on loopback, with certificates made in the test.

One-way TLS and mutual TLS; the client's identity reaching the upstream (and not forgeable by a
header); plaintext on a TLS port and TLS on a plaintext port refused and counted; a stalled
handshake cut at the handshake timeout; each client-certificate failure refused with its reason.
"""

from __future__ import annotations

import asyncio
import pathlib
import ssl
from collections.abc import Awaitable, Callable

import pytest

from meshd.admin.metrics import render_now
from tests.conftest import Mesh, base_config
from tests.support.client import ConnectionClosed, RawConnection
from tests.support.tls import Pki, server_tls, spiffe
from tests.support.upstreams import Upstream
from tests.support.waiting import wait_until

MakeMesh = Callable[..., Awaitable[Mesh]]
MakeUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(tmp_path / "pki")


async def tls_mesh(make_mesh: MakeMesh, pki: Pki, *, mutual: bool = False, **extra: object) -> Mesh:
    pair = pki.issue("meshd", dns=("localhost", "meshd"))
    config = base_config(servers=[{"ip": "127.0.0.1", "port": 0, "tls": server_tls(pki, pair, require_client_cert=mutual, **extra)}])
    return await make_mesh(config)


async def open_tls(port: int, ctx: ssl.SSLContext, name: str = "localhost") -> RawConnection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    return RawConnection(reader, writer)


def failures(mesh: Mesh, reason: str) -> int:
    return mesh.daemon.runtime.tls.failure_count(reason, router="outgoing")


async def test_one_way_tls_proxies_over_tls13_with_alpn_http11(make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki) -> None:
    up = await make_upstream()
    mesh = await tls_mesh(make_mesh, pki)
    mesh.register("svc", up)
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    conn = await open_tls(mesh.port, ctx)
    try:
        ssl_object = conn.writer.get_extra_info("ssl_object")
        assert ssl_object.version() == "TLSv1.3"
        assert ssl_object.selected_alpn_protocol() == "http/1.1"
        for _ in range(3):
            response = await conn.request("GET", "/hello")
            assert response.status == 200 and response.body == b"ok\n"
    finally:
        await conn.close()
    assert up.requests == 3
    # three requests, one handshake: the connection was kept alive
    assert sum(n for (router, client, _), n in mesh.daemon.runtime.tls.handshakes.items() if router == "outgoing") == 1
    # without a caPath nobody is identified: no identity header reaches the upstream
    assert up.received[0].header("l5d-client-id") is None


async def test_tls12_client_is_served_with_an_ecdhe_aead_suite(make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki) -> None:
    up = await make_upstream()
    mesh = await tls_mesh(make_mesh, pki)
    mesh.register("svc", up)
    ctx = pki.client_context()
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    conn = await open_tls(mesh.port, ctx)
    try:
        cipher, version, _ = conn.writer.get_extra_info("cipher")
        assert version == "TLSv1.2"
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
        assert (await conn.request("GET", "/")).status == 200
    finally:
        await conn.close()


async def test_plaintext_http_on_a_tls_port_is_refused_and_counted(make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki) -> None:
    up = await make_upstream()
    mesh = await tls_mesh(make_mesh, pki)
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
    reply = await asyncio.wait_for(conn.read_eof(), 5)
    await conn.close()
    assert not reply.startswith(b"HTTP/")  # nothing in plaintext, and the connection is closed
    await wait_until(lambda: failures(mesh, "plaintext") == 1, message="the plaintext failure to be counted")
    assert up.requests == 0
    text = render_now(mesh.daemon).decode()  # type: ignore[arg-type]
    assert 'meshd_tls_handshake_failures_total{reason="plaintext",router="outgoing"} 1.0' in text


async def test_tls_on_a_plaintext_port_gets_no_http_reply_and_is_counted(make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki) -> None:
    up = await make_upstream()
    mesh = await make_mesh()
    mesh.register("svc", up)
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.port)
    # a real ClientHello, made by Python's TLS client over memory BIOs
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = pki.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    writer.write(outgoing.read())
    reply = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert reply == b""  # closed at once: no 400 in plaintext for a TLS client to choke on
    listener = mesh.daemon.listeners_of("outgoing")[0]
    assert listener.tls_on_plaintext == 1
    text = render_now(mesh.daemon).decode()  # type: ignore[arg-type]
    assert 'meshd_tls_handshake_failures_total{reason="tls_on_plaintext_port",router="outgoing"} 1.0' in text
    assert up.requests == 0


async def test_stalled_handshakes_are_cut_at_the_handshake_timeout_and_forgotten(make_mesh: MakeMesh, pki: Pki) -> None:
    mesh = await tls_mesh(make_mesh, pki, handshakeTimeoutMs=300)
    conns = [await asyncio.open_connection("127.0.0.1", mesh.port) for _ in range(50)]
    # half a ClientHello on one of them; nothing at all on the others
    conns[0][1].write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    side = mesh.daemon.tls_sides[0]
    await wait_until(lambda: len(side._pending) == 50, message="50 handshakes under way")
    loop = asyncio.get_running_loop()
    started = loop.time()
    for reader, _ in conns:
        assert await asyncio.wait_for(reader.read(), 5) == b""  # meshd closed it
    assert 0.25 <= loop.time() - started < 3.0
    await wait_until(lambda: failures(mesh, "timeout") == 50, message="50 handshake timeouts counted")
    assert side._pending == {}  # nothing kept of the half-open handshakes
    for _, writer in conns:
        writer.close()


async def test_mutual_tls_identity_reaches_the_upstream_and_a_header_cannot_forge_it(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki
) -> None:
    up = await make_upstream()
    mesh = await tls_mesh(make_mesh, pki, mutual=True)
    mesh.register("svc", up)
    payments = pki.issue("payments", uris=(spiffe("payments"),), dns=("payments.bank.local",))
    conn = await open_tls(mesh.port, pki.client_context(payments))
    try:
        forged = [("l5d-client-id", spiffe("admin")), ("L5D-Client-Id", "root")]
        response = await conn.request("GET", "/", headers=forged)
    finally:
        await conn.close()
    assert response.status == 200
    (received,) = up.received
    assert received.headers_named("l5d-client-id") == [spiffe("payments")]


async def test_the_dns_san_is_the_identity_when_there_is_no_uri_san_and_routing_can_use_it(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki
) -> None:
    ledger = await make_upstream(name="ledger")
    pair = pki.issue("meshd")
    config = base_config(
        servers=[{"ip": "127.0.0.1", "port": 0, "tls": server_tls(pki, pair, require_client_cert=True)}],
        identifier={"kind": "header", "header": "l5d-client-id", "prefix": "/caller"},
        dtab="/caller/payments.bank.local => /#/fs/ledger;",
    )
    mesh = await make_mesh(config)
    mesh.register("ledger", ledger)
    payments = pki.issue("payments", dns=("payments.bank.local",), ips=())
    stranger = pki.issue("stranger", dns=("stranger.bank.local",), ips=())
    for pair_, status in ((payments, 200), (stranger, 502)):
        conn = await open_tls(mesh.port, pki.client_context(pair_))
        try:
            assert (await conn.request("GET", "/")).status == status
        finally:
            await conn.close()
    assert ledger.requests == 1
    assert ledger.received[0].header("l5d-client-id") == "payments.bank.local"


async def test_a_trusted_plaintext_caller_cannot_set_the_identity_header(make_mesh: MakeMesh, make_upstream: MakeUpstream) -> None:
    up = await make_upstream()
    mesh = await make_mesh()  # loopback is a trusted source by default
    mesh.register("svc", up)
    conn = await RawConnection.open(mesh.port)
    try:
        response = await conn.request("GET", "/", headers=[("l5d-client-id", spiffe("admin")), ("l5d-ctx-trace", "x")])
    finally:
        await conn.close()
    assert response.status == 200
    assert up.received[0].header("l5d-client-id") is None
    assert up.received[0].header("l5d-ctx-trace") == "x"  # trusted context still travels


@pytest.mark.parametrize(
    ("case", "reason"),
    [("none", "no_client_cert"), ("other-ca", "unknown_ca"), ("expired", "expired"), ("bad-key-usage", "bad_certificate")],
)
async def test_a_bad_client_certificate_is_refused_with_its_reason(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki, tmp_path: pathlib.Path, case: str, reason: str
) -> None:
    up = await make_upstream()
    mesh = await tls_mesh(make_mesh, pki, mutual=True)
    mesh.register("svc", up)
    if case == "none":
        ctx = pki.client_context()
    elif case == "other-ca":
        other = Pki(tmp_path / "other", name="another CA")
        ctx = pki.client_context()
        ctx.load_cert_chain(*_files(other.issue("payments", uris=(spiffe("payments"),))))
    elif case == "expired":
        ctx = pki.client_context(pki.issue("old", uris=(spiffe("payments"),), expired=True))
    else:
        ctx = pki.client_context(pki.issue("odd", uris=(spiffe("payments"),), key_usage=False))
    with pytest.raises((OSError, ConnectionClosed)):
        # TLS 1.3: the client learns the server's verdict on its certificate at its first read
        conn = await open_tls(mesh.port, ctx)
        await conn.request("GET", "/")
    await wait_until(lambda: failures(mesh, reason) == 1, message=f"a {reason} failure to be counted")
    assert up.requests == 0


def _files(pair: object) -> tuple[str, str]:
    return str(pair.cert), str(pair.key)  # type: ignore[attr-defined]
