"""meshd's TLS server as a real OpenSSL client sees it (`openssl s_client`): protocol versions,
ALPN, and renegotiation refused. openssl is a Debian package (`make system-deps` installs it);
without it these tests fail under CI and are skipped elsewhere."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
from collections.abc import Awaitable, Callable

import pytest

from tests.conftest import Mesh, base_config
from tests.support.tls import Pki, server_tls

MISSING = "install openssl: apt-get install openssl"
MakeMesh = Callable[..., Awaitable[Mesh]]


def openssl_binary() -> str:
    found = shutil.which("openssl")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return found


async def s_client(port: int, pki: Pki, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    """Run `openssl s_client` against meshd; its exit code and everything it printed."""
    process = await asyncio.create_subprocess_exec(
        openssl_binary(), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
        "-CAfile", str(pki.ca_path), "-verify_return_error", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(stdin), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


@pytest.fixture
async def mesh(make_mesh: MakeMesh, tmp_path: pathlib.Path) -> tuple[Mesh, Pki]:
    openssl_binary()
    pki = Pki(tmp_path / "pki")
    pair = pki.issue("meshd")
    config = base_config(servers=[{"ip": "127.0.0.1", "port": 0, "tls": server_tls(pki, pair)}])
    return await make_mesh(config), pki


@pytest.mark.parametrize(("flag", "version"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
async def test_tls12_and_tls13_are_accepted_with_alpn_http11(mesh: tuple[Mesh, Pki], flag: str, version: str) -> None:
    m, pki = mesh
    code, out = await s_client(m.port, pki, flag, "-alpn", "h2,http/1.1")
    assert code == 0, out
    assert f"Protocol  : {version}" in out or f"Protocol version: {version}" in out or f", {version}," in out, out
    assert "ALPN protocol: http/1.1" in out, out
    assert "Verify return code: 0 (ok)" in out, out


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
async def test_tls10_and_tls11_are_refused(mesh: tuple[Mesh, Pki], flag: str) -> None:
    m, pki = mesh
    code, out = await s_client(m.port, pki, flag, "-cipher", "DEFAULT:@SECLEVEL=0")
    assert code != 0, out
    assert "Cipher is (NONE)" in out or "no protocols available" in out or "alert protocol version" in out, out
    if "no protocols available" not in out:  # (the client refused itself: meshd never saw it)
        await _counted(m, "protocol_version")


async def test_a_client_offering_only_h2_gets_no_alpn(mesh: tuple[Mesh, Pki]) -> None:
    m, pki = mesh
    code, out = await s_client(m.port, pki, "-alpn", "h2")
    # meshd speaks HTTP/1.1 only, so it selects nothing (the client may go on or give up)
    assert "ALPN protocol: h2" not in out, out
    assert "No ALPN negotiated" in out or code != 0, out


async def test_renegotiation_is_refused(mesh: tuple[Mesh, Pki]) -> None:
    m, pki = mesh
    # `R` on a line of its own asks s_client to renegotiate (TLS 1.2: 1.3 has none)
    code, out = await s_client(m.port, pki, "-tls1_2", stdin=b"R\n")
    assert "RENEGOTIATING" in out, out
    assert code != 0 and "no renegotiation" in out.lower(), out


async def _counted(m: Mesh, reason: str) -> None:
    from tests.support.waiting import wait_until

    await wait_until(lambda: m.daemon.runtime.tls.failure_count(reason) >= 1, message=f"a {reason} failure counted")
