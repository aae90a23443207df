"""Per-request choice over a bound tree: weights, renormalisation, no draw for a plain leaf."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.delegate import Chooser, bind, compile_choice
from routing.namer import BoundName
from routing.nametree import EMPTY, FAIL, NEG, Alt, Leaf, NameTree, Union, Weighted
from routing.parser import parse_dtab
from routing.path import Path
from tests.routing.fakes import FakeNamer, namers

N = 100_000


def name(text: str) -> BoundName:
    return BoundName(Path.read(text))


def shares(chooser: Chooser, seed: int = 7) -> dict[str, float]:
    rng = random.Random(seed)
    counts = Counter(chooser.choose(rng) for _ in range(N))
    return {(c.show() if isinstance(c, BoundName) else repr(c)): n / N for c, n in counts.items()}


class NoRandom(random.Random):
    def random(self) -> float:
        raise AssertionError("a plain leaf must not draw a random number")


def test_canary_95_5_gives_5_percent() -> None:
    tree = Union((Weighted(0.95, Leaf(name("/#/fs/a"))), Weighted(0.05, Leaf(name("/#/fs/b")))))
    got = shares(compile_choice(tree))
    assert got["/#/fs/b"] == pytest.approx(0.05, abs=0.005)
    assert got["/#/fs/a"] == pytest.approx(0.95, abs=0.005)


def test_weights_are_relative() -> None:
    tree = Union((Weighted(9.0, Leaf(name("/a"))), Weighted(1.0, Leaf(name("/b")))))
    assert shares(compile_choice(tree))["/b"] == pytest.approx(0.10, abs=0.005)


def test_dropped_branches_renormalise() -> None:
    fs = FakeNamer("/#/fs", ["a", "b"])
    binding = bind(
        parse_dtab("/svc => 0.5*/#/fs/a & 0.3*/#/fs/b & 0.2*/#/fs/nope"), Path.read("/svc"), namers(fs)
    )
    got = shares(compile_choice(binding.tree))
    assert set(got) == {"/#/fs/a", "/#/fs/b"}
    assert got["/#/fs/a"] == pytest.approx(0.625, abs=0.005)
    assert got["/#/fs/b"] == pytest.approx(0.375, abs=0.005)


def test_empty_branch_keeps_its_share() -> None:
    tree = Union((Weighted(0.9, Leaf(name("/a"))), Weighted(0.1, EMPTY)))
    got = shares(compile_choice(tree))
    assert got["EMPTY"] == pytest.approx(0.10, abs=0.005)


def test_nested_unions_multiply() -> None:
    inner = Union((Weighted(1.0, Leaf(name("/a"))), Weighted(3.0, Leaf(name("/b")))))
    tree = Union((Weighted(1.0, inner), Weighted(1.0, Leaf(name("/c")))))
    probabilities = {
        c.show() if isinstance(c, BoundName) else "": p for p, c in compile_choice(tree).branches
    }
    assert probabilities == pytest.approx({"/a": 0.125, "/b": 0.375, "/c": 0.5})


def test_all_zero_weights_split_evenly() -> None:
    tree = Union(tuple(Weighted(0.0, Leaf(name(f"/{i}"))) for i in range(4)))
    assert [p for p, _ in compile_choice(tree).branches] == [0.25] * 4
    got = shares(compile_choice(tree))
    assert all(v == pytest.approx(0.25, abs=0.01) for v in got.values())


def test_zero_weight_branch_never_wins_against_positive_ones() -> None:
    tree = Union((Weighted(0.0, Leaf(name("/never"))), Weighted(2.0, Leaf(name("/always")))))
    chooser = compile_choice(tree)
    assert chooser.choose(NoRandom()) == name("/always")


@pytest.mark.parametrize("tree", [Leaf(name("/a")), NEG, FAIL, EMPTY])
def test_single_outcome_needs_no_random_number(tree: NameTree[BoundName]) -> None:
    expected = tree.value if isinstance(tree, Leaf) else tree
    assert compile_choice(tree).choose(NoRandom()) == expected


def test_alt_in_a_bound_tree_picks_the_first_non_negative() -> None:
    assert compile_choice(Alt((NEG, Leaf(name("/b")), Leaf(name("/c"))))).choose(NoRandom()) == name("/b")
    assert compile_choice(Alt((NEG, NEG))).choose(NoRandom()) == NEG
    assert compile_choice(Union(())).choose(NoRandom()) == NEG


def test_same_seed_same_choices() -> None:
    tree = Union(tuple(Weighted(float(i + 1), Leaf(name(f"/{i}"))) for i in range(5)))
    chooser = compile_choice(tree)
    a, b = random.Random(3), random.Random(3)
    assert [chooser.choose(a) for _ in range(100)] == [chooser.choose(b) for _ in range(100)]


@settings(max_examples=100)
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=8), st.integers(0, 2**32))
def test_probabilities_sum_to_one_and_follow_weights(ws: list[int], seed: int) -> None:
    tree = Union(tuple(Weighted(float(w), Leaf(name(f"/{i}"))) for i, w in enumerate(ws)))
    chooser = compile_choice(tree)
    total = sum(ws)
    assert sum(p for p, _ in chooser.branches) == pytest.approx(1.0)
    for p, c in chooser.branches:
        assert isinstance(c, BoundName)
        w = ws[int(c.id[0])]
        assert p == pytest.approx(w / total if total else 1 / len(ws))
    picked = chooser.choose(random.Random(seed))
    assert isinstance(picked, BoundName) and (total == 0 or ws[int(picked.id[0])] > 0)
