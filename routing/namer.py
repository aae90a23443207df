"""Bound names, the Namer protocol that binding asks, and the built-in system namer (`/$/`).

A namer turns a concrete path into bound names. Binding asks a configured namer (`/#/fs`,
`/#/k8s`, ...) about the part of the path after its prefix: for `/#/fs/accounts/x` the fs
namer gets `/accounts/x` and answers `Leaf(BoundName(id=/#/fs/accounts, residual=/x))`, or
`NEG` when it does not know the name, or `None` when it does not know yet (pending).

The system namer serves `/$/...` without configuration (Finagle `Namer.global`):
- `/$/inet/<host>/<port>[/rest]`: id `/$/inet/<host>/<port>`, residual `/rest`;
  `/$/inet/<port>[/rest]` (a port alone) means the local host, id `/$/inet/<port>`. Finagle
  tries "host then port" first, so `/$/inet/80/8080` is host "80", port 8080.
  `/$/fixedinet/...` is the same with its own id (linkerd: resolved once, never refreshed).
- `/$/io.buoyant.rinet/<port>/<host>[/rest]` (also `/$/rinet/...`): port before host; the id
  is `/$/inet/<host>/<port>`. (linkerd drops the rest; meshd keeps it as the residual.)
- `/$/nil[/...]`: `EMPTY` (Finagle: "force empty resolutions"), `/$/fail[/...]`: `FAIL`.
- Anything else under `/$/` is an error (Finagle fails the lookup: no such namer class), as
  is an inet path without a valid port; `SystemNamerError` says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from routing.nametree import EMPTY, FAIL, Leaf, NameTree
from routing.path import EMPTY_PATH, Path

SYSTEM_PREFIX: Final = Path.of("$")
LOCALHOST: Final = "127.0.0.1"
_DIGITS: Final = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class BoundName:
    """A concrete name a namer knows: `id` names the client (its replica set), `residual` is
    the rest of the path, which meshd passes on as `l5d-dst-residual`."""

    id: Path
    residual: Path = EMPTY_PATH

    def show(self) -> str:
        """The id, as Finagle shows a bound name (the residual is not part of its identity)."""
        return self.id.show()

    def describe(self) -> str:
        """The id, and the residual when there is one: `/#/fs/a (residual /x)`."""
        if not self.residual:
            return self.id.show()
        return f"{self.id.show()} (residual {self.residual.show()})"


class Namer(Protocol):
    """What binding needs from a namer: a synchronous, non-blocking `lookup`."""

    def lookup(self, path: Path) -> NameTree[BoundName] | None:
        """Answer for `path` (the part after the namer's prefix): a tree of bound names, `NEG`
        when the name does not exist, or `None` while the answer is not known yet."""
        ...


class SystemNamerError(ValueError):
    """A `/$/` path that no system namer serves, or an inet path that is malformed."""


class SystemNamer:
    """The built-in namer for `/$/...` paths; `lookup` gets the path after `/$`."""

    prefix: Final = SYSTEM_PREFIX

    def lookup(self, path: Path) -> NameTree[BoundName]:
        if not path:
            raise SystemNamerError("/$ names no system namer (known: inet, fixedinet, rinet, nil, fail)")
        kind = path[0]
        if kind in ("inet", "fixedinet"):
            return Leaf(_inet(kind, path.drop(1)))
        if kind in ("io.buoyant.rinet", "rinet"):
            rest = path.drop(1)
            if len(rest) < 2:
                raise SystemNamerError(f"/$/{kind} needs /<port>/<host>, got {path.drop(1).show()}")
            port, host = rest[0], rest[1]
            _port_number(port, f"/$/{kind}")
            return Leaf(BoundName(Path.of("$", "inet", host, port), rest.drop(2)))
        if kind == "nil":
            return EMPTY
        if kind == "fail":
            return FAIL
        raise SystemNamerError(f"no system namer {kind!r} (known: inet, fixedinet, rinet, nil, fail)")


SYSTEM_NAMER: Final = SystemNamer()


def inet_address(id: Path) -> tuple[str, int] | None:
    """The (host, port) an inet id (`/$/inet/<host>/<port>` or `/$/inet/<port>`) names.

    None when `id` is not an inet id. A port alone means `LOCALHOST`. meshd's address
    resolution for `/$/inet` ids uses this.
    """
    if len(id) < 3 or id[0] != "$" or id[1] not in ("inet", "fixedinet"):
        return None
    try:
        bound = _inet(id[1], id.drop(2))
    except SystemNamerError:
        return None
    if bound.residual:
        return None
    if len(id) == 3:
        return LOCALHOST, int(id[2])
    return id[2], int(id[3])


def _inet(kind: str, rest: Path) -> BoundName:
    """Finagle's InetPath: `<host>/<port>[/rest]` first, then `<port>[/rest]` (local host)."""
    if len(rest) >= 2 and _is_port(rest[1]):
        return BoundName(Path.of("$", kind, rest[0], rest[1]), rest.drop(2))
    if len(rest) >= 1 and _is_port(rest[0]):
        return BoundName(Path.of("$", kind, rest[0]), rest.drop(1))
    raise SystemNamerError(f"/$/{kind} needs /<host>/<port> or /<port>, got {rest.show()}")


def _is_port(label: str) -> bool:
    return 0 < len(label) <= 5 and all(c in _DIGITS for c in label) and int(label) <= 65535


def _port_number(label: str, where: str) -> int:
    if not _is_port(label):
        raise SystemNamerError(f"{where}: {label!r} is not a port number")
    return int(label)
