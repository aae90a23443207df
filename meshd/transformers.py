"""Transformers: rewrite a client's address set after discovery (linkerd's interpreter transformers).

A transformer takes the live address set of a bound name and returns another live address set.
Kinds (see docs/kubernetes.md): `daemonset` (send to the meshd on the destination's node) and
`localnode` (keep only addresses on this node). Configured per router as `transformers:`, applied
in order.
"""

from __future__ import annotations

from typing import ClassVar, Final, Protocol

from meshd.discovery.addr import Addr
from meshd.discovery.base import Namer
from meshd.observable import Observable
from meshd.runtime import Runtime
from routing.path import Path


class Transformer(Protocol):
    def transform(self, id: Path, addr: Observable[Addr]) -> Observable[Addr]: ...


class TransformerConfig(Protocol):
    KIND: ClassVar[str]

    def build(self, runtime: Runtime, namers: dict[Path, Namer]) -> Transformer: ...


TRANSFORMERS: Final[dict[str, type]] = {}
