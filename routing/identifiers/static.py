"""Kind `static`: every request gets the same logical name, `<prefix><path>`.

`path: /accounts` names every request `/svc/accounts`; useful for a listener that serves
one service. The default `path: /` names every request `<prefix>` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from routing.identifiers.base import DEFAULT_PREFIX, Identified, RequestHead, read_prefix
from routing.path import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticIdentifierConfig:
    KIND: ClassVar[str] = "static"

    path: str = "/"
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        read_prefix(self.path, "path")
        read_prefix(self.prefix)

    def build(self) -> StaticIdentifier:
        return StaticIdentifier(read_prefix(self.prefix).concat(read_prefix(self.path, "path")))


class StaticIdentifier:
    def __init__(self, name: Path) -> None:
        self._identified = Identified(name)

    def identify(self, req: RequestHead) -> Identified:
        return self._identified

    def __repr__(self) -> str:
        return f"StaticIdentifier({self._identified.path.show()})"
