"""Workload identity: who the peer of a verified TLS connection is, read from its certificate.

The identity is the first SPIFFE URI SAN (`spiffe://<trust-domain>/ns/<namespace>/sa/<account>`),
else the first other URI SAN, else the first DNS SAN; a certificate with none of these (or no
verified certificate at all) gives "" (no identity). Read once per connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

#: the request header that carries the caller's identity to the upstream (docs/tls.md); meshd's
#: codec sets every `l5d-*` header a client sends apart and never forwards this one, so a caller
#: cannot forge it
L5D_CLIENT_ID: Final = b"l5d-client-id"


def identity_of(cert: Mapping[str, Any] | None) -> str:
    """The identity in a certificate as `ssl.SSLObject.getpeercert()` decodes it."""
    if not cert:
        return ""
    sans = cert.get("subjectAltName") or ()
    uris = [str(v) for k, v in sans if k == "URI"]
    for uri in uris:
        if uri.startswith("spiffe://"):
            return uri
    if uris:
        return uris[0]
    for kind, value in sans:
        if kind == "DNS":
            return str(value)
    return ""


def peer_identity(transport: asyncio.BaseTransport) -> str:
    """The identity of a TLS transport's verified peer ("" when it presented no certificate)."""
    cert = transport.get_extra_info("peercert")
    return identity_of(cert) if isinstance(cert, Mapping) else ""
