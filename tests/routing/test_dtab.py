"""Dtab lookup: reverse order, segment-wise matching, wildcards, residuals."""

from __future__ import annotations

from hypothesis import given, settings

from routing.dtab import EMPTY_DTAB, Dentry, Dtab, Prefix
from routing.nametree import NEG, Alt, Leaf, NameTree, show
from routing.parser import parse_dentry, parse_dtab, parse_prefix
from routing.path import Path
from tests.routing.strategies import small_dtabs, small_paths


def lookup(dtab: str, path: str) -> str:
    return show(parse_dtab(dtab).lookup(Path.read(path)))


def test_no_match_is_neg() -> None:
    assert parse_dtab("/a => /b").lookup(Path.read("/c")) == NEG
    assert EMPTY_DTAB.lookup(Path.read("/c")) == NEG


def test_residual_is_appended_to_every_leaf() -> None:
    assert lookup("/a => /b & /c | /d", "/a/x/y") == "/b/x/y & /c/x/y | /d/x/y"


def test_matches_are_tried_last_first() -> None:
    assert lookup("/a => /1; /b => /2; /a => /3", "/a/x") == "/3/x | /1/x"


def test_matching_is_per_segment() -> None:
    assert lookup("/svc => /x", "/svcx/users") == "~"
    assert lookup("/svc/users => /x", "/svc") == "~"


def test_wildcard_matches_exactly_one_segment() -> None:
    assert lookup("/http/*/x => /y", "/http/1.1/x/z") == "/y/z"
    assert lookup("/http/*/x => /y", "/http/x") == "~"


def test_empty_prefix_matches_everything() -> None:
    assert lookup("/ => /root", "/a/b") == "/root/a/b"


def test_matches_report_index_and_rewrite() -> None:
    dtab = parse_dtab("/a => /1; /b => /2; /a => /3")
    found = dtab.matches(Path.read("/a/x"))
    assert [(m.index, m.dentry.show(), show(m.rewrite)) for m in found] == [
        (2, "/a=>/3", "/3/x"),
        (0, "/a=>/1", "/1/x"),
    ]


def test_concatenation_and_show() -> None:
    base = parse_dtab("/a => /b;")
    local = parse_dtab("/c => /d")
    both = base + local
    assert both.show() == "/a=>/b;/c=>/d"
    assert len(both) == 2 and list(both) == [*base, *local]
    assert base + EMPTY_DTAB is base and EMPTY_DTAB + local is local
    assert not EMPTY_DTAB and both


def test_dentry_read_and_prefix_of_path() -> None:
    d = parse_dentry("/svc => /#/fs")
    assert d == Dentry(Prefix.of_path(Path.read("/svc")), Leaf(Path.read("/#/fs")))
    assert parse_prefix("/a/*").show() == "/a/*"
    assert d.rewrite(Path.read("/svc/a")) == Leaf(Path.read("/#/fs/a"))
    assert parse_dentry("/s => /x | ~").rewrite(Path.read("/s/y")) == Alt((Leaf(Path.read("/x/y")), NEG))


# -- the lookup index ------------------------------------------------------------------------


def naive_matches(dtab: Dtab, path: Path) -> list[tuple[int, Dentry, NameTree[Path]]]:
    """Every dentry compared with the path, last first: what lookup did before the index."""
    return [
        (i, d, d.rewrite(path)) for i, d in reversed(list(enumerate(dtab.dentries))) if d.prefix.matches(path)
    ]


@settings(max_examples=300, deadline=None)
@given(small_dtabs, small_paths)
def test_indexed_lookup_finds_what_comparing_every_dentry_finds(dtab: Dtab, path: Path) -> None:
    found, work = dtab.matches_with_work(path)
    assert [(m.index, m.dentry, m.rewrite) for m in found] == naive_matches(dtab, path)
    assert dtab.matches(path) == found  # the index is built once and reused
    assert work >= len(path) + 1 + len(found)


def test_lookup_work_counts_probes_wildcards_and_rewritten_trees() -> None:
    dtab = parse_dtab("/svc => /a | /b; /*/x => /c; /other => /d")
    found, work = dtab.matches_with_work(Path.read("/svc/x"))
    assert [m.index for m in found] == [1, 0]
    # 3 for the path (two labels, plus one) + 1 wildcard prefix + 3 nodes (/a | /b) + 1 node (/c)
    assert work == 3 + 1 + 3 + 1
    assert Dtab().matches_with_work(Path.read("/svc/x")) == ((), 3)
