"""Dtabs: ordered delegation rules `prefix => tree`, and the lookup of a path in them.

How lookup works (Finagle `DtabBase.lookup`): every dentry whose prefix matches the path is
a candidate; a prefix matches when it has no more elements than the path and each element
is `*` or equal to the path's label at that position (segment-wise: `/svc` never matches
`/svcx`). A candidate's tree has the unmatched rest of the path appended to every leaf. No
candidate gives `~` (Neg); one gives its tree; several give `Alt(last, ..., first)`, so a
later dentry is tried first and earlier ones are its fallbacks.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from routing.nametree import NEG, Alt, Leaf, NameTree, map_leaves, show
from routing.path import Path, escape_label


@dataclass(frozen=True, slots=True)
class AnyElem:
    """The `*` prefix element: matches any one label."""

    def __repr__(self) -> str:
        return "ANY"


ANY: Final = AnyElem()

PrefixElem = str | AnyElem


@dataclass(frozen=True, slots=True)
class Prefix:
    """The left side of a dentry: labels and `*` wildcards (`/http/1.1/*`)."""

    elems: tuple[PrefixElem, ...] = ()

    @classmethod
    def read(cls, text: str) -> Prefix:
        from routing.parser import parse_prefix

        return parse_prefix(text)

    @classmethod
    def of_path(cls, path: Path) -> Prefix:
        return cls(tuple(path))

    def __len__(self) -> int:
        return len(self.elems)

    def matches(self, path: Path) -> bool:
        elems = self.elems
        if len(elems) > len(path):
            return False
        for elem, label in zip(elems, path, strict=False):
            if elem != label and not isinstance(elem, AnyElem):
                return False
        return True

    def show(self) -> str:
        if not self.elems:
            return "/"
        return "".join("/*" if isinstance(e, AnyElem) else "/" + escape_label(e) for e in self.elems)

    def __str__(self) -> str:
        return self.show()


@dataclass(frozen=True, slots=True)
class Dentry:
    """One delegation rule: paths starting with `prefix` are rewritten to `dst`."""

    prefix: Prefix
    dst: NameTree[Path]

    @classmethod
    def read(cls, text: str) -> Dentry:
        from routing.parser import parse_dentry

        return parse_dentry(text)

    def show(self) -> str:
        """Finagle's form, `prefix=>tree`."""
        return f"{self.prefix.show()}=>{show(self.dst)}"

    def rewrite(self, path: Path) -> NameTree[Path]:
        """`dst` with the part of `path` after the prefix appended to every leaf."""
        residual = path.drop(len(self.prefix))
        if not residual:
            return self.dst
        if isinstance(self.dst, Leaf):  # the common case, without the generic walk
            return Leaf(self.dst.value.concat(residual))
        return map_leaves(self.dst, lambda p: p.concat(residual))

    def __str__(self) -> str:
        return self.show()


@dataclass(frozen=True, slots=True)
class DentryMatch:
    """A dentry that matched a path during lookup: its position, itself and its rewrite."""

    index: int
    dentry: Dentry
    rewrite: NameTree[Path]


@dataclass(frozen=True, slots=True)
class Dtab:
    """An ordered delegation table. Later dentries take precedence over earlier ones."""

    dentries: tuple[Dentry, ...] = ()

    @classmethod
    def read(cls, text: str) -> Dtab:
        """Parse dtab text (`/a => /b; /c => /d`); raises `parser.DtabSyntaxError`."""
        from routing.parser import parse_dtab

        return parse_dtab(text)

    def show(self) -> str:
        """Finagle's form: dentries joined by `;` (`/a=>/b;/c=>/d`)."""
        return ";".join(d.show() for d in self.dentries)

    def __add__(self, other: Dtab) -> Dtab:
        if not other.dentries:
            return self
        if not self.dentries:
            return other
        return Dtab(self.dentries + other.dentries)

    def __len__(self) -> int:
        return len(self.dentries)

    def __iter__(self) -> Iterator[Dentry]:
        return iter(self.dentries)

    def __bool__(self) -> bool:
        return bool(self.dentries)

    def matches(self, path: Path) -> tuple[DentryMatch, ...]:
        """The dentries matching `path`, last first (the order lookup tries them)."""
        found: list[DentryMatch] = []
        dentries = self.dentries
        for i in range(len(dentries) - 1, -1, -1):
            d = dentries[i]
            if d.prefix.matches(path):
                found.append(DentryMatch(i, d, d.rewrite(path)))
        return tuple(found)

    def lookup(self, path: Path) -> NameTree[Path]:
        """Rewrite `path` through this dtab: Neg, one tree, or an Alt of them, last first."""
        found = self.matches(path)
        if not found:
            return NEG
        if len(found) == 1:
            return found[0].rewrite
        return Alt(tuple(m.rewrite for m in found))

    def __str__(self) -> str:
        return self.show()


EMPTY_DTAB: Final = Dtab()
EMPTY_PREFIX: Final = Prefix()

__all__ = [
    "ANY",
    "EMPTY_DTAB",
    "EMPTY_PREFIX",
    "AnyElem",
    "Dentry",
    "DentryMatch",
    "Dtab",
    "Prefix",
    "PrefixElem",
]
