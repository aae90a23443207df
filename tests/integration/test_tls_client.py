"""TLS from meshd to its upstreams (`client.tls` / `clients[].tls`), over real sockets on loopback.

The server's certificate is verified against `serverName` (templated from the bound name);
pooled connections amortise the handshake and later connections resume the session; each
handshake failure is a 502 whose `l5d-err` says what failed, counted by reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.conftest import Mesh, base_config
from tests.integration.test_tls_openssl import openssl_binary
from tests.support.client import RawConnection
from tests.support.tls import Pair, Pki, spiffe
from tests.support.upstreams import Received, Reply, Upstream
from tests.support.waiting import wait_until

MakeMesh = Callable[..., Awaitable[Mesh]]
MakeUpstream = Callable[..., Awaitable[Upstream]]


@pytest.fixture
def pki(tmp_path: pathlib.Path) -> Pki:
    return Pki(tmp_path / "pki")


def client_config(pki: Pki, **tls: object) -> dict[str, object]:
    section: dict[str, object] = {"serverName": "{-1}.bank.local", "caPath": str(pki.ca_path)}
    section.update(tls)
    return base_config(clients=[{"prefix": "/#/fs/*", "tls": section}])


async def get(mesh: Mesh, n: int = 1, host: str = "svc") -> list[tuple[int, str | None]]:
    conn = await RawConnection.open(mesh.port)
    try:
        out = []
        for _ in range(n):
            response = await conn.request("GET", "/", host=host)
            out.append((response.status, response.header("l5d-err")))
        return out
    finally:
        await conn.close()


def handshakes(mesh: Mesh, resumed: str | None = None) -> int:
    return sum(
        n for (_, client, was), n in mesh.daemon.runtime.tls.handshakes.items()
        if client and (resumed is None or was == resumed)
    )


def client_failures(mesh: Mesh, reason: str) -> int:
    return mesh.daemon.runtime.tls.failure_count(reason, router="outgoing", client="/#/fs/svc")


async def test_requests_go_over_tls_to_the_templated_name_and_share_one_handshake(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki
) -> None:
    up = await make_upstream(ssl=pki.server_context(pki.issue("svc", dns=("svc.bank.local",), ips=())))
    mesh = await make_mesh(client_config(pki))
    mesh.register("svc", up)
    assert await get(mesh, 5) == [(200, None)] * 5
    assert up.requests == 5 and up.connections == 1
    assert handshakes(mesh) == 1


async def test_a_new_connection_resumes_the_tls_session(make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki) -> None:
    async def closing(request: Received) -> Reply:
        return Reply(200, [], b"ok\n", close=True)

    up = await make_upstream(closing, ssl=pki.server_context(pki.issue("svc", dns=("svc.bank.local",), ips=())))
    mesh = await make_mesh(client_config(pki))
    mesh.register("svc", up)
    assert await get(mesh, 3) == [(200, None)] * 3
    assert up.connections == 3
    assert handshakes(mesh, resumed="false") == 1
    assert handshakes(mesh, resumed="true") == 2


async def test_mutual_tls_presents_meshds_certificate(make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki) -> None:
    up = await make_upstream(ssl=pki.server_context(pki.issue("svc", dns=("svc.bank.local",), ips=()), require_client_cert=True))
    node = pki.issue("node", uris=(spiffe("meshd"),))
    mesh = await make_mesh(client_config(pki, certPath=str(node.cert), keyPath=str(node.key)))
    mesh.register("svc", up)
    assert await get(mesh) == [(200, None)]


@pytest.mark.parametrize(
    ("case", "reason", "words"),
    [
        ("unknown-ca", "unknown_ca", "not signed by a trusted CA"),
        ("name-mismatch", "name_mismatch", "does not name the server"),
        ("expired", "expired", "has expired"),
        ("bad-key-usage", "bad_certificate", "was refused"),
        ("plaintext-upstream", "not_tls", "did not answer in TLS"),
    ],
)
async def test_an_upstream_handshake_failure_is_a_502_saying_what_failed(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki, tmp_path: pathlib.Path, case: str, reason: str, words: str
) -> None:
    if case == "unknown-ca":
        other = Pki(tmp_path / "other", name="another CA")
        up = await make_upstream(ssl=other.server_context(other.issue("svc", dns=("svc.bank.local",), ips=())))
    elif case == "name-mismatch":
        up = await make_upstream(ssl=pki.server_context(pki.issue("wrong", dns=("ledger.bank.local",), ips=())))
    elif case == "bad-key-usage":
        up = await make_upstream(ssl=pki.server_context(pki.issue("odd", dns=("svc.bank.local",), ips=(), key_usage=False)))
    elif case == "expired":
        up = await make_upstream(ssl=pki.server_context(pki.issue("old", dns=("svc.bank.local",), ips=(), expired=True)))
    else:
        up = await make_upstream()
    config = client_config(pki)
    config["routers"][0]["service"] = {"retries": {"maxRequeues": 1}}  # type: ignore[index]  # (fast)
    mesh = await make_mesh(config)
    mesh.register("svc", up)
    ((status, err),) = await get(mesh)
    assert status == 502
    assert err is not None and words in err, err
    assert client_failures(mesh, reason) >= 1
    assert up.requests == 0
    text = (await _metrics(mesh)).decode()
    assert f'meshd_tls_handshake_failures_total{{client="/#/fs/svc",reason="{reason}",router="outgoing"}}' in text


async def test_an_openssl_server_refusing_meshd_without_a_client_certificate_is_a_502_saying_so(
    make_mesh: MakeMesh, pki: Pki
) -> None:
    """TLS 1.3 sends the server's verdict on the client's certificate after the handshake, as an
    alert; a real OpenSSL server (`openssl s_server -Verify 1`) does, and meshd reports it."""
    good = pki.issue("svc", dns=("svc.bank.local",), ips=())
    async with openssl_server(good, pki) as port:
        mesh = await make_mesh(client_config(pki))
        mesh.register("svc", f"127.0.0.1 {port}")
        ((status, err),) = await get(mesh)
        assert status == 502
        assert err is not None and "no client certificate was presented" in err, err
        assert client_failures(mesh, "no_client_cert") >= 1
        # with the certificate, the same server answers
        node = pki.issue("node", uris=(spiffe("meshd"),))
        mesh2 = await make_mesh(client_config(pki, certPath=str(node.cert), keyPath=str(node.key)))
        mesh2.register("svc", f"127.0.0.1 {port}")
        assert await get(mesh2) == [(200, None)]


async def test_a_server_that_closes_right_after_the_handshake_gets_a_502_that_says_where(
    make_mesh: MakeMesh, make_upstream: MakeUpstream, pki: Pki
) -> None:
    """Servers on uvloop (meshd's own included) close without sending their alert: meshd says
    what such a close after the handshake usually means."""
    good = pki.issue("svc", dns=("svc.bank.local",), ips=())
    up = await make_upstream(ssl=pki.server_context(good, require_client_cert=True))
    mesh = await make_mesh(client_config(pki))
    mesh.register("svc", up)
    ((status, err),) = await get(mesh)
    assert status == 502
    assert err is not None and "right after the TLS handshake" in err and "client certificate" in err, err
    assert up.requests == 0


@contextlib.asynccontextmanager
async def openssl_server(pair: Pair, pki: Pki) -> AsyncIterator[int]:
    """`openssl s_server` requiring a client certificate, answering `-www` pages (HTTP/1.0 200)."""
    binary = openssl_binary()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        binary, "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(pair.cert), "-key", str(pair.key),
        "-CAfile", str(pki.ca_path), "-Verify", "1", "-verify_return_error", "-www", "-quiet",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )

    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        await wait_until(listening, message="openssl s_server to listen")
        yield port
    finally:
        process.kill()
        await process.wait()


async def _metrics(mesh: Mesh) -> bytes:
    from meshd.admin.metrics import render_now

    return render_now(mesh.daemon)  # type: ignore[arg-type]
