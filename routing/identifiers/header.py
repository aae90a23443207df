"""Kind `header`: the logical name is `<prefix>/<value of a header>` (default Host).

For Host, the value is lower-cased and its port removed (`Users:8080` -> `/svc/users`), and
an absolute-form request-target's authority is used instead of the Host header, as RFC 9112
§3.2.2 requires. Other headers are lower-cased and used as one label. linkerd calls this
kind `io.l5d.header.token`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final

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

_TOKEN_CHARS: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderIdentifierConfig:
    KIND: ClassVar[str] = "header"

    header: str = "host"
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.header or any(c not in _TOKEN_CHARS for c in self.header.lower()):
            raise ValueError(f"header must be a header field name, got {self.header!r}")
        read_prefix(self.prefix)

    def build(self) -> HeaderIdentifier:
        return HeaderIdentifier(self.header, read_prefix(self.prefix))


class HeaderIdentifier:
    def __init__(self, header: str, prefix: Path, cache_size: int = 1024) -> None:
        self._header = header.lower()
        self._is_host = self._header == "host"
        self._prefix = prefix
        self._cache: LookupCache[str, Identified] = LookupCache(cache_size)

    @property
    def identifies_by_host(self) -> bool:
        """True when the answer depends on the request's host alone (see `request_host`)."""
        return self._is_host

    def identify(self, req: RequestHead) -> Identified:
        value = request_host(req) if self._is_host else req.header(self._header)
        if value is None:
            raise IdentificationError(f"{self._header} header is absent")
        found = self._cache.get(value)
        if found is not None:
            return found
        label = host_label(value) if self._is_host else value.strip().lower()
        if not label:
            raise IdentificationError(f"{self._header} header is empty")
        return self._cache.put(value, Identified(self._prefix.concat(Path.of(label))))

    def __repr__(self) -> str:
        return f"HeaderIdentifier(header={self._header!r}, prefix={self._prefix.show()})"
