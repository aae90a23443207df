"""Kind `methodAndHost`: the logical name is `<prefix>/<version>/<METHOD>/<host>`.

`GET http://Users/x` over HTTP/1.1 is `/svc/1.1/GET/users` (linkerd's `io.l5d.methodAndHost`):
the host comes from an absolute-form target's authority, else from Host; it is lower-cased
and its port removed, as in kind `header`. An HTTP/1.0 request without Host is
`/svc/1.0/GET`; an HTTP/1.1 request without Host cannot be named.
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
    host_label,
    read_prefix,
    request_host,
)
from routing.path import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodAndHostIdentifierConfig:
    KIND: ClassVar[str] = "methodAndHost"

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        read_prefix(self.prefix)

    def build(self) -> MethodAndHostIdentifier:
        return MethodAndHostIdentifier(read_prefix(self.prefix))


class MethodAndHostIdentifier:
    def __init__(self, prefix: Path, cache_size: int = 1024) -> None:
        self._prefix = prefix
        self._cache: LookupCache[tuple[str, str, str | None], Identified] = LookupCache(cache_size)

    def identify(self, req: RequestHead) -> Identified:
        version = _version(req)
        host = request_host(req)
        key = (version, req.method, host)
        found = self._cache.get(key)
        if found is not None:
            return found
        label = host_label(host) if host is not None else ""
        labels: tuple[str, ...]
        if label:
            labels = (version, req.method, label)
        elif version == "1.0":
            labels = (version, req.method)
        else:
            raise IdentificationError("Host header is absent or empty; HTTP/1.1 requests must have one")
        return self._cache.put(key, Identified(self._prefix.concat(Path(labels))))

    def __repr__(self) -> str:
        return f"MethodAndHostIdentifier(prefix={self._prefix.show()})"


def _version(req: RequestHead) -> str:
    value = getattr(req, "version", None)
    if not isinstance(value, str) or not value:
        return "1.1"
    return value[5:] if value.startswith("HTTP/") else value
