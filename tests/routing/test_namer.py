"""The system namer for /$/ paths."""

from __future__ import annotations

import pytest

from routing.namer import SYSTEM_NAMER, BoundName, SystemNamerError, inet_address
from routing.nametree import EMPTY, FAIL, Leaf
from routing.path import Path


@pytest.mark.parametrize(
    ("path", "bound_id", "residual"),
    [
        ("/inet/127.1/8080", "/$/inet/127.1/8080", "/"),
        ("/inet/127.1/8080/foo/bar", "/$/inet/127.1/8080", "/foo/bar"),
        ("/inet/8080", "/$/inet/8080", "/"),
        ("/inet/8080/x", "/$/inet/8080", "/x"),
        ("/inet/80/8080", "/$/inet/80/8080", "/"),  # host then port is tried first, as Finagle
        ("/fixedinet/h/1", "/$/fixedinet/h/1", "/"),
        ("/io.buoyant.rinet/80/example.com", "/$/inet/example.com/80", "/"),
        ("/rinet/80/example.com/x", "/$/inet/example.com/80", "/x"),
    ],
)
def test_inet_names(path: str, bound_id: str, residual: str) -> None:
    assert SYSTEM_NAMER.lookup(Path.read(path)) == Leaf(BoundName(Path.read(bound_id), Path.read(residual)))


def test_nil_and_fail() -> None:
    assert SYSTEM_NAMER.lookup(Path.read("/nil/x")) == EMPTY
    assert SYSTEM_NAMER.lookup(Path.read("/fail")) == FAIL


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/", "names no system namer"),
        ("/nope/x", "no system namer 'nope'"),
        ("/inet", "needs /<host>/<port>"),
        ("/inet/host", "needs /<host>/<port>"),
        ("/inet/host/http", "needs /<host>/<port>"),
        ("/inet/host/70000", "needs /<host>/<port>"),
        ("/rinet/80", "needs /<port>/<host>"),
        ("/rinet/http/example.com", "not a port number"),
    ],
)
def test_bad_system_paths(path: str, message: str) -> None:
    with pytest.raises(SystemNamerError, match=message):
        SYSTEM_NAMER.lookup(Path.read(path))


def test_inet_address() -> None:
    assert inet_address(Path.read("/$/inet/10.0.0.1/80")) == ("10.0.0.1", 80)
    assert inet_address(Path.read("/$/inet/8080")) == ("127.0.0.1", 8080)
    assert inet_address(Path.read("/$/fixedinet/h/1")) == ("h", 1)
    assert inet_address(Path.read("/#/fs/a")) is None
    assert inet_address(Path.read("/$/inet/h/80/x")) is None


def test_bound_name_describe() -> None:
    assert BoundName(Path.read("/#/fs/a")).describe() == "/#/fs/a"
    assert BoundName(Path.read("/#/fs/a"), Path.read("/x")).describe() == "/#/fs/a (residual /x)"
    assert BoundName(Path.read("/#/fs/a"), Path.read("/x")).show() == "/#/fs/a"
