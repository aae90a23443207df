"""Two meshd processes over mutual TLS, as two nodes: an app's request goes to the `outgoing`
meshd, which reaches the `incoming` meshd over mTLS (presenting its workload certificate), which
checks its authorization policy and passes the caller's identity to the upstream.

Also here, because they cross the process boundary: the policy comes from the routes file;
the incoming meshd's certificate is rotated by a Kubernetes-style symlink swap while requests
flow (none is lost), and a mismatched new pair is refused with the last good one still serving.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshd.tls.certs import not_after
from tests.support.client import ConnectionClosed, RawConnection
from tests.support.process import MeshdProcess, process_config
from tests.support.tls import Pair, Pki, spiffe
from tests.support.upstreams import Upstream
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)

ROUTES = """\
dtab: |
  /svc => /#/fs;
authorization:
  default: deny
  rules:
    - name: ledger-callers
      prefix: /svc/ledger
      allow: [{payments}]
"""


def install(pair: Pair, secret: pathlib.Path, version: str, key_from: Pair | None = None) -> None:
    """Write the pair as a Kubernetes Secret volume does: files in `..<version>/`, reached through
    the `..data` symlink, which is swapped atomically (rename over it)."""
    data = secret / f"..{version}"
    data.mkdir(parents=True)
    shutil.copy(pair.cert, data / "tls.crt")
    shutil.copy((key_from or pair).key, data / "tls.key")
    tmp = secret / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, secret / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (secret / name).is_symlink():
            (secret / name).symlink_to(f"..data/{name}")


async def metrics(admin_port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    conn = await RawConnection.open(admin_port)
    try:
        text = (await conn.request("GET", "/metrics", host="admin")).body.decode()
    finally:
        await conn.close()
    return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples}


async def served_names(port: int, pki: Pki, pair: Pair) -> list[str]:
    """The DNS names in the certificate a new handshake with the incoming meshd gets."""
    ctx = pki.client_context(pair)
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="meshd.bank.local")
    cert = writer.get_extra_info("peercert")
    writer.close()
    return sorted(v for k, v in cert["subjectAltName"] if k == "DNS")


async def send(port: int, host: str, headers: list[tuple[str, str]] | None = None) -> tuple[int, str | None]:
    conn = await RawConnection.open(port)
    try:
        response = await asyncio.wait_for(conn.request("GET", "/", headers, host=host), 10)
        return response.status, response.header("l5d-err")
    finally:
        await conn.close()


@pytest.mark.parametrize("hop", ["http", "h2"])
async def test_two_meshds_over_mutual_tls_with_identity_policy_and_rotation(tmp_path: pathlib.Path, hop: str) -> None:
    """`hop`: what the meshds speak to each other; over `h2` (docs/tls.md, "The hop between nodes")
    the applications and the ledger still speak HTTP/1.1."""
    pki = Pki(tmp_path / "pki")
    incoming_dir, outgoing_dir = tmp_path / "incoming", tmp_path / "outgoing"
    secret = incoming_dir / "secret"
    v1 = pki.issue("incoming-v1", dns=("meshd.bank.local",), ips=(), uris=(spiffe("meshd", "linkerd"),))
    install(v1, secret, "v1")
    payments = pki.issue("payments", uris=(spiffe("payments"),), ips=())
    web = pki.issue("web", uris=(spiffe("web"),), ips=())
    incoming_dir.mkdir(exist_ok=True)
    (incoming_dir / "routes.yaml").write_text(ROUTES.format(payments=spiffe("payments")))
    incoming_config = process_config(
        {
            "label": "incoming",
            "servers": [{"ip": "127.0.0.1", "port": 0, "tls": {
                "certPath": "secret/tls.crt", "keyPath": "secret/tls.key", "caPath": str(pki.ca_path),
                "requireClientCert": True,
            }}],
            "routes": "routes.yaml",
            "dtab": "",
            **({"protocol": "h2", "h2": {"acceptHttp1": True}, "client": {"protocol": "http"}} if hop == "h2" else {}),
        }
    )

    def client_tls(pair: Pair) -> dict[str, object]:
        return {"serverName": "meshd.bank.local", "caPath": str(pki.ca_path), "certPath": str(pair.cert), "keyPath": str(pair.key)}

    outgoing_config = process_config(
        {"clients": [
            {"prefix": "/#/fs/ledger", "tls": client_tls(payments), "protocol": hop},
            {"prefix": "/#/fs/ledger-as-web", "tls": client_tls(web), "protocol": hop},
        ]}
    )
    async with Upstream() as ledger, MeshdProcess(incoming_dir, incoming_config) as incoming, \
            MeshdProcess(outgoing_dir, outgoing_config) as outgoing:
        incoming.register("ledger", f"127.0.0.1 {ledger.port}")
        outgoing.register("ledger", f"127.0.0.1 {incoming.port}")
        outgoing.register("ledger-as-web", f"127.0.0.1 {incoming.port}")

        # payments' node reaches the ledger; the upstream learns who called, from the certificate
        await wait_until(lambda: _ok(send(outgoing.port, "ledger")), message="the ledger through two meshds")
        forged = [("l5d-client-id", spiffe("admin"))]
        assert await send(outgoing.port, "ledger", forged) == (200, None)
        assert ledger.received[-1].headers_named("l5d-client-id") == [spiffe("payments")]

        # web's identity is refused by the rule, and the ledger never sees the request
        before = ledger.requests
        status, err = await send(outgoing.port, "ledger", [("l5d-dtab", "/svc/ledger => /#/fs/ledger-as-web")])
        assert status == 403
        assert err is not None and "ledger-callers" in err and spiffe("web") in err
        assert ledger.requests == before
        m = await metrics(incoming.admin_port)
        assert m[("meshd_authz_denied_total", frozenset({("router", "incoming"), ("rule", "ledger-callers")}))] == 1

        # the expiry of the certificate in use is exported
        expiry_key = ("meshd_tls_cert_expiry_timestamp_seconds", frozenset({("path", str(incoming_dir / "secret/tls.crt"))}))
        assert m[expiry_key] == not_after(v1.cert.read_bytes())

        # rotation under load: a symlink swap to a new pair while requests flow; none fails
        results: list[tuple[int, str | None]] = []
        stop = asyncio.Event()

        async def load() -> None:
            while not stop.is_set():
                results.append(await send(outgoing.port, "ledger"))

        workers = [asyncio.create_task(load()) for _ in range(3)]
        await wait_until(lambda: len(results) >= 20, message="requests under way")
        v2 = pki.issue("incoming-v2", dns=("meshd.bank.local", "v2.bank.local"), ips=(), uris=(spiffe("meshd", "linkerd"),))
        install(v2, secret, "v2")
        await wait_until(
            lambda: _names_are(served_names(incoming.port, pki, payments), ["meshd.bank.local", "v2.bank.local"]),
            message="new handshakes to get the rotated certificate",
        )
        count = len(results)
        await wait_until(lambda: len(results) >= count + 20, message="requests after the rotation")
        stop.set()
        await asyncio.gather(*workers)
        assert results and all(r == (200, None) for r in results), [r for r in results if r != (200, None)][:5]

        # a mismatched pair (v3's certificate with v1's key) is refused; v2 keeps serving
        v3 = pki.issue("incoming-v3", dns=("meshd.bank.local", "v3.bank.local"), ips=())
        install(v3, secret, "v3", key_from=v1)

        async def refused() -> bool:
            m = await metrics(incoming.admin_port)
            path = str(incoming_dir / "secret/tls.crt")
            return m.get(("meshd_tls_cert_reloads_total", frozenset({("path", path), ("result", "error")})), 0) >= 1

        await wait_until(refused, message="the mismatched pair to be refused")
        assert await served_names(incoming.port, pki, payments) == ["meshd.bank.local", "v2.bank.local"]
        assert await send(outgoing.port, "ledger") == (200, None)
        assert "cannot be used" in incoming.log_text()


async def _ok(result: object) -> bool:
    assert asyncio.iscoroutine(result)
    try:
        return (await result) == (200, None)
    except (TimeoutError, OSError, ConnectionClosed):
        return False


async def _names_are(result: object, expected: list[str]) -> bool:
    assert asyncio.iscoroutine(result)
    return (await result) == expected
