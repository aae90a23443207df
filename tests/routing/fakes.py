"""Test doubles for routing tests: a dict-backed namer (the real fs/k8s namers live in meshd/)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from routing.namer import BoundName
from routing.nametree import NEG, Leaf, NameTree
from routing.path import Path


class FakeNamer:
    """Knows a fixed set of names under its prefix.

    `names` are paths relative to the prefix (`prod/http/users`); asked for a path that starts
    with one of them, it answers that bound name with the rest as residual. `pending` names
    answer None; `answers` give a whole tree for an exact path. Everything else is NEG.
    Every path asked is recorded in `asked`.
    """

    def __init__(
        self,
        prefix: str,
        names: Iterable[str] = (),
        *,
        pending: Iterable[str] = (),
        answers: Mapping[str, NameTree[BoundName]] | None = None,
    ) -> None:
        self.prefix = Path.read(prefix)
        self._names = sorted((Path.read("/" + n) for n in names), key=len, reverse=True)
        self._pending = [Path.read("/" + n) for n in pending]
        self._answers = {Path.read(k): v for k, v in (answers or {}).items()}
        self.asked: list[Path] = []

    def lookup(self, path: Path) -> NameTree[BoundName] | None:
        self.asked.append(path)
        if path in self._answers:
            return self._answers[path]
        for p in self._pending:
            if path.starts_with(p):
                return None
        for name in self._names:
            if path.starts_with(name):
                return Leaf(BoundName(self.prefix.concat(name), path.drop(len(name))))
        return NEG


def k8s_namer() -> FakeNamer:
    """The mock k8s namer of the reference's test vectors E1-E17."""
    return FakeNamer(
        "/#/io.l5d.k8s",
        [
            "prod/http/users",
            "prod/http/users-v2",
            "prod/http/books",  # exists with no endpoints: still a bound name, so no fallback
            "staging/http/books",
            "staging/http/search",
        ],
    )


def namers(*fakes: FakeNamer) -> dict[Path, FakeNamer]:
    return {f.prefix: f for f in fakes}
