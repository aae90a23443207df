"""Kind `grpc`: a gRPC call is named after its service, `/pkg.Service/Method` -> `/svc/pkg.Service`.

A gRPC request's path is always `/<service>/<method>` (PROTOCOL-HTTP2.md: `:path` is
`"/" Service-Name "/" {method name}`, the service name fully qualified with its package). With
`segments: 1` (the default) the logical name is `<prefix>/<service>`, so every method of a service
goes to the same place and the dtab routes services (`/svc/bank.Ledger => /#/io.l5d.k8s/...`);
with `segments: 2` it is `<prefix>/<service>/<method>`, for a dtab that routes single methods.
This is linkerd 1's `io.l5d.header.path` with `segments: 1` on the h2 router, limited to gRPC's
path shape: a path that is not exactly two non-empty segments (or that carries a query) names no
gRPC method and cannot be identified (meshd answers it as a gRPC UNIMPLEMENTED error). The target
is never rewritten: the upstream needs the whole method path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from routing.identifiers.base import (
    DEFAULT_PREFIX,
    IdentificationError,
    Identified,
    LookupCache,
    RequestHead,
    read_prefix,
    split_absolute,
)
from routing.path import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class GrpcIdentifierConfig:
    KIND: ClassVar[str] = "grpc"

    segments: int = 1
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if self.segments not in (1, 2) or isinstance(self.segments, bool):
            raise ValueError(
                f"segments must be 1 (name by service) or 2 (by service and method), got {self.segments!r}"
            )
        read_prefix(self.prefix)

    def build(self) -> GrpcIdentifier:
        return GrpcIdentifier(self.segments, read_prefix(self.prefix))


class GrpcIdentifier:
    def __init__(self, segments: int, prefix: Path, cache_size: int = 1024) -> None:
        self._segments = segments
        self._prefix = prefix
        self._cache: LookupCache[str, Identified] = LookupCache(cache_size)

    def identify(self, req: RequestHead) -> Identified:
        target = req.target
        found = self._cache.get(target)
        if found is not None:
            return found
        path = target
        if not path.startswith("/"):
            parts = split_absolute(target)
            path = parts[1] if parts is not None else ""
        service, slash, method = path[1:].partition("/")
        if (
            not path.startswith("/")
            or not service
            or not slash
            or not method
            or "/" in method
            or "?" in path
            or "#" in path
        ):
            shown = path or target
            raise IdentificationError(f"{shown!r} is not a gRPC method path (/package.Service/Method)")
        labels = (service,) if self._segments == 1 else (service, method)
        return self._cache.put(target, Identified(self._prefix.concat(Path(labels))))

    def __repr__(self) -> str:
        return f"GrpcIdentifier(segments={self._segments}, prefix={self._prefix.show()})"
