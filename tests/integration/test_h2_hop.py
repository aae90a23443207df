"""HTTP/2 between two meshds with HTTP/1.1 on both outer sides: `client.protocol` (docs/http2.md,
"Protocols and defaults"; docs/tls.md, "The hop between nodes").

The DaemonSet shape over mutual TLS: an app speaks HTTP/1.1 to the `outgoing` meshd, whose client
speaks HTTP/2 (`protocol: h2`) to the other node's `incoming` meshd (`protocol: h2` with
`acceptHttp1`), whose client speaks HTTP/1.1 (`protocol: http`) to the local service. Many
requests share one multiplexed TLS connection between the meshds. Every test runs with the fast
paths on and off (`MESHD_FAST_PATH=0`): what the app and the service see is the same; the fast
paths' own counters show which path served.
"""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Awaitable, Callable

import pytest

from meshd.config import ConfigError, load_config
from meshd.config.model import MeshdConfig
from meshd.fastpath import FastPath
from meshd.h2fast import H2FastPath
from meshd.pool.h2 import H2Pool
from routing.path import Path
from tests.conftest import Mesh, base_config
from tests.integration.test_fast_path import _DropsSecondRequest as DropsSecondRequest
from tests.support.client import RawConnection
from tests.support.h2peer import H2Client
from tests.support.tls import Pki, server_tls, spiffe
from tests.support.upstreams import Received, Reply, Upstream

pytestmark = pytest.mark.usefixtures("h2_codec")

MakeMesh = Callable[..., Awaitable[Mesh]]
MakeUpstream = Callable[..., Awaitable[Upstream]]


async def echo(request: Received) -> Reply:
    """The service: says what it got (Host, method, target, body, the caller's identity)."""
    return Reply(200, [
        ("x-host", request.header("host") or "-"),
        ("x-method", request.method),
        ("x-target", request.target),
        ("x-client-id", request.header("l5d-client-id") or "-"),
        ("x-framing", "chunked" if request.header("transfer-encoding") else request.header("content-length") or "none"),
        ("x-te", request.header("te") or "-"),
    ], request.body)


async def two_nodes(tmp_path: pathlib.Path, make_mesh: MakeMesh, make_upstream: MakeUpstream,
                    *, tls: bool = True) -> tuple[Mesh, Mesh, Upstream]:
    """service <- incoming meshd (h2 in, HTTP/1.1 out) <- [h2, mTLS] <- outgoing meshd (HTTP/1.1 in, h2 out)."""
    pki = Pki(tmp_path / "pki")
    incoming_pair = pki.issue("incoming", dns=("meshd.bank.local",), uris=(spiffe("meshd", "linkerd"),))
    payments = pki.issue("payments", uris=(spiffe("payments"),))
    service = await make_upstream(echo)
    server: dict[str, object] = {"ip": "127.0.0.1", "port": 0}
    if tls:
        server["tls"] = server_tls(pki, incoming_pair, require_client_cert=True)
    incoming = await make_mesh(base_config(
        label="incoming", protocol="h2", h2={"acceptHttp1": True}, servers=[server], client={"protocol": "http"},
        identifier={"kind": "static", "path": "/svc"},
    ))
    incoming.register("svc", service)
    client: dict[str, object] = {"protocol": "h2"}
    if tls:
        client["tls"] = {"serverName": "meshd.bank.local", "caPath": str(pki.ca_path),
                         "certPath": str(payments.cert), "keyPath": str(payments.key)}
    outgoing = await make_mesh(base_config(client=client))
    outgoing.register("svc", f"127.0.0.1 {incoming.port}")
    return outgoing, incoming, service


def h2_pool(mesh: Mesh) -> H2Pool:
    client = mesh.daemon.routers[0].clients[Path.read("/#/fs/svc")]
    (endpoint,) = client._endpoints.values()
    assert endpoint.h2 is not None, "the client speaks HTTP/2"
    return endpoint.h2


def fast_counts(outgoing: Mesh, incoming: Mesh) -> tuple[int, int, int, int]:
    h1 = outgoing.daemon.bound[0].listener.fast
    h2 = incoming.daemon._h2_fast.get("incoming")
    assert h1 is None or isinstance(h1, FastPath)
    assert h2 is None or isinstance(h2, H2FastPath)
    return (h1.taken if h1 else 0, h1.handed_over if h1 else 0, h2.taken if h2 else 0, h2.handed_over if h2 else 0)


async def test_http1_apps_talk_over_one_multiplexed_mtls_h2_connection_between_meshds(
    tmp_path: pathlib.Path, make_mesh: MakeMesh, make_upstream: MakeUpstream, path_mode: str
) -> None:
    outgoing, incoming, service = await two_nodes(tmp_path, make_mesh, make_upstream)
    conn = await RawConnection.open(outgoing.port)
    first = await asyncio.wait_for(conn.request("GET", "/accounts/7?x=1", host="svc"), 10)
    assert first.status == 200, first.header("l5d-err")
    # the service got an HTTP/1.1 request with the app's Host (HTTP/2 carried it as :authority)
    assert first.header("x-host") == "svc"
    assert first.header("x-target") == "/accounts/7?x=1"
    assert first.header("x-client-id") == spiffe("payments")  # from the outgoing meshd's certificate
    assert first.header("x-framing") == "none"
    # many apps' connections at once: one TLS connection between the meshds carries them all
    conns = [await RawConnection.open(outgoing.port) for _ in range(20)]
    try:
        for _burst in range(2):  # the first burst also fills the incoming meshd's pool to the service
            before = fast_counts(outgoing, incoming)
            replies = await asyncio.wait_for(asyncio.gather(*(
                c.request("POST", f"/pay/{i}", body=b"amount=%d" % i, host="svc") for i, c in enumerate(conns)
            )), 10)
            assert [r.status for r in replies] == [200] * 20
            assert [r.body for r in replies] == [b"amount=%d" % i for i in range(20)]
            assert all(r.header("x-framing") == str(len(r.body)) for r in replies)  # Content-Length kept
            assert all(r.header("x-method") == "POST" for r in replies)
        pool = h2_pool(outgoing)
        assert (len(pool.conns), pool.opened) == (1, 1)
        counts = tuple(a - b for a, b in zip(fast_counts(outgoing, incoming), before, strict=True))
        if path_mode == "fast":
            # warm, both meshds served every request on their fast path, handing none over
            assert counts == (20, 0, 20, 0)
        else:
            assert counts == (0, 0, 0, 0)
    finally:
        for c in [conn, *conns]:
            await c.close()


async def test_bodies_of_every_framing_trailers_and_head_cross_both_conversions(
    tmp_path: pathlib.Path, make_mesh: MakeMesh, make_upstream: MakeUpstream, path_mode: str
) -> None:
    outgoing, _, service = await two_nodes(tmp_path, make_mesh, make_upstream)
    conn = await RawConnection.open(outgoing.port)
    # a chunked request body (no length: HTTP/2 DATA frames, then chunked again on the last hop)
    chunked = await asyncio.wait_for(conn.request(
        "POST", "/upload", [("transfer-encoding", "chunked")], body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        host="svc"), 10)
    assert chunked.status == 200, chunked.header("l5d-err")
    assert chunked.body == b"hello world"
    assert chunked.header("x-framing") == "chunked"
    # a body bigger than one HTTP/2 window each way
    big = bytes(range(256)) * 1024
    large = await asyncio.wait_for(conn.request("PUT", "/big", body=big, host="svc"), 10)
    assert (large.status, large.body) == (200, big)
    # HTTP/1.1 chunked trailers -> HTTP/2 trailers -> HTTP/1.1 chunked trailers
    response = await asyncio.wait_for(conn.request(
        "POST", "/batch", [("transfer-encoding", "chunked"), ("te", "trailers")],
        body=b"3\r\nabc\r\n0\r\nx-sum: 3\r\n\r\n", host="svc"), 10)
    assert (response.status, response.body) == (200, b"abc"), response.header("l5d-err")
    assert service.received[-1].trailers == [("x-sum", "3")]
    # a HEAD's response keeps its length and has no body on either side
    head = await asyncio.wait_for(conn.request("HEAD", "/statement", host="svc"), 10)
    assert (head.status, head.body) == (200, b"")
    assert service.received[-1].method == "HEAD"
    follow = await asyncio.wait_for(conn.request("GET", "/after", host="svc"), 10)
    assert (follow.status, follow.header("x-target")) == (200, "/after")  # the connection is still in step
    await conn.close()


async def test_an_http1_router_with_http2_clients_exports_the_http2_series(
    tmp_path: pathlib.Path, make_mesh: MakeMesh, make_upstream: MakeUpstream
) -> None:
    outgoing, _, _ = await two_nodes(tmp_path, make_mesh, make_upstream, tls=False)
    admin = await RawConnection.open(outgoing.admin_port)
    text = (await asyncio.wait_for(admin.request("GET", "/metrics", host="admin"), 10)).body.decode()
    await admin.close()
    assert 'meshd_h2_ping_timeouts_total{router="outgoing"} 0' in text
    assert 'meshd_h2_streams_refused_total{router="outgoing"} 0' in text


async def test_http2_to_an_incoming_router_that_speaks_only_http1_fails_with_l5d_err(
    make_mesh: MakeMesh, make_upstream: MakeUpstream
) -> None:
    # the wrong rollout order (docs/tls.md, "The hop between nodes"): outgoing first
    service = await make_upstream(echo)
    incoming = await make_mesh(base_config(label="incoming", identifier={"kind": "static", "path": "/svc"}))
    incoming.register("svc", service)
    outgoing = await make_mesh(base_config(client={"protocol": "h2"}, bindingTimeoutMs=2000))
    outgoing.register("svc", f"127.0.0.1 {incoming.port}")
    conn = await RawConnection.open(outgoing.port)
    response = await asyncio.wait_for(conn.request("GET", "/", host="svc"), 10)
    assert response.status == 502, (response.status, response.body)
    assert response.header("l5d-err")
    # ... saying what to change
    assert "answered in HTTP/1.x, not HTTP/2" in (response.header("l5d-err") or ""), response.header("l5d-err")
    assert "protocol: h2" in (response.header("l5d-err") or "")
    assert service.requests == 0
    await conn.close()


async def test_an_http2_stream_on_a_stale_http1_connection_is_sent_again_on_a_fresh_one(
    make_mesh: MakeMesh, path_mode: str
) -> None:
    seen: list[bytes] = []
    server = await asyncio.get_running_loop().create_server(lambda: DropsSecondRequest(seen), "127.0.0.1", 0)
    try:
        incoming = await make_mesh(base_config(label="incoming", protocol="h2", client={"protocol": "http"}))
        incoming.register("svc", f"127.0.0.1 {server.sockets[0].getsockname()[1]}")
        client = await H2Client.open(incoming.port)
        assert (await client.request("GET", "/1", "svc")).status == 200
        # the pooled connection is closed unseen by the upstream when the second request arrives: an
        # idempotent request goes again on a fresh connection, once (the fast path hands it over for that)
        assert (await client.request("GET", "/2", "svc")).status == 200
        assert seen == [b"GET /1 HTTP/1.1", b"GET /2 HTTP/1.1", b"GET /2 HTTP/1.1"]
        # a POST is not sent again: the upstream may have acted on it
        posted = await client.request("POST", "/3", "svc", body=b"x")
        assert posted.status == 502 and b"closed an idle keep-alive connection" in (posted.header(b"l5d-err") or b"")
        assert seen[3:] == [b"POST /3 HTTP/1.1"]
        meshd_client = incoming.daemon.routers[0].clients[Path.read("/#/fs/svc")]
        assert meshd_client.inflight == 0
        assert meshd_client.attempt_totals().failures == 1
        fast = incoming.daemon._h2_fast.get("incoming")
        assert (fast is not None) is (path_mode == "fast")
        if fast is not None:
            assert (fast.taken, fast.handed_over) == (3, 3)  # not yet bound; the resend; the POST's failure
        client.close()
    finally:
        server.close()


async def test_plaintext_hop_works_the_same(
    tmp_path: pathlib.Path, make_mesh: MakeMesh, make_upstream: MakeUpstream, path_mode: str
) -> None:
    outgoing, _, _ = await two_nodes(tmp_path, make_mesh, make_upstream, tls=False)
    conn = await RawConnection.open(outgoing.port)
    response = await asyncio.wait_for(conn.request("GET", "/", host="svc"), 10)
    assert (response.status, response.header("x-host"), response.header("x-client-id")) == (200, "svc", "-")
    await conn.close()


async def test_an_http10_request_without_host_gets_the_endpoint_as_authority(
    tmp_path: pathlib.Path, make_mesh: MakeMesh, make_upstream: MakeUpstream, path_mode: str
) -> None:
    _, incoming, _ = await two_nodes(tmp_path, make_mesh, make_upstream, tls=False)
    # a static identifier: the request names no host at all
    outgoing2 = await make_mesh(base_config(identifier={"kind": "static", "path": "/svc"}, client={"protocol": "h2"}))
    outgoing2.register("svc", f"127.0.0.1 {incoming.port}")
    reader, writer = await asyncio.open_connection("127.0.0.1", outgoing2.port)
    writer.write(b"GET /old HTTP/1.0\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
    assert head.startswith("http/1.1 200") or head.startswith("http/1.0 200"), head
    assert f"x-host: 127.0.0.1:{incoming.port}" in head


def test_client_protocol_is_checked_where_it_is_written() -> None:
    text = (
        "routers:\n"
        "  - label: outgoing\n"
        "    clients:\n"
        "      - prefix: /#/fs/ledger\n"
        "        protocol: h3\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(text, MeshdConfig)
    problem = info.value.problems[0]
    assert problem.path == "routers[0].clients[0].protocol"
    assert problem.line == 5
    assert "h3" in problem.message


def test_a_client_prefix_chooses_its_protocol_and_the_router_default_applies_elsewhere() -> None:
    config = load_config(
        "routers:\n"
        "  - label: outgoing\n"
        "    protocol: h2\n"
        "    servers: [{ip: 127.0.0.1, port: 0}]\n"
        "    client: {protocol: http}\n"
        "    clients:\n"
        "      - prefix: /#/fs/grpc\n"
        "        protocol: h2\n",
        MeshdConfig,
    )
    router = config.routers[0]
    assert router.upstream_protocol(router.client_for(Path.read("/#/fs/ledger"))) == "http"
    assert router.upstream_protocol(router.client_for(Path.read("/#/fs/grpc"))) == "h2"
    plain = load_config("routers:\n  - label: outgoing\n", MeshdConfig).routers[0]
    assert plain.upstream_protocol(plain.client_for(Path.read("/#/fs/ledger"))) == "http"
