"""Bodies of many TLS records through meshd, in both directions, over real sockets on loopback.

meshd reads TLS one record at a time (meshd/tls/contexts.py, RECORD_MAX): a body many records
long, each way, on both of meshd's TLS ends (the client's mutual-TLS connection to meshd's server,
meshd's connection to a TLS upstream) arrives whole and in order, with the fast path on and off.
"""

from __future__ import annotations

import asyncio
import pathlib
import ssl
from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import Mesh, base_config
from tests.support.client import RawConnection
from tests.support.tls import Pki, server_tls, spiffe
from tests.support.upstreams import Received, Reply, Upstream

MakeMesh = Callable[..., Awaitable[Mesh]]
MakeUpstream = Callable[..., Awaitable[Upstream]]


async def echo(request: Received) -> Reply:
    return Reply(200, [("content-type", "application/octet-stream")], request.body[::-1])


@pytest.mark.parametrize("size", [3, 16_384, 16_385, 1_000_003])
async def test_a_body_of_many_records_crosses_both_tls_ends_whole(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, tmp_path: pathlib.Path, path_mode: str, size: int
) -> None:
    pki = Pki(tmp_path / "pki")
    up = await make_upstream(echo, ssl=pki.server_context(pki.issue("svc", dns=("svc.bank.local",), ips=())))
    meshd_pair = pki.issue("meshd", dns=("localhost",), uris=(spiffe("meshd"),))
    config = base_config(
        servers=[{"ip": "127.0.0.1", "port": 0, "tls": server_tls(pki, meshd_pair, require_client_cert=True)}],
        clients=[{"prefix": "/#/fs/*", "tls": {
            "serverName": "{-1}.bank.local", "caPath": str(pki.ca_path),
            "certPath": str(meshd_pair.cert), "keyPath": str(meshd_pair.key),
        }}],
    )
    mesh = await make_mesh(config)
    mesh.register("svc", up)
    ctx: ssl.SSLContext = pki.client_context(pki.issue("caller", uris=(spiffe("caller"),)))
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.port, ssl=ctx, server_hostname="localhost")
    conn = RawConnection(reader, writer)
    body = bytes(i * 7 % 251 for i in range(size))
    try:
        for _ in range(2):  # the second on the same connections, both ends kept alive
            response = await conn.request("POST", "/upload", [("content-type", "application/octet-stream")], body)
            assert response.status == 200, response.header("l5d-err")
            assert response.body == body[::-1]
    finally:
        await conn.close()
    assert [r.body for r in up.received] == [body, body]
    assert up.connections == 1
    # the caller's identity, read from its certificate, reaches the upstream with each request
    assert {r.header("l5d-client-id") for r in up.received} == {spiffe("caller")}
