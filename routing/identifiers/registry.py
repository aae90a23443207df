"""Identifier kinds -> config classes (meshd's config loader picks one by `kind:`)."""

from __future__ import annotations

from typing import Final

from routing.identifiers.base import IdentifierConfig
from routing.identifiers.grpc import GrpcIdentifierConfig
from routing.identifiers.header import HeaderIdentifierConfig
from routing.identifiers.method_and_host import MethodAndHostIdentifierConfig
from routing.identifiers.path import PathIdentifierConfig
from routing.identifiers.static import StaticIdentifierConfig

IDENTIFIERS: Final[dict[str, type[IdentifierConfig]]] = {
    "header": HeaderIdentifierConfig,
    "path": PathIdentifierConfig,
    "methodAndHost": MethodAndHostIdentifierConfig,
    "static": StaticIdentifierConfig,
    "grpc": GrpcIdentifierConfig,
}
