"""`meshd tls` (a development CA and certificates) and `meshd check` on TLS files, as an operator
runs them: `python -m meshd` in a subprocess, its exit code and what it printed."""

from __future__ import annotations

import pathlib
import ssl
import subprocess

from meshd.tls.identity import identity_of
from tests.support.tls import Pki
from tests.system.test_cli import meshd

CONFIG = """\
namers:
  - {{kind: fs, rootDir: ./disco}}
routers:
  - label: incoming
    servers:
      - ip: 127.0.0.1
        port: 4141
        tls:
          certPath: {cert}
          keyPath: {key}
          caPath: {ca}
          requireClientCert: true
    dtab: /svc => /#/fs;
"""


def test_meshd_tls_makes_a_ca_and_certificates_that_verify_with_their_identity(tmp_path: pathlib.Path) -> None:
    pki = tmp_path / "pki"
    result = meshd("tls", "ca", "--dir", str(pki), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = meshd(
        "tls", "cert", "node-a", "--dir", str(pki), "--dns", "meshd.bank.local",
        "--spiffe", "spiffe://bank.local/ns/linkerd/sa/meshd", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (pki / "ca.key").stat().st_mode & 0o077 == 0 and (pki / "node-a.key").stat().st_mode & 0o077 == 0
    # the pair loads, and verifies against the CA for its name, with its SPIFFE identity
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki / "node-a.crt", pki / "node-a.key")
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(c_in, c_out, server_hostname="meshd.bank.local")
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (client, srv):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    assert identity_of(client.getpeercert()) == "spiffe://bank.local/ns/linkerd/sa/meshd"
    # without a name it refuses
    assert meshd("tls", "cert", "x", "--dir", str(pki), cwd=tmp_path).returncode == 2


def test_meshd_check_reports_missing_mismatched_and_expired_files_with_path_and_line(tmp_path: pathlib.Path) -> None:
    pki = Pki(tmp_path / "pki")
    good = pki.issue("good")
    other = pki.issue("other")
    config = tmp_path / "meshd.yaml"

    def check(cert: pathlib.Path, key: pathlib.Path, ca: pathlib.Path) -> subprocess.CompletedProcess[str]:
        config.write_text(CONFIG.format(cert=cert, key=key, ca=ca))
        return meshd("check", "-c", str(config), cwd=tmp_path)

    ok = check(good.cert, good.key, pki.ca_path)
    assert ok.returncode == 0, ok.stderr

    missing = check(tmp_path / "nope.crt", good.key, pki.ca_path)
    assert missing.returncode == 1
    assert f"routers[0].servers[0].tls.certPath: line 9: {tmp_path / 'nope.crt'}: no such file" in missing.stderr

    mismatched = check(good.cert, other.key, pki.ca_path)
    assert mismatched.returncode == 1
    assert "routers[0].servers[0].tls.keyPath: line 10:" in mismatched.stderr
    assert "the key does not match the certificate" in mismatched.stderr

    expired = pki.issue("expired", expired=True)
    result = check(expired.cert, expired.key, pki.ca_path)
    assert result.returncode == 1
    assert "routers[0].servers[0].tls.certPath: line 9:" in result.stderr and "the certificate expired at" in result.stderr

    unreadable = tmp_path / "unreadable.key"
    unreadable.write_bytes(good.key.read_bytes())
    unreadable.chmod(0)
    result = check(good.cert, unreadable, pki.ca_path)
    if result.returncode == 0:  # running as root: permissions do not stop reading
        return
    assert "routers[0].servers[0].tls.keyPath: line 10:" in result.stderr and "cannot read" in result.stderr


def test_a_config_that_requires_client_certificates_without_a_ca_is_refused_at_its_line(tmp_path: pathlib.Path) -> None:
    config = tmp_path / "meshd.yaml"
    config.write_text(
        "routers:\n  - label: incoming\n    servers:\n      - port: 4141\n        tls:\n"
        "          certPath: a.crt\n          keyPath: a.key\n          requireClientCert: true\n"
    )
    result = meshd("check", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 1
    assert "routers[0].servers[0].tls.requireClientCert" in result.stderr and "line 8" in result.stderr
    assert "needs caPath" in result.stderr
