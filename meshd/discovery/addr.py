"""Addr: what a namer yields for a bound name, as a value that changes over time.

`Pending` (not known yet), `Bound(addresses)` (the live set, possibly empty), `Neg` (no such
name) or `Failed(reason)` (the namer cannot say; callers keep serving the last Bound they saw).
An `Address` is one replica: host, port and metadata (weight, node name, zone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final


@dataclass(frozen=True, slots=True)
class Address:
    """One replica. `key` (host, port) identifies it across updates; the rest is metadata."""

    host: str
    port: int
    weight: float = 1.0
    node_name: str | None = None
    zone: str | None = None
    meta: tuple[tuple[str, str], ...] = field(default=())

    @property
    def key(self) -> tuple[str, int]:
        return (self.host, self.port)

    def show(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Pending:
    """The namer has not answered yet."""


@dataclass(frozen=True, slots=True)
class Bound:
    """The namer knows the name; `addresses` is its current (possibly empty) set of replicas."""

    addresses: frozenset[Address]


@dataclass(frozen=True, slots=True)
class Neg:
    """The namer knows the name does not exist."""


@dataclass(frozen=True, slots=True)
class Failed:
    """The namer could not resolve the name (API error, unreadable file)."""

    reason: str


Addr = Pending | Bound | Neg | Failed

PENDING: Final = Pending()
NEG: Final = Neg()
