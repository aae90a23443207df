"""The `dns` namer's config (`kind: dns`), apart from the namer (meshd/discovery/dns.py) so that
loading a config does not load the namer: a process that does not configure a dns namer never
imports it (docs/benchmarks-analysis.md, "Where the memory goes")."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from routing.path import Path, PathError

if TYPE_CHECKING:
    from meshd.discovery.dns import DnsNamer
    from meshd.runtime import Runtime


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsNamerConfig:
    """`kind: dns`. Empty `nameservers` means the system resolver (/etc/resolv.conf)."""

    KIND: ClassVar[str] = "dns"

    prefix: str = "/#/dns"
    nameservers: tuple[str, ...] = ()
    min_ttl_secs: float = 5.0
    max_ttl_secs: float = 300.0
    timeout_ms: int = 2000
    idle_ttl_secs: float = 600.0

    def __post_init__(self) -> None:
        try:
            Path.read(self.prefix)
        except PathError as exc:
            raise ValueError(f"prefix must be a path like /#/dns, got {self.prefix!r}") from exc
        for server in self.nameservers:
            parse_nameserver(server)
        if not self.min_ttl_secs > 0:
            raise ValueError(f"minTtlSecs must be positive, got {self.min_ttl_secs}")
        if self.max_ttl_secs < self.min_ttl_secs:
            raise ValueError(
                f"maxTtlSecs must be at least minTtlSecs ({self.min_ttl_secs}), got {self.max_ttl_secs}"
            )
        if self.timeout_ms <= 0:
            raise ValueError(f"timeoutMs must be positive, got {self.timeout_ms}")
        if self.idle_ttl_secs < 0:
            raise ValueError(f"idleTtlSecs must not be negative, got {self.idle_ttl_secs}")

    def build(self, runtime: Runtime) -> DnsNamer:
        from meshd.discovery.dns import DnsNamer, DnspythonClient  # the namer loads only when configured

        client = DnspythonClient(
            tuple(parse_nameserver(s) for s in self.nameservers), timeout_secs=self.timeout_ms / 1000
        )
        return DnsNamer(
            self,
            client,
            clock=runtime.clock,
            rng=runtime.rng,
            registry=runtime.registry,
            log=runtime.log.getChild("dns"),
        )


def parse_nameserver(text: str) -> tuple[str, int]:
    """`10.0.0.1:53`, `[::1]:5353` or a bare IP (port 53) -> (ip, port); ValueError otherwise."""
    host, port_text = text, "53"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"nameserver must be host:port, got {text!r}")
        port_text = rest[1:] or "53"
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver must be an IP address with an optional port, got {text!r}") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"nameserver port must be 1-65535, got {text!r}")
    return host, int(port_text)
