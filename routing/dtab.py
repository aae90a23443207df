"""Dtabs: ordered delegation rules `prefix => tree`, and the lookup of a path in them.

How lookup works (Finagle `DtabBase.lookup`): every dentry whose prefix matches the path is
a candidate; a prefix matches when it has no more elements than the path and each element
is `*` or equal to the path's label at that position (segment-wise: `/svc` never matches
`/svcx`). A candidate's tree has the unmatched rest of the path appended to every leaf. No
candidate gives `~` (Neg); one gives its tree; several give `Alt(last, ..., first)`, so a
later dentry is tried first and earlier ones are its fallbacks.

Lookup does not compare the path with every dentry: a dtab indexes its prefixes once (on the
first lookup), the ones without `*` by their labels and the others in a list. A lookup of a
path of n labels probes the index n + 1 times (one per prefix of the path) and compares only
the `*` prefixes, so a routing file with hundreds of `/svc/<name>` rules costs a few probes
per lookup, not hundreds of comparisons. `matches_with_work` also says how much the lookup
cost (probes, comparisons and the size of the rewritten trees), which binding counts against
its work limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from routing.nametree import NEG, Alt, Leaf, NameTree, Union, map_leaves, show
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
class _Index:
    """Where a dtab's dentries are: wildcard-free prefixes by their labels, the rest listed.

    `exact` maps a prefix's labels to the indexes of the dentries with that prefix, and
    `wild` lists the indexes of the prefixes with a `*` (both in ascending order). `longest`
    is the length of the longest wildcard-free prefix (the probes stop there), and `sizes`
    is the node count of each dentry's tree (what a rewrite of it costs).
    """

    exact: dict[tuple[str, ...], tuple[int, ...]]
    wild: tuple[int, ...]
    longest: int
    sizes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Dtab:
    """An ordered delegation table. Later dentries take precedence over earlier ones."""

    dentries: tuple[Dentry, ...] = ()
    _index: list[_Index] = field(default_factory=list, init=False, repr=False, compare=False, hash=False)

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
        return self.matches_with_work(path)[0]

    def matches_with_work(self, path: Path) -> tuple[tuple[DentryMatch, ...], int]:
        """`matches(path)`, and the work it took: one per label of the path (the probes, and
        the copy of the path into each rewrite), one per `*` prefix compared, and the node
        count of every rewritten tree."""
        index = self._index[0] if self._index else self._build_index()
        dentries = self.dentries
        hits: list[int] = []
        exact = index.exact
        probes = min(len(path), index.longest) + 1
        for n in range(probes):
            found = exact.get(tuple.__getitem__(path, slice(0, n)))
            if found is not None:
                hits.extend(found)
        for i in index.wild:
            if dentries[i].prefix.matches(path):
                hits.append(i)
        work = len(path) + 1 + len(index.wild)  # the probes, and the copies of a long path
        if not hits:
            return (), work
        hits.sort(reverse=True)
        sizes = index.sizes
        out: list[DentryMatch] = []
        for i in hits:
            d = dentries[i]
            out.append(DentryMatch(i, d, d.rewrite(path)))
            work += sizes[i]
        return tuple(out), work

    def lookup(self, path: Path) -> NameTree[Path]:
        """Rewrite `path` through this dtab: Neg, one tree, or an Alt of them, last first."""
        found = self.matches(path)
        if not found:
            return NEG
        if len(found) == 1:
            return found[0].rewrite
        return Alt(tuple(m.rewrite for m in found))

    def _build_index(self) -> _Index:
        exact: dict[tuple[str, ...], list[int]] = {}
        wild: list[int] = []
        longest = 0
        for i, d in enumerate(self.dentries):
            elems = d.prefix.elems
            if any(isinstance(e, AnyElem) for e in elems):
                wild.append(i)
            else:
                labels = tuple(e for e in elems if isinstance(e, str))
                exact.setdefault(labels, []).append(i)
                longest = max(longest, len(labels))
        index = _Index(
            {k: tuple(v) for k, v in exact.items()},
            tuple(wild),
            longest,
            tuple(_size(d.dst) for d in self.dentries),
        )
        self._index.append(index)  # a cache: the list is the one mutable slot of a frozen Dtab
        return index

    def __str__(self) -> str:
        return self.show()


def _size(tree: NameTree[Path]) -> int:
    """The number of nodes in a tree."""
    if isinstance(tree, Alt):
        return 1 + sum(_size(t) for t in tree.trees)
    if isinstance(tree, Union):
        return 1 + sum(_size(b.tree) for b in tree.branches)
    return 1


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
