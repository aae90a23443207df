"""Identifiers: request head -> logical name, as tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from routing.identifiers.base import IdentificationError, Identified, LookupCache, authority_of, host_label
from routing.identifiers.header import HeaderIdentifierConfig
from routing.identifiers.method_and_host import MethodAndHostIdentifierConfig
from routing.identifiers.path import PathIdentifierConfig
from routing.identifiers.registry import IDENTIFIERS
from routing.identifiers.static import StaticIdentifierConfig
from routing.path import Path


@dataclass(frozen=True)
class Head:
    method: str = "GET"
    target: str = "/"
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(frozen=True)
class VersionedHead(Head):
    version: str = "HTTP/1.1"


def host(value: str, target: str = "/") -> Head:
    return Head(target=target, headers={"host": value})


HEADER_CASES: list[tuple[str, Head, str]] = [
    ("plain", host("users"), "/svc/users"),
    ("lower-cased", host("Users"), "/svc/users"),
    ("port-stripped", host("users:8080"), "/svc/users"),
    ("fqdn", host("users.prod.svc.cluster.local"), "/svc/users.prod.svc.cluster.local"),
    ("ipv6", host("[::1]:80"), "/svc/\\x5b::1\\x5d"),
    ("absolute-form-wins", host("other", "http://Users:80/x"), "/svc/users"),
    ("absolute-form-userinfo", Head(target="http://me@users/x"), "/svc/users"),
    ("absolute-form-no-path", Head(target="https://users"), "/svc/users"),
]


@pytest.mark.parametrize(("req", "expected"), [c[1:] for c in HEADER_CASES], ids=[c[0] for c in HEADER_CASES])
def test_header_identifier(req: Head, expected: str) -> None:
    identified = HeaderIdentifierConfig().build().identify(req)
    assert identified == Identified(Path.read(expected))


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (Head(), "host header is absent"),
        (host(""), "host header is empty"),
        (host(":8080"), "host header is empty"),
    ],
)
def test_header_identifier_rejects(req: Head, message: str) -> None:
    identifier = HeaderIdentifierConfig().build()
    with pytest.raises(IdentificationError, match=message):
        identifier.identify(req)


def test_header_identifier_with_another_header_and_prefix() -> None:
    identifier = HeaderIdentifierConfig(header="X-Service", prefix="/http").build()
    req = Head(target="http://ignored/x", headers={"x-service": "Books:1"})
    assert identifier.identify(req).path == Path.read("/http/books:1")
    with pytest.raises(IdentificationError, match="x-service header is absent"):
        identifier.identify(host("users"))


def test_repeated_hosts_give_the_same_cached_answer() -> None:
    identifier = HeaderIdentifierConfig().build()
    assert identifier.identify(host("users")) is identifier.identify(host("users"))


PATH_CASES: list[tuple[str, int, bool, str, str, str | None]] = [
    # id, segments, consume, target, name, new target
    ("one", 1, False, "/users/1", "/svc/users", None),
    ("two-consumed", 2, True, "/true/love/waits.php", "/svc/true/love", "/waits.php"),
    ("query-kept", 1, True, "/users/1?x=/y", "/svc/users", "/1?x=/y"),
    ("all-consumed", 2, True, "/a/b", "/svc/a/b", "/"),
    ("trailing-slash", 1, True, "/a/", "/svc/a", "/"),
    ("query-right-after", 1, True, "/a?q", "/svc/a", "/?q"),
    ("absolute-form", 1, True, "http://h:80/a/b?q", "/svc/a", "http://h:80/b?q"),
    ("absolute-form-kept", 1, False, "http://h/a/b", "/svc/a", None),
    ("odd-characters", 1, False, "/a%20b~/c", "/svc/a%20b\\x7e", None),
]


@pytest.mark.parametrize(
    ("segments", "consume", "target", "name", "new_target"),
    [c[1:] for c in PATH_CASES],
    ids=[c[0] for c in PATH_CASES],
)
def test_path_identifier(
    segments: int, consume: bool, target: str, name: str, new_target: str | None
) -> None:
    identifier = PathIdentifierConfig(segments=segments, consume=consume).build()
    assert identifier.identify(Head(target=target)) == Identified(Path.read(name), new_target)


@pytest.mark.parametrize("target", ["/", "/a", "//a/b", "/a//b", "*", "example.com:443", "http://h"])
def test_path_identifier_needs_enough_segments(target: str) -> None:
    with pytest.raises(IdentificationError):
        PathIdentifierConfig(segments=2).build().identify(Head(target=target))


METHOD_AND_HOST_CASES: list[tuple[str, Head, str]] = [
    ("reference", Head(target="http://Users/x"), "/svc/1.1/GET/users"),
    ("host-header", Head(method="POST", headers={"host": "books:81"}), "/svc/1.1/POST/books"),
    ("http-1.0-without-host", VersionedHead(version="HTTP/1.0"), "/svc/1.0/GET"),
    ("http-1.0-with-host", VersionedHead(version="1.0", headers={"host": "a"}), "/svc/1.0/GET/a"),
]


@pytest.mark.parametrize(
    ("req", "expected"), [c[1:] for c in METHOD_AND_HOST_CASES], ids=[c[0] for c in METHOD_AND_HOST_CASES]
)
def test_method_and_host_identifier(req: Head, expected: str) -> None:
    assert MethodAndHostIdentifierConfig().build().identify(req).path == Path.read(expected)


def test_method_and_host_needs_host_on_http_1_1() -> None:
    with pytest.raises(IdentificationError, match="Host header is absent"):
        MethodAndHostIdentifierConfig().build().identify(Head())


def test_static_identifier() -> None:
    identifier = StaticIdentifierConfig(path="/accounts").build()
    assert identifier.identify(Head()).path == Path.read("/svc/accounts")
    assert StaticIdentifierConfig().build().identify(host("x")).path == Path.read("/svc")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: HeaderIdentifierConfig(header="bad header"), "header must be a header field name"),
        (lambda: HeaderIdentifierConfig(prefix="svc"), "prefix must be a path"),
        (lambda: PathIdentifierConfig(segments=0), "segments must be a whole number"),
        (lambda: PathIdentifierConfig(segments=True), "segments must be a whole number"),
        (lambda: StaticIdentifierConfig(path="x"), "path must be a path"),
        (lambda: MethodAndHostIdentifierConfig(prefix="/a/"), "prefix must be a path"),
    ],
)
def test_configs_reject_bad_values(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("kind", sorted(IDENTIFIERS))
def test_registry_kinds_build_with_defaults(kind: str) -> None:
    config_class = IDENTIFIERS[kind]
    assert config_class.KIND == kind
    identifier = config_class().build()
    assert identifier.identify(Head(target="/a/b", headers={"host": "h"})).path.starts_with(Path.read("/svc"))


def test_helpers() -> None:
    assert authority_of("http://u:p@Host:1/x") == "Host:1"
    assert authority_of("/x") is None and authority_of("host:443") is None
    assert host_label(" Host.Example:80 ") == "host.example"
    cache: LookupCache[str, int] = LookupCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("c", 3)
    assert len(cache) == 1 and cache.get("a") is None and cache.get("c") == 3
