"""Delegation test vectors: the reference's E1-E18 and more, as one table.

Each row binds a path through a dtab, with the mock k8s namer of the reference, and checks
the bound result as `describe()` prints it (`~`, `!`, `$`, a bound id with its residual, or
a union) or the start of the error message.
"""

from __future__ import annotations

import pytest

from routing.delegate import DelegationError, bind, describe, parse_dtab_header
from routing.dtab import Dtab
from routing.parser import parse_dtab
from routing.path import Path
from tests.routing.fakes import FakeNamer, k8s_namer, namers

B = "/k8s => /#/io.l5d.k8s; /srv => /k8s/prod/http; /svc => /srv;"
K = "/#/io.l5d.k8s/prod/http"
S = "/#/io.l5d.k8s/staging/http"
HANDLER = "/env => /#/io.l5d.k8s; /s# => /env/prod/http; /svc => /s#;"
CHAIN = "/a => /b; /b => /c; /c => /$/inet/h/1;"

VECTORS: list[tuple[str, str, str, str]] = [
    # id, dtab, path, expected result (or "error: <start of message>")
    ("E1", B, "/svc/users", f"{K}/users"),
    ("E2", B, "/svc/users/v1/list", f"{K}/users (residual /v1/list)"),
    ("E3", B + "/svc/users => /srv/users-v2;", "/svc/users", f"{K}/users-v2"),
    ("E4", B + "/svc/users => /srv/users-v3;", "/svc/users", f"{K}/users"),
    (
        "E6",
        B + "/svc/users => 9 * /srv/users & 1 * /srv/users-v2;",
        "/svc/users",
        f"9.00*{K}/users & {K}/users-v2",
    ),
    ("E7", B + "/svc/users => 0.5 * /srv/users & 0.5 * /srv/nope;", "/svc/users", f"{K}/users"),
    ("E8", B + "/srv => /k8s/prod/http | /k8s/staging/http;", "/svc/search", f"{S}/search"),
    ("E9", B + "/srv => /k8s/prod/http | /k8s/staging/http;", "/svc/books", f"{K}/books"),
    ("E10", B + "/svc/users => !;", "/svc/users", "!"),
    ("E11", B + "/svc/users => ~;", "/svc/users", f"{K}/users"),
    ("E12", B + "/svc/users => $;", "/svc/users", "$"),
    ("E13", "/http/1.1/* => /svc;" + B, "/http/1.1/GET/users", f"{K}/users"),
    ("E14", "/svc => /$/inet/127.1/8080;", "/svc/foo/bar", "/$/inet/127.1/8080 (residual /foo/bar)"),
    ("E15", "/ph => /$/io.buoyant.rinet; /svc => /ph/80;", "/svc/example.com", "/$/inet/example.com/80"),
    ("E16", B, "/svcx/users", "~"),
    (
        "E17",
        B + "/svc/users => (/srv/nope | /srv/users-v2) & /srv/users;",
        "/svc/users",
        f"{K}/users-v2 & {K}/users",
    ),
    ("E18", "/a => /b; /b => /a;", "/a/x", "error: Max recursion level: 100 reached"),
    # fallbacks
    ("alt-all-neg", B + "/srv => /k8s/prod/http | /k8s/staging/http;", "/svc/nothing", "~"),
    ("alt-empty-stops", B + "/svc/users => $ | /srv/users;", "/svc/users", "$"),
    ("alt-fail-later", B + "/svc/users => /srv/users | !;", "/svc/users", f"{K}/users"),
    ("alt-neg-then-fail", B + "/svc/users => /srv/nope | ! | /srv/users;", "/svc/users", "!"),
    (
        "alt-nested",
        B + "/svc/users => (/srv/a | (/srv/b | /srv/users-v2)) | /srv/users;",
        "/svc/users",
        f"{K}/users-v2",
    ),
    (
        "earlier-dentry-fallback",
        B + "/svc/users => /srv/nope; /svc/users => /srv/nada;",
        "/svc/users",
        f"{K}/users",
    ),
    # residuals and wildcards
    (
        "residual-through-wildcard",
        "/http/1.1/* => /svc;" + B,
        "/http/1.1/GET/users/a/b",
        f"{K}/users (residual /a/b)",
    ),
    (
        "wildcard-middle",
        B + "/env/*/users => /srv/users-v2;",
        "/env/eu/users/x",
        f"{K}/users-v2 (residual /x)",
    ),
    ("wildcard-needs-a-segment", "/http/* => /svc;" + B, "/http", "~"),
    ("empty-prefix-matches-all", "/ => !;", "/users/z", "!"),
    (
        "empty-prefix-matches-its-own-rewrite",
        "/ => /#/io.l5d.k8s/prod/http;",
        "/users",
        "error: Max recursion level",
    ),
    ("segment-not-substring", B, "/sv/users", "~"),
    ("longer-prefix-not-matching", B + "/svc/users/admin => !;", "/svc/users/x", f"{K}/users (residual /x)"),
    # weights and unions
    ("union-all-neg", B + "/svc/users => /srv/a & /srv/b;", "/svc/users", f"{K}/users"),
    ("union-fail-dropped", B + "/svc/users => /srv/users & !;", "/svc/users", f"{K}/users"),
    (
        "union-keeps-empty",
        B + "/svc/users => 0.5*/srv/users & 0.5*$;",
        "/svc/users",
        f"0.50*{K}/users & 0.50*$",
    ),
    (
        "union-zero-weight-kept",
        B + "/svc/users => 0*/srv/users & 1*/srv/users-v2;",
        "/svc/users",
        f"0.00*{K}/users & {K}/users-v2",
    ),
    (
        "union-nested",
        B + "/svc/users => 2*(/srv/users & /srv/users-v2) & /srv/books;",
        "/svc/users",
        f"2.00*({K}/users & {K}/users-v2) & {K}/books",
    ),
    # escapes and comments
    ("escape-in-path", B, "/svc/\\x75sers", f"{K}/users"),
    ("escape-in-dtab", B + "/svc/\\x61 => /srv/users-v2;", "/svc/a", f"{K}/users-v2"),
    (
        "comments",
        "# base\n/k8s => /#/io.l5d.k8s; # namer\n/svc => /k8s/prod/http # env\n;",
        "/svc/users",
        f"{K}/users",
    ),
    # empty dtabs, trailing ';'
    ("empty-dtab", "", "/svc/users", "~"),
    ("empty-dtab-inet", "", "/$/inet/10.0.0.1/80/x", "/$/inet/10.0.0.1/80 (residual /x)"),
    ("empty-dtab-namer", "", "/#/io.l5d.k8s/prod/http/users", f"{K}/users"),
    ("only-semicolons", ";;;", "/svc/users", "~"),
    ("trailing-semicolon", "/svc => /#/io.l5d.k8s/prod/http;", "/svc/users", f"{K}/users"),
    # system namers
    ("inet-port-only", "/svc => /$/inet/8080;", "/svc/x", "/$/inet/8080 (residual /x)"),
    ("nil-is-empty", "/svc => /$/nil;", "/svc/x", "$"),
    ("fail-namer", "/svc => /$/fail;", "/svc/x", "!"),
    ("unknown-system-namer", "/svc => /$/nope;", "/svc/x", "error: no system namer 'nope'"),
    ("inet-without-port", "/svc => /$/inet;", "/svc/x", "error: /$/inet needs"),
    (
        "unknown-system-namer-in-union-is-dropped",
        B + "/svc/users => /srv/users & /$/nope;",
        "/svc/users",
        f"{K}/users",
    ),
    # the handler idiom: staging overrides prod, prod is the fallback
    ("handler-prod-only", HANDLER + "/s# => /env/staging/http;", "/svc/users", f"{K}/users"),
    ("handler-staging-only", HANDLER + "/s# => /env/staging/http;", "/svc/search", f"{S}/search"),
    ("handler-both", HANDLER + "/s# => /env/staging/http;", "/svc/books", f"{S}/books"),
    # loops
    ("self-loop", "/svc => /svc/x;", "/svc/a", "error: Max recursion level: 100 reached"),
    ("loop-behind-fallback", "/a => /a/x | /$/inet/h/1;", "/a", "error: Max recursion level: 100 reached"),
    ("chain", CHAIN, "/a/r", "/$/inet/h/1 (residual /r)"),
]


@pytest.mark.parametrize(("dtab", "path", "expected"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_delegation_vector(dtab: str, path: str, expected: str) -> None:
    result = _result(parse_dtab(dtab), path)
    if expected.startswith("error:"):
        assert result.startswith(expected)
    else:
        assert result == expected


def test_vector_table_is_big_enough_and_covers_the_reference() -> None:
    ids = {v[0] for v in VECTORS}
    assert {f"E{i}" for i in range(1, 19)} - {"E5"} <= ids  # E5 is the header case below
    assert len(VECTORS) >= 40


def test_e5_local_dtab_from_header_wins_over_the_base() -> None:
    local = parse_dtab_header("/svc/users => /srv/users-v2")
    assert _result(parse_dtab(B) + local, "/svc/users") == f"{K}/users-v2"


def test_e5_ctx_dtab_then_dtab_header_order() -> None:
    ctx = parse_dtab_header("/svc/users => /srv/users-v2")
    own = parse_dtab_header("/svc/users => /srv/users")
    assert _result(parse_dtab(B) + ctx + own, "/svc/users") == f"{K}/users"


def test_depth_limit_is_exact() -> None:
    # /a (depth 0) -> /b (1) -> /c (2) -> /$/inet/h/1 (3) -> the bound name (4)
    dtab = parse_dtab(CHAIN)
    assert describe(bind(dtab, Path.read("/a"), {}, max_depth=4).tree) == "/$/inet/h/1"
    with pytest.raises(DelegationError, match="Max recursion level: 3 reached"):
        bind(dtab, Path.read("/a"), {}, max_depth=3)


def _result(dtab: Dtab, path: str) -> str:
    try:
        binding = bind(dtab, Path.read(path), namers(k8s_namer()))
    except DelegationError as exc:
        return f"error: {exc.message}"
    assert not binding.pending
    return describe(binding.tree)


def test_namer_is_asked_the_path_after_its_prefix() -> None:
    fs = FakeNamer("/#/fs", ["accounts"])
    binding = bind(parse_dtab("/svc => /#/fs;"), Path.read("/svc/accounts/x"), namers(fs))
    assert fs.asked == [Path.read("/accounts/x")]
    assert describe(binding.tree) == "/#/fs/accounts (residual /x)"
