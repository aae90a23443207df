"""Path: reading, showing, prefix operations."""

from __future__ import annotations

import pytest

from routing.path import EMPTY_PATH, Path, PathError


@pytest.mark.parametrize(
    ("text", "labels"),
    [
        ("/", ()),
        ("/a", ("a",)),
        ("/svc/accounts", ("svc", "accounts")),
        ("/#/io.l5d.fs", ("#", "io.l5d.fs")),
        ("/$/inet/127.1/8080", ("$", "inet", "127.1", "8080")),
        ("/a\\x2fb", ("a/b",)),
        ("/caf\\xc3\\xa9", ("café",)),
    ],
)
def test_read_and_show(text: str, labels: tuple[str, ...]) -> None:
    path = Path.read(text)
    assert tuple(path) == labels
    assert path.show() == text
    assert str(path) == text


@pytest.mark.parametrize("text", ["", "a/b", "/a/", "//a", "/a b", "/a\\x4", "/a\\y41", "/é"])
def test_read_rejects_bad_text(text: str) -> None:
    with pytest.raises(PathError):
        Path.read(text)


def test_show_escapes_what_is_not_a_label_character() -> None:
    assert Path.of("a b", "*", "x/y").show() == "/a\\x20b/\\x2a/x\\x2fy"
    assert Path.of("中").show() == "/\\xe4\\xb8\\xad"


def test_invalid_utf8_bytes_survive_a_round_trip() -> None:
    path = Path.read("/\\xff\\xfe")
    assert Path.read(path.show()) == path
    assert path.show() == "/\\xff\\xfe"


def test_prefix_operations() -> None:
    p = Path.read("/a/b/c")
    assert p.starts_with(Path.read("/a/b"))
    assert p.starts_with(EMPTY_PATH)
    assert not p.starts_with(Path.read("/a/c"))
    assert not Path.read("/a").starts_with(p)
    assert p.take(2) == Path.read("/a/b")
    assert p.drop(2) == Path.read("/c")
    assert p.drop(5) == EMPTY_PATH
    assert p.concat(Path.read("/d")) == Path.read("/a/b/c/d")
    assert isinstance(p.concat(EMPTY_PATH), Path) and isinstance(p.drop(1), Path)
    assert Path.of("a", "b") == Path.read("/a/b") and hash(Path.of("a")) == hash(Path.read("/a"))
    assert repr(p) == "Path(/a/b/c)"
