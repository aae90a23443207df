"""Name trees: simplification and helpers."""

from __future__ import annotations

from hypothesis import given, settings

from routing.nametree import (
    EMPTY,
    FAIL,
    NEG,
    Alt,
    Leaf,
    NameTree,
    Union,
    Weighted,
    leaves,
    map_leaves,
    show,
    simplify,
)
from routing.path import Path
from tests.routing.strategies import trees


def L(text: str) -> Leaf[Path]:
    return Leaf(Path.read(text))


def test_simplify_alt() -> None:
    assert simplify(Alt(())) == NEG
    assert simplify(Alt((L("/a"),))) == L("/a")
    assert simplify(Alt((NEG, L("/a"), NEG, L("/b")))) == Alt((L("/a"), L("/b")))
    assert simplify(Alt((L("/a"), FAIL, L("/b")))) == Alt((L("/a"), FAIL))
    assert simplify(Alt((NEG, NEG))) == NEG
    assert simplify(Alt((NEG, FAIL, L("/b")))) == FAIL
    assert simplify(Alt((EMPTY, L("/b")))) == Alt((EMPTY, L("/b")))


def test_simplify_union_drops_neg_and_fail_keeps_empty() -> None:
    u = Union((Weighted(1.0, L("/a")), Weighted(2.0, NEG), Weighted(3.0, FAIL), Weighted(4.0, EMPTY)))
    assert simplify(u) == Union((Weighted(1.0, L("/a")), Weighted(4.0, EMPTY)))
    assert simplify(Union((Weighted(0.5, L("/a")), Weighted(0.5, NEG)))) == L("/a")
    assert simplify(Union(())) == NEG
    assert simplify(Union((Weighted(1.0, NEG), Weighted(1.0, FAIL)))) == NEG


def test_simplify_nested() -> None:
    tree = Union((Weighted(1.0, Alt((NEG, L("/a")))), Weighted(1.0, Alt((NEG, NEG)))))
    assert simplify(tree) == L("/a")


@settings(max_examples=200)
@given(trees())
def test_simplify_is_a_fixpoint(tree: NameTree[Path]) -> None:
    once = simplify(tree)
    assert simplify(once) == once


def test_show_degenerate_trees() -> None:
    assert show(Alt(())) == "~"
    assert show(Union(())) == "~"
    assert show(Alt((L("/a"),))) == "/a"
    assert show(Union((Weighted(0.3, L("/a")),))) == "/a"
    assert show(Union((Weighted(1.0, Alt((L("/a"), L("/b")))), Weighted(1.0, Union(()))))) == "(/a | /b) & ~"


def test_map_leaves_and_leaves() -> None:
    tree: NameTree[Path] = Alt((L("/a"), Union((Weighted(2.0, L("/b")), Weighted(1.0, NEG)))))
    mapped = map_leaves(tree, lambda p: p.concat(Path.of("x")))
    assert show(mapped) == "/a/x | 2.00*/b/x & ~"
    assert leaves(mapped) == (Path.read("/a/x"), Path.read("/b/x"))
    assert map_leaves(FAIL, lambda p: p) is FAIL
