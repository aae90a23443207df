"""TlsStats: plain counters of handshakes, failures, reloads and certificate expiry (one per daemon).

Written per handshake or per reload, never per request; `/metrics` renders them at scrape time
(meshd/admin/metrics.py): `meshd_tls_handshakes_total`, `meshd_tls_handshake_failures_total`,
`meshd_tls_cert_reloads_total` and `meshd_tls_cert_expiry_timestamp_seconds`.
"""

from __future__ import annotations

from collections import Counter

#: (router label, client label or "" for a server, reason)
FailureKey = tuple[str, str, str]
#: (router label, client label or "", "true"/"false" for resumed)
HandshakeKey = tuple[str, str, str]


class TlsStats:
    __slots__ = ("failures", "handshakes", "reloads", "expiry")

    def __init__(self) -> None:
        self.failures: Counter[FailureKey] = Counter()
        self.handshakes: Counter[HandshakeKey] = Counter()
        #: (path, "success" | "error") -> count
        self.reloads: Counter[tuple[str, str]] = Counter()
        #: certificate path -> its notAfter as a Unix timestamp (the certificate in use)
        self.expiry: dict[str, float] = {}

    def failure_count(self, reason: str, router: str | None = None, client: str | None = None) -> int:
        """Failures with `reason`, summed over the routers and clients given (None: all)."""
        return sum(
            n
            for (r, c, why), n in self.failures.items()
            if why == reason and (router is None or r == router) and (client is None or c == client)
        )
