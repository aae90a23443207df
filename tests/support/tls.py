"""Throw-away certificates for TLS tests, made with meshd's own `cryptography` helpers.

`Pki(directory)` makes a CA; `issue(name, ...)` writes `<name>.crt` and `<name>.key` signed by
it (or by `other` CA), with the SANs, validity and key usage a test asks for. Contexts for test
clients and upstreams come from the same files, so each side of a test trusts what it should.
"""

from __future__ import annotations

import datetime
import pathlib
import ssl
from dataclasses import dataclass

from meshd.tls.certs import Issued, make_ca, make_cert, write_pair

TRUST_DOMAIN = "bank.local"


def spiffe(account: str, namespace: str = "bank") -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"


@dataclass(frozen=True, slots=True)
class Pair:
    cert: pathlib.Path
    key: pathlib.Path


class Pki:
    """A CA in `directory` (ca.crt, ca.key) and the certificates issued from it."""

    def __init__(self, directory: pathlib.Path, name: str = "test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca: Issued = make_ca(name, days=2)
        self.ca_path = directory / "ca.crt"
        write_pair(self.ca, self.ca_path, directory / "ca.key")

    def issue(
        self,
        name: str,
        *,
        dns: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        uris: tuple[str, ...] = (),
        expired: bool = False,
        key_usage: bool = True,
        server: bool = True,
        client: bool = True,
    ) -> Pair:
        now = datetime.datetime.now(datetime.UTC)
        issued = make_cert(
            self.ca,
            dns=dns,
            ips=ips,
            uris=uris,
            not_before=now - datetime.timedelta(days=3) if expired else None,
            not_after_=now - datetime.timedelta(days=1) if expired else None,
            days=2,
            key_usage=key_usage,
            server=server,
            client=client,
        )
        pair = Pair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        write_pair(issued, pair.cert, pair.key)
        return pair

    def client_context(self, pair: Pair | None = None, *, check_hostname: bool = True) -> ssl.SSLContext:
        """A test client that trusts this CA (and presents `pair` when given)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        ctx.check_hostname = check_hostname
        if pair is not None:
            ctx.load_cert_chain(pair.cert, pair.key)
        return ctx

    def server_context(self, pair: Pair, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """A test upstream's context serving `pair` (verifying clients against this CA if asked)."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(pair.cert, pair.key)
        if require_client_cert:
            ctx.load_verify_locations(cafile=str(self.ca_path))
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def server_tls(pki: Pki, pair: Pair, *, require_client_cert: bool = False, **extra: object) -> dict[str, object]:
    """A server's `tls` config section for these files."""
    section: dict[str, object] = {"certPath": str(pair.cert), "keyPath": str(pair.key)}
    if require_client_cert:
        section["caPath"] = str(pki.ca_path)
        section["requireClientCert"] = True
    section.update(extra)
    return section
