"""The dtab parser: a table of parse vectors (P1-P3 and more), errors with positions, and
parse/show round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from routing.dtab import ANY, Dentry, Dtab, Prefix
from routing.nametree import EMPTY, FAIL, NEG, Alt, Leaf, NameTree, Union, Weighted, show
from routing.parser import (
    MAX_NESTING,
    DtabSyntaxError,
    parse_dentry,
    parse_dtab,
    parse_path,
    parse_prefix,
    parse_tree,
)
from routing.path import Path
from tests.routing.strategies import dtabs, paths, prefixes, trees


def L(text: str) -> Leaf[Path]:
    return Leaf(Path.read(text))


def U(*branches: tuple[float, NameTree[Path]]) -> Union[Path]:
    return Union(tuple(Weighted(w, t) for w, t in branches))


def A(*trees: NameTree[Path]) -> Alt[Path]:
    return Alt(trees)


TREE_VECTORS: list[tuple[str, str, NameTree[Path], str]] = [
    # id, text, tree, how show() prints it
    ("P1", "/a & /b | /c", A(U((1, L("/a")), (1, L("/b"))), L("/c")), "/a & /b | /c"),
    ("P2", "0.3 * /a & 0.7 * /b | ~", A(U((0.3, L("/a")), (0.7, L("/b"))), NEG), "0.30*/a & 0.70*/b | ~"),
    ("empty-path", "/", L("/"), "/"),
    ("neg", "~", NEG, "~"),
    ("fail", "!", FAIL, "!"),
    ("empty", "$", EMPTY, "$"),
    ("long-path", "/a/b/c", L("/a/b/c"), "/a/b/c"),
    ("parens-vanish", "(/a)", L("/a"), "/a"),
    ("double-parens", "((/a | /b))", A(L("/a"), L("/b")), "/a | /b"),
    ("weight-one-omitted", "1 * /a & 1*/b", U((1, L("/a")), (1, L("/b"))), "/a & /b"),
    (
        "weight-forms",
        ".5*/a & 1.*/b & 2.25*/c",
        U((0.5, L("/a")), (1, L("/b")), (2.25, L("/c"))),
        "0.50*/a & /b & 2.25*/c",
    ),
    ("single-weighted-is-its-tree", "0.5 * /a", L("/a"), "/a"),
    (
        "three-alternatives",
        "/a | /b & /c | /d",
        A(L("/a"), U((1, L("/b")), (1, L("/c"))), L("/d")),
        "/a | /b & /c | /d",
    ),
    ("alt-in-union", "(/a | /b) & /c", U((1, A(L("/a"), L("/b"))), (1, L("/c"))), "(/a | /b) & /c"),
    ("alt-in-alt", "/a | (/b | /c)", A(L("/a"), A(L("/b"), L("/c"))), "/a | (/b | /c)"),
    (
        "union-in-union",
        "2*(/a & /b) & /c",
        U((2, U((1, L("/a")), (1, L("/b")))), (1, L("/c"))),
        "2.00*(/a & /b) & /c",
    ),
    ("hash-label", "/#/io.l5d.fs", L("/#/io.l5d.fs"), "/#/io.l5d.fs"),
    ("hash-inside-label", "/a#b", Leaf(Path.of("a#b")), "/a#b"),
    ("dollar-label", "/$/inet/127.1/8080", Leaf(Path.of("$", "inet", "127.1", "8080")), "/$/inet/127.1/8080"),
    ("comment-after-space", "/a #comment\n| /b", A(L("/a"), L("/b")), "/a | /b"),
    ("escape", "/\\x41b", Leaf(Path.of("Ab")), "/Ab"),
    ("escaped-slash", "/a\\x2fb", Leaf(Path.of("a/b")), "/a\\x2fb"),
    ("escaped-utf8", "/caf\\xc3\\xa9", Leaf(Path.of("café")), "/caf\\xc3\\xa9"),
    ("whitespace", " \t/a\n&\n\t/b ", U((1, L("/a")), (1, L("/b"))), "/a & /b"),
    ("zero-weight", "0*/a & /b", U((0, L("/a")), (1, L("/b"))), "0.00*/a & /b"),
    ("constants-in-union", "~ & ! & $", U((1, NEG), (1, FAIL), (1, EMPTY)), "~ & ! & $"),
]


@pytest.mark.parametrize(
    ("text", "tree", "shown"), [v[1:] for v in TREE_VECTORS], ids=[v[0] for v in TREE_VECTORS]
)
def test_tree_vector(text: str, tree: NameTree[Path], shown: str) -> None:
    assert parse_tree(text) == tree
    assert show(tree) == shown
    assert parse_tree(shown) == tree


DTAB_VECTORS: list[tuple[str, str, list[str]]] = [
    # id, text, the dentries as Dentry.show() prints them
    ("P3", "# c\n/s => /a  # prefer\n | ( /b & /c );", ["/s=>/a | /b & /c"]),
    ("empty", "", []),
    ("only-semicolons", ";;", []),
    ("trailing-semicolon", "/a=>/b;", ["/a=>/b"]),
    ("empty-entries", ";/a=>/b;;/c=>/d;", ["/a=>/b", "/c=>/d"]),
    ("wildcard", "/a/*/c => /d", ["/a/*/c=>/d"]),
    ("empty-prefix", "/ => /x", ["/=>/x"]),
    ("only-comment", "# nothing here", []),
    ("comment-before-semicolon", "/a=>/b # c\n;/c=>/d", ["/a=>/b", "/c=>/d"]),
    ("comment-after-arrow", "/a =>   # why\n  /b", ["/a=>/b"]),
    (
        "multiline",
        "/k8s => /#/io.l5d.k8s;\n/srv => /k8s/prod/http;\n/svc => /srv;\n",
        ["/k8s=>/#/io.l5d.k8s", "/srv=>/k8s/prod/http", "/svc=>/srv"],
    ),
    ("escaped-star-is-a-label", "/\\x2a => /b", ["/\\x2a=>/b"]),
]


@pytest.mark.parametrize(("text", "shown"), [v[1:] for v in DTAB_VECTORS], ids=[v[0] for v in DTAB_VECTORS])
def test_dtab_vector(text: str, shown: list[str]) -> None:
    dtab = parse_dtab(text)
    assert [d.show() for d in dtab.dentries] == shown
    assert parse_dtab(dtab.show()) == dtab


def test_vector_tables_hold_at_least_forty_cases() -> None:
    assert len(TREE_VECTORS) + len(DTAB_VECTORS) >= 35
    assert {"P1", "P2"} <= {v[0] for v in TREE_VECTORS} and "P3" in {v[0] for v in DTAB_VECTORS}


def test_p3_structure() -> None:
    (dentry,) = parse_dtab("# c\n/s => /a  # prefer\n | ( /b & /c );").dentries
    assert dentry == Dentry(Prefix(("s",)), A(L("/a"), U((1, L("/b")), (1, L("/c")))))


def test_wildcard_prefix_element_differs_from_a_star_label() -> None:
    assert parse_prefix("/a/*").elems == ("a", ANY)
    assert parse_prefix("/a/\\x2a").elems == ("a", "*")
    assert parse_prefix("/a/\\x2a").show() == "/a/\\x2a"


ERRORS: list[tuple[str, str, int, int, str]] = [
    # id, dtab text, line, column, start of the reason
    ("missing-tree", "/a => ", 1, 7, "expected a path, '(', '!', '~' or '$'"),
    ("missing-arrow", "/a /b", 1, 4, "expected '=>'"),
    ("split-arrow", "/a = > /b", 1, 4, "expected '=>'"),
    ("missing-semicolon", "/a =>/b /c=>/d", 1, 9, "expected ';' or end of input"),
    ("dangling-and", "/a => /b &", 1, 11, "expected a path"),
    ("unclosed-paren", "/a => (/b", 1, 10, "expected ')'"),
    ("two-dots", "/a => 1.2.3*/b", 1, 10, "a weight has at most one '.'"),
    ("lone-dot", "/a => . * /b", 1, 7, "expected a weight"),
    ("weight-without-star", "/a => 0.5 /b", 1, 11, "expected '*' after a weight"),
    ("trailing-slash-prefix", "/a/ => /b", 1, 4, "expected a label or '*' after '/'"),
    ("trailing-slash-path", "/a => /b/", 1, 10, "expected a label after '/'"),
    ("no-slash", "a => /b", 1, 1, "expected a prefix starting with '/'"),
    ("bad-hex", "/a => /b\\xZZ", 1, 11, "expected a hex digit"),
    ("bad-escape", "/a => /b\\q", 1, 10, "expected 'x' after '\\'"),
    ("second-line", "/a => /b;\n/svc/users /srv", 2, 12, "expected '=>'"),
    ("comment-does-not-end-tree", "/a => # only a comment", 1, 23, "expected a path"),
    ("non-ascii", "/a => /é", 1, 8, "expected ';' or end of input"),
    ("huge-weight", "/a => " + "9" * 400 + "*/b & /c", 1, 7, "weight is too large"),
]


@pytest.mark.parametrize(
    ("text", "line", "column", "reason"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_syntax_error_names_line_and_column(text: str, line: int, column: int, reason: str) -> None:
    with pytest.raises(DtabSyntaxError) as info:
        parse_dtab(text)
    err = info.value
    assert (err.line, err.column) == (line, column)
    assert err.reason.startswith(reason)
    assert str(err).startswith(f"line {line}, column {column}: {reason}")


def test_syntax_error_shows_the_line_and_a_caret() -> None:
    with pytest.raises(DtabSyntaxError) as info:
        parse_dtab("/a => /b;\n/svc/users /srv")
    assert str(info.value).splitlines() == [
        "line 2, column 12: expected '=>', found '/'",
        "1 | /a => /b;",
        "2 | /svc/users /srv",
        "  |            ^",
    ]
    assert info.value.short == "line 2, column 12: expected '=>', found '/'"


def test_long_lines_are_cut_around_the_error() -> None:
    text = "; ".join(f"/s{i} => /d{i}" for i in range(40)) + "; /x /y"
    with pytest.raises(DtabSyntaxError) as info:
        parse_dtab(text)
    caret_line = str(info.value).splitlines()[-1]
    shown_line = str(info.value).splitlines()[-2]
    assert len(shown_line) < 120
    assert shown_line[caret_line.index("^")] == "/"


def test_nesting_is_bounded() -> None:
    ok = "(" * MAX_NESTING + "/a" + ")" * MAX_NESTING
    assert parse_tree(ok) == L("/a")
    with pytest.raises(DtabSyntaxError, match="nested more than"):
        parse_tree("(" + ok + ")")


def test_single_parsers_reject_trailing_text() -> None:
    with pytest.raises(DtabSyntaxError, match="expected end of input"):
        parse_path("/a /b")
    with pytest.raises(DtabSyntaxError, match="expected '\\|', '&' or end of input"):
        parse_tree("/a /b")
    with pytest.raises(DtabSyntaxError, match="expected end of input"):
        parse_dentry("/a => /b; /c => /d")
    assert parse_path("  /a/b  # the path\n") == Path.of("a", "b")


@settings(max_examples=300)
@given(trees())
def test_tree_round_trips_through_show(tree: NameTree[Path]) -> None:
    assert parse_tree(show(tree)) == tree


@settings(max_examples=150)
@given(dtabs)
def test_dtab_round_trips_through_show(dtab: Dtab) -> None:
    assert parse_dtab(dtab.show()) == dtab
    assert parse_dtab(dtab.show()) == dtab


@settings(max_examples=200)
@given(paths)
def test_path_round_trips(path: Path) -> None:
    assert parse_path(path.show()) == path
    assert Path.read(path.show()) == path


@settings(max_examples=200)
@given(prefixes)
def test_prefix_round_trips(prefix: Prefix) -> None:
    assert parse_prefix(prefix.show()) == prefix


@settings(max_examples=100)
@given(trees())
def test_show_of_a_tree_is_stable_through_dtab_text(tree: NameTree[Path]) -> None:
    text = f"/p => {show(tree)};"
    assert parse_dtab(text).dentries[0].dst == tree


def test_weighted_rejects_bad_weights() -> None:
    with pytest.raises(ValueError, match="finite number >= 0"):
        Weighted(-1.0, NEG)
    with pytest.raises(ValueError, match="finite number >= 0"):
        Weighted(float("nan"), NEG)
