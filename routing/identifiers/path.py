"""Kind `path`: the logical name is `<prefix>` plus the first `segments` path segments.

`/true/love/waits.php` with segments 2 is `/svc/true/love`. With `consume`, those segments
are removed from the request-target, so the upstream sees `/waits.php` (the query string is
kept). Segments are used as they are written (no percent-decoding), as linkerd's
`io.l5d.path` does. A path with fewer segments, or an empty segment among them, cannot be
named.
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
class PathIdentifierConfig:
    KIND: ClassVar[str] = "path"

    segments: int = 1
    consume: bool = False
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if isinstance(self.segments, bool) or not isinstance(self.segments, int) or self.segments < 1:
            raise ValueError(f"segments must be a whole number of at least 1, got {self.segments!r}")
        read_prefix(self.prefix)

    def build(self) -> PathIdentifier:
        return PathIdentifier(self.segments, self.consume, read_prefix(self.prefix))


class PathIdentifier:
    def __init__(self, segments: int, consume: bool, prefix: Path, cache_size: int = 1024) -> None:
        self._segments = segments
        self._consume = consume
        self._prefix = prefix
        self._cache: LookupCache[str, Path] = LookupCache(cache_size)

    def identify(self, req: RequestHead) -> Identified:
        target = req.target
        if target.startswith("/"):
            base, rest = "", target
        else:
            parts = split_absolute(target)
            if parts is None:
                raise IdentificationError(f"cannot name a request for {target!r} by its path")
            base, rest = parts[0], parts[1] or "/"
        end = len(rest)
        for c in "?#":
            i = rest.find(c)
            if 0 <= i < end:
                end = i
        path, query = rest[:end], rest[end:]

        # Find where the first N segments end without splitting the whole path.
        pos = 1
        stop = 0
        for _ in range(self._segments):
            if pos > len(path):
                raise self._too_short(path)
            stop = path.find("/", pos)
            if stop < 0:
                stop = len(path)
            if stop == pos:
                raise self._too_short(path)
            pos = stop + 1
        name_part = path[:stop]

        name = self._cache.get(name_part)
        if name is None:
            name = self._cache.put(name_part, self._prefix.concat(Path(name_part[1:].split("/"))))
        if not self._consume:
            return Identified(name)
        return Identified(name, base + (path[stop:] or "/") + query)

    def _too_short(self, path: str) -> IdentificationError:
        return IdentificationError(
            f"request path {path or '/'} has fewer than {self._segments} non-empty segments"
        )

    def __repr__(self) -> str:
        return f"PathIdentifier(segments={self._segments}, consume={self._consume}, prefix={self._prefix.show()})"
