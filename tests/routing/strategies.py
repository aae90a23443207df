"""Hypothesis strategies for paths, name trees, prefixes and dtabs.

Trees are generated in the normal form the parser produces (an Alt has at least two
alternatives, a Union at least two branches, weights have at most two decimals) so that
`parse(show(t)) == t` is an exact property.
"""

from __future__ import annotations

from hypothesis import strategies as st

from routing.dtab import ANY, Dentry, Dtab, Prefix, PrefixElem
from routing.nametree import EMPTY, FAIL, NEG, Alt, Leaf, NameTree, Union, Weighted
from routing.path import Path

# Plain label characters, and a few that must be escaped (including non-ASCII).
_LABEL_ALPHABET = st.sampled_from(list("abcxyz019_:.#$%-") + ["/", " ", "*", "\\", "é", "\u4e2d", "\x00"])
labels = st.text(_LABEL_ALPHABET, min_size=1, max_size=6)
paths = st.lists(labels, max_size=4).map(Path)
weights = st.one_of(st.just(1.0), st.integers(0, 10_000).map(lambda k: k / 100))


def trees(
    leaf_paths: st.SearchStrategy[Path] = paths, max_leaves: int = 8
) -> st.SearchStrategy[NameTree[Path]]:
    base: st.SearchStrategy[NameTree[Path]] = st.one_of(
        leaf_paths.map(Leaf), st.sampled_from([NEG, FAIL, EMPTY])
    )

    def extend(children: st.SearchStrategy[NameTree[Path]]) -> st.SearchStrategy[NameTree[Path]]:
        alts = st.lists(children, min_size=2, max_size=3).map(lambda ts: Alt(tuple(ts)))
        unions = st.lists(st.tuples(weights, children), min_size=2, max_size=3).map(
            lambda bs: Union(tuple(Weighted(w, t) for w, t in bs))
        )
        return st.one_of(alts, unions)

    return st.recursive(base, extend, max_leaves=max_leaves)


prefix_elems: st.SearchStrategy[PrefixElem] = st.one_of(labels, st.just(ANY))
prefixes = st.lists(prefix_elems, max_size=3).map(lambda es: Prefix(tuple(es)))
dentries = st.builds(Dentry, prefixes, trees())
dtabs = st.lists(dentries, max_size=5).map(lambda ds: Dtab(tuple(ds)))

# Small worlds for delegation properties: few labels, so dentries often match each other.
small_labels = st.sampled_from(["a", "b", "c", "#", "n"])
small_paths = st.lists(small_labels, min_size=1, max_size=3).map(Path)
small_prefixes = st.lists(st.one_of(small_labels, st.just(ANY)), min_size=1, max_size=2).map(
    lambda es: Prefix(tuple(es))
)
small_dtabs = st.lists(st.builds(Dentry, small_prefixes, trees(small_paths, 4)), max_size=5).map(
    lambda ds: Dtab(tuple(ds))
)
