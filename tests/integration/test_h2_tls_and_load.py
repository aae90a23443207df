"""HTTP/2 by ALPN on a TLS server, and h2load (Debian nghttp2-client) against an h2c router.

h2load is the load generator of nghttp2, an independent HTTP/2 implementation: that many
multiplexed streams on few connections all succeed is a check of meshd's framing and flow
control against a client that is not the `h2` library. A missing h2load fails the test under
CI=true and skips it elsewhere (`make system-deps` installs it).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import shutil
from collections.abc import AsyncIterator

import pytest

from tests.conftest import base_config
from tests.support.client import RawConnection
from tests.support.h2peer import H2Client, H2Server, echo
from tests.support.tls import Pki, server_tls

# each test runs on both HTTP/2 codec backends (tests/conftest.py h2_codec)
pytestmark = pytest.mark.usefixtures("h2_codec")

MISSING_H2LOAD = "install h2load: apt-get install nghttp2-client"


@pytest.fixture
async def upstream() -> AsyncIterator[H2Server]:
    server = await H2Server(echo).start()
    yield server
    await server.close()


async def _tls_mesh(make_mesh, tmp_path: pathlib.Path, **h2: object):  # type: ignore[no-untyped-def]
    pki = Pki(tmp_path / "pki")
    pair = pki.issue("meshd", dns=("localhost",))
    config = base_config(protocol="h2", h2=h2, servers=[{"ip": "127.0.0.1", "port": 0, "tls": server_tls(pki, pair)}])
    return await make_mesh(config), pki


async def test_alpn_h2_on_a_tls_server(make_mesh, upstream, tmp_path):
    mesh, pki = await _tls_mesh(make_mesh, tmp_path)
    mesh.register("svc", upstream.address_line)
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["h2"])
    client = await H2Client.open(mesh.port, ssl=ctx, server_hostname="localhost")
    assert client.transport is not None
    assert client.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    result = await client.request("POST", "/tls", "svc", body=b"over tls")
    assert result.status == 200 and result.body == b"over tls"
    client.close()


async def test_alpn_http11_is_served_on_an_h2_router_that_accepts_http1(make_mesh, upstream, tmp_path):
    mesh, pki = await _tls_mesh(make_mesh, tmp_path, acceptHttp1=True)
    mesh.register("svc", upstream.address_line)
    ctx = pki.client_context()
    ctx.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", mesh.port, ssl=ctx, server_hostname="localhost")
    conn = RawConnection(reader, writer)
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    response = await conn.request("GET", "/one", host="svc")
    assert response.status == 200
    await conn.close()
    assert upstream.received[-1].path == "/one"


async def test_tls_upstream_is_offered_h2_by_alpn(make_mesh, tmp_path):
    pki = Pki(tmp_path / "pki")
    server_ctx = pki.server_context(pki.issue("upstream", dns=("localhost",)))
    server_ctx.set_alpn_protocols(["h2"])
    up = await H2Server(echo).start(ssl=server_ctx)
    try:
        tls = {"caPath": str(pki.ca_path), "serverName": "localhost"}
        mesh = await make_mesh(base_config(protocol="h2", clients=[{"prefix": "/#/fs/*", "tls": tls}]))
        mesh.register("svc", up.address_line)
        client = await H2Client.open(mesh.port)
        result = await client.request("POST", "/", "svc", body=b"secret")
        assert result.status == 200 and result.body == b"secret"
        assert up.alpn == ["h2"]
        assert up.received[0].header(b":scheme") == b"https"
        client.close()
    finally:
        await up.close()


def _h2load() -> str:
    found = shutil.which("h2load")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING_H2LOAD)
        pytest.skip(MISSING_H2LOAD)
    return found


async def test_h2load_many_multiplexed_streams_all_succeed(make_mesh, upstream):
    h2load = _h2load()
    mesh = await make_mesh(protocol="h2")
    mesh.register("svc", upstream.address_line)
    proc = await asyncio.create_subprocess_exec(
        h2load, "-n", "400", "-c", "4", "-m", "20", "-H", ":authority: svc",
        f"http://127.0.0.1:{mesh.port}/load",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, text
    done = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", text)
    assert done is not None, text
    assert done.group(4) == "400" and done.group(5) == "0", text
    assert re.search(r"status codes: 400 2xx", text), text
    assert len(upstream.received) == 400
    # 4 client connections carried 400 requests; meshd multiplexed them onto few upstream connections
    assert len(upstream.conns) <= 4
