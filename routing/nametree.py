"""Name trees: the values a dtab maps a path to, as Finagle's `NameTree`.

A tree is one of
- `Leaf(value)`: a name (a `Path` before binding, a `BoundName` after);
- `Alt(trees)`: fallback, written `a | b`: the first alternative that is not negative wins;
- `Union(branches)`: weighted split, written `0.9*a & 0.1*b`: each request picks a branch;
- `NEG` (`~`, "no such name"), `FAIL` (`!`, "stop here, fail"), `EMPTY` (`$`, "exists, no
  replicas").

`show()` prints a tree the way Finagle does (`NameTree.show`): ` | ` between alternatives,
` & ` between union branches, weights with two decimals (`0.30*/a`) and weight 1.0 omitted,
parentheses only where precedence needs them (`|` binds loosest, then `&`, then `w *`).
`simplify()` is Finagle's `NameTree.simplify`: it yields an evaluation-equivalent tree.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Generic, Protocol, TypeAlias, TypeVar

T = TypeVar("T")
U = TypeVar("U")
# Trees are immutable, so a tree of BoundName is also a tree of `Path | BoundName`.
T_co = TypeVar("T_co", covariant=True)

DEFAULT_WEIGHT: Final = 1.0


class Showable(Protocol):
    """A leaf value that can print itself (Path, BoundName)."""

    def show(self) -> str: ...


S = TypeVar("S", bound=Showable)


@dataclass(frozen=True, slots=True)
class Leaf(Generic[T_co]):
    value: T_co


@dataclass(frozen=True, slots=True)
class Alt(Generic[T_co]):
    """Fallback: bind the first tree; if it is negative, try the next. `Alt()` is negative."""

    trees: tuple[NameTree[T_co], ...]


@dataclass(frozen=True, slots=True)
class Weighted(Generic[T_co]):
    """One branch of a Union. Weights are relative; they must be finite and not negative."""

    weight: float
    tree: NameTree[T_co]

    def __post_init__(self) -> None:
        if not (self.weight >= 0.0 and math.isfinite(self.weight)):
            raise ValueError(f"union weight must be a finite number >= 0, got {self.weight!r}")


@dataclass(frozen=True, slots=True)
class Union(Generic[T_co]):
    """Weighted split between branches. `Union()` is negative."""

    branches: tuple[Weighted[T_co], ...]


@dataclass(frozen=True, slots=True)
class Neg:
    """`~`: no such name here; an enclosing Alt tries its next alternative."""

    def __repr__(self) -> str:
        return "NEG"


@dataclass(frozen=True, slots=True)
class Fail:
    """`!`: fail the request and stop an enclosing Alt from falling back."""

    def __repr__(self) -> str:
        return "FAIL"


@dataclass(frozen=True, slots=True)
class Empty:
    """`$`: the name exists but has no replicas; no fallback, requests fail."""

    def __repr__(self) -> str:
        return "EMPTY"


NEG: Final = Neg()
FAIL: Final = Fail()
EMPTY: Final = Empty()

NameTree: TypeAlias = "Leaf[T] | Alt[T] | Union[T] | Neg | Fail | Empty"


def show(tree: NameTree[S]) -> str:
    """Print a tree in dtab syntax, parseable back by `parser.parse_tree` (Finagle style).

    An empty Alt or Union cannot be written in the syntax; both print as `~`, which they are
    equivalent to.
    """
    if isinstance(tree, Alt):
        if len(tree.trees) == 1:
            return show(tree.trees[0])
        if not tree.trees:
            return "~"
        return " | ".join(_show_union_level(t) for t in tree.trees)
    return _show_union_level(tree)


def simplify(tree: NameTree[T]) -> NameTree[T]:
    """An evaluation-equivalent tree (Finagle `NameTree.simplify`), a fixpoint of itself.

    Alt: simplified alternatives, Neg ones dropped, everything after a Fail cut off; none left
    -> Neg, one -> itself. Union: branches whose tree simplifies to Neg or Fail are dropped
    (Empty is kept); none left -> Neg, one -> that tree (its weight no longer matters).
    """
    if isinstance(tree, Alt):
        kept: list[NameTree[T]] = []
        for t in tree.trees:
            s = simplify(t)
            if isinstance(s, Neg):
                continue
            kept.append(s)
            if isinstance(s, Fail):
                break
        if not kept:
            return NEG
        if len(kept) == 1:
            return kept[0]
        return Alt(tuple(kept))
    if isinstance(tree, Union):
        branches: list[Weighted[T]] = []
        for b in tree.branches:
            s = simplify(b.tree)
            if isinstance(s, Neg | Fail):
                continue
            branches.append(b if s is b.tree else Weighted(b.weight, s))
        if not branches:
            return NEG
        if len(branches) == 1:
            return branches[0].tree
        return Union(tuple(branches))
    return tree


def map_leaves(tree: NameTree[T], f: Callable[[T], U]) -> NameTree[U]:
    """The same tree with every leaf value replaced by `f(value)`."""
    if isinstance(tree, Leaf):
        return Leaf(f(tree.value))
    if isinstance(tree, Alt):
        return Alt(tuple(map_leaves(t, f) for t in tree.trees))
    if isinstance(tree, Union):
        return Union(tuple(Weighted(b.weight, map_leaves(b.tree, f)) for b in tree.branches))
    return tree


def leaves(tree: NameTree[T]) -> tuple[T, ...]:
    """Every leaf value, left to right."""
    out: list[T] = []
    _collect(tree, out)
    return tuple(out)


def show_weight(weight: float) -> str:
    """A weight as `show` prints it: two decimals (`0.30`), as Finagle's `%.2f`."""
    return f"{weight:.2f}"


def _collect(tree: NameTree[T], out: list[T]) -> None:
    if isinstance(tree, Leaf):
        out.append(tree.value)
    elif isinstance(tree, Alt):
        for t in tree.trees:
            _collect(t, out)
    elif isinstance(tree, Union):
        for b in tree.branches:
            _collect(b.tree, out)


def _show_union_level(tree: NameTree[S]) -> str:
    """A tree in a position where `&` needs no parentheses (an Alt alternative, or the top)."""
    if isinstance(tree, Union) and len(tree.branches) >= 2:
        return " & ".join(
            _show_simple(b.tree)
            if b.weight == DEFAULT_WEIGHT
            else f"{show_weight(b.weight)}*{_show_simple(b.tree)}"
            for b in tree.branches
        )
    if isinstance(tree, Alt) and len(tree.trees) >= 2:
        return f"({show(tree)})"
    return _show_simple(tree)


def _show_simple(tree: NameTree[S]) -> str:
    """A tree in a position that takes only a simple term (a union branch)."""
    if isinstance(tree, Leaf):
        return tree.value.show()
    if isinstance(tree, Neg):
        return "~"
    if isinstance(tree, Fail):
        return "!"
    if isinstance(tree, Empty):
        return "$"
    if isinstance(tree, Alt):
        if len(tree.trees) == 1:
            return _show_simple(tree.trees[0])
        if not tree.trees:
            return "~"
        return f"({show(tree)})"
    if len(tree.branches) == 1:
        return _show_simple(tree.branches[0].tree)
    if not tree.branches:
        return "~"
    return f"({show(tree)})"
