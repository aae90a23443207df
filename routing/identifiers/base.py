"""The Identifier protocol, the minimal request head it reads, and helpers they share.

An identifier gives a request its logical name (`/svc/users`), which the binder then
delegates through the dtab. Identification runs for every request, so identifiers avoid
regexes and keep small bounded caches from the few distinct inputs they see (host names,
path prefixes) to the `Path` objects they build.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Final, Generic, Protocol, TypeVar

from routing.path import Path, PathError

K = TypeVar("K")
V = TypeVar("V")

DEFAULT_CACHE_SIZE: Final = 1024
DEFAULT_PREFIX: Final = "/svc"


class RequestHead(Protocol):
    """What an identifier may read from a request.

    `target` is the raw request-target: origin-form `/x?y`, or absolute-form `http://host/x`
    (RFC 9112 §3.2.2). `header(name)` takes a lower-case name and returns the field value,
    or None when absent. An object that also has a `version` attribute (`"1.0"`, `"1.1"` or
    `"HTTP/1.1"`) lets `methodAndHost` name the HTTP version; without it "1.1" is assumed.
    """

    @property
    def method(self) -> str: ...

    @property
    def target(self) -> str: ...

    def header(self, name: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Identified:
    """A request's logical name, and its new request-target (None keeps the original)."""

    path: Path
    target: str | None = None


class IdentificationError(Exception):
    """The request cannot be named (meshd answers 400 with `l5d-err: <message>`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Identifier(Protocol):
    def identify(self, req: RequestHead) -> Identified:
        """Name the request, or raise IdentificationError."""
        ...


class IdentifierConfig(Protocol):
    """What every identifier config class offers (see `registry.IDENTIFIERS`)."""

    KIND: ClassVar[str]

    @property
    def prefix(self) -> str: ...

    def build(self) -> Identifier: ...


class LookupCache(Generic[K, V]):
    """A dict that forgets everything when it reaches `max_entries`.

    Identifiers see few distinct keys (hosts, path prefixes); clearing on overflow keeps the
    memory bounded when a client sends many distinct ones, at the cost of rebuilding the
    entries that are still in use, which is cheap.
    """

    __slots__ = ("_data", "_max")

    def __init__(self, max_entries: int = DEFAULT_CACHE_SIZE) -> None:
        if max_entries < 1:
            raise ValueError(f"cache size must be at least 1, got {max_entries}")
        self._data: dict[K, V] = {}
        self._max = max_entries

    def get(self, key: K) -> V | None:
        return self._data.get(key)

    def put(self, key: K, value: V) -> V:
        if len(self._data) >= self._max:
            self._data.clear()
        self._data[key] = value
        return value

    def __len__(self) -> int:
        return len(self._data)


def read_prefix(text: str, field: str = "prefix") -> Path:
    """A config's name prefix, or ValueError with a plain message."""
    try:
        return Path.read(text)
    except PathError as exc:
        raise ValueError(f"{field} must be a path like /svc: {exc}") from None


def split_absolute(target: str) -> tuple[str, str] | None:
    """For an absolute-form target `http://host:80/x?y`, ("http://host:80", "/x?y").

    The second part is "" when the target has no path. None for any other form.
    """
    if not target or target[0] == "/":  # origin-form, the usual case: no search needed
        return None
    colon = target.find("://")
    if colon <= 0:
        return None
    scheme = target[:colon]
    if not scheme.isascii() or not scheme.isalpha():
        return None
    start = colon + 3
    end = len(target)
    for c in "/?#":
        i = target.find(c, start)
        if 0 <= i < end:
            end = i
    return target[:end], target[end:]


def authority_of(target: str) -> str | None:
    """The authority of an absolute-form target (userinfo removed), else None."""
    parts = split_absolute(target)
    if parts is None:
        return None
    authority = parts[0][parts[0].index("://") + 3 :]
    at = authority.rfind("@")
    return authority[at + 1 :] if at >= 0 else authority


def host_label(value: str) -> str:
    """A Host value as a name label: lower-cased, port removed (`Users:8080` -> `users`).

    An IPv6 literal keeps its brackets (`[::1]:80` -> `[::1]`). May return "".
    """
    v = value.strip()
    if v.startswith("["):
        end = v.find("]")
        host = v[: end + 1] if end > 0 else v
    else:
        colon = v.find(":")
        host = v if colon < 0 else v[:colon]
    return host.lower()


def request_host(req: RequestHead) -> str | None:
    """The host a request is for: an absolute-form target's authority wins over the Host
    header (RFC 9112 §3.2.2)."""
    authority = authority_of(req.target)
    if authority is not None:
        return authority
    return req.header("host")
