"""Certificates with the `cryptography` package: expiry, checks for `meshd check`, and a development CA.

`meshd tls ca` and `meshd tls cert` (meshd/cli.py) use `make_ca` and `make_cert` to create a
CA and per-node or per-service-account certificates for development and the demo (never for
production: the CA key sits in a plain file). Imported only when TLS is configured or asked for.
"""

from __future__ import annotations

import datetime
import ipaddress
import pathlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_UTC = datetime.UTC


def not_after(pem: bytes) -> float:
    """The first certificate's notAfter as a Unix timestamp (ValueError if there is none)."""
    certs = x509.load_pem_x509_certificates(pem)
    return certs[0].not_valid_after_utc.timestamp()


def check_files(cert: pathlib.Path | None, key: pathlib.Path | None, ca: pathlib.Path | None, now: float) -> list[tuple[str, str]]:
    """What is wrong with a set of TLS files, as (role, message) pairs: missing or unreadable
    files, no certificate in the file, a key that does not match the certificate, an expired
    certificate. An empty list means the files are usable."""
    problems: list[tuple[str, str]] = []
    data: dict[str, bytes] = {}
    for role, path in (("certPath", cert), ("keyPath", key), ("caPath", ca)):
        if path is None:
            continue
        try:
            data[role] = path.read_bytes()
        except FileNotFoundError:
            problems.append((role, f"{path}: no such file"))
        except OSError as exc:
            problems.append((role, f"{path}: cannot read: {exc.strerror or exc}"))
    for role in ("certPath", "caPath"):
        if role in data:
            try:
                expiry = not_after(data[role])
            except ValueError:
                problems.append((role, f"{cert if role == 'certPath' else ca}: no PEM certificate in the file"))
                del data[role]
                continue
            if expiry <= now:
                when = datetime.datetime.fromtimestamp(expiry, _UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
                problems.append((role, f"{cert if role == 'certPath' else ca}: the certificate expired at {when}"))
    if "certPath" in data and "keyPath" in data and cert is not None and key is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            why = "the key does not match the certificate" if "MISMATCH" in str(exc).upper() else f"cannot load the pair: {exc}"
            problems.append(("keyPath", f"{key}: {why} ({cert})"))
    return problems


@dataclass(frozen=True, slots=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_ca(name: str = "meshd development CA", *, days: int = 365) -> Issued:
    """A self-signed CA certificate and its key (EC P-256)."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(_UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def make_cert(
    ca: Issued,
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    uris: Sequence[str] = (),
    common_name: str | None = None,
    not_before: datetime.datetime | None = None,
    not_after_: datetime.datetime | None = None,
    days: int = 90,
    server: bool = True,
    client: bool = True,
    key_usage: bool = True,
) -> Issued:
    """A leaf certificate signed by `ca`, for a server, a client or both (mutual TLS: both).

    `key_usage=False` gives one whose key usage allows only CRL signing (a wrong key usage, which
    a TLS peer must refuse); `not_after_` in the past gives an expired one (tests use both).
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = _key()
    now = datetime.datetime.now(_UTC)
    start = not_before or now - datetime.timedelta(minutes=5)
    end = not_after_ or now + datetime.timedelta(days=days)
    cn = common_name or (list(dns) + list(uris) + list(ips) + ["meshd"])[0]
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    sans += [x509.UniformResourceIdentifier(u) for u in uris]
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(key_usage, False, False, False, key_usage, False, not key_usage, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_pair(issued: Issued, cert_path: pathlib.Path, key_path: pathlib.Path) -> None:
    """Write a certificate and its key (the key readable by its owner only)."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(issued.cert_pem)
    key_path.touch(mode=0o600, exist_ok=True)
    key_path.chmod(0o600)
    key_path.write_bytes(issued.key_pem)


def read_pair(cert_path: pathlib.Path, key_path: pathlib.Path) -> Issued:
    return Issued(cert_path.read_bytes(), key_path.read_bytes())
