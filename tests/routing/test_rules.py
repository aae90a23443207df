"""The routing file: dtab text plus rules, and errors that point at the YAML."""

from __future__ import annotations

import json
import textwrap

import pytest

from routing.delegate import bind, describe
from routing.dtab import Dtab
from routing.parser import parse_dtab
from routing.path import Path
from routing.rules import Routes, RoutesError, load_routes
from tests.routing.fakes import FakeNamer, namers

GOOD = textwrap.dedent(
    """\
    # routes.yaml
    dtab: |
      /svc => /#/fs;
      /svc/books => /#/fs/books-v1;
    rules:
      - name: accounts-canary
        description: "5% to v2"
        prefix: /svc/accounts
        dst: "0.95 * /#/fs/accounts & 0.05 * /#/fs/accounts-v2"
      - name: books-canary
        prefix: /svc/books
        weights: {/#/fs/books: 90, /#/fs/books-v2: 10}
      - name: paused
        prefix: /svc/users
        dst: /#/fs/users-v2
        enabled: false
    """
)


def load(text: str) -> Routes:
    return load_routes(textwrap.dedent(text), "routes.yaml")


def error(text: str) -> RoutesError:
    with pytest.raises(RoutesError) as info:
        load(text)
    return info.value


def test_rules_are_appended_after_the_dtab_text() -> None:
    routes = load_routes(GOOD, "routes.yaml")
    assert [d.show() for d in routes.dtab.dentries] == [
        "/svc=>/#/fs",
        "/svc/books=>/#/fs/books-v1",
        "/svc/accounts=>0.95*/#/fs/accounts & 0.05*/#/fs/accounts-v2",
        "/svc/books=>0.90*/#/fs/books & 0.10*/#/fs/books-v2",
    ]
    assert routes.text_dtab == parse_dtab("/svc => /#/fs; /svc/books => /#/fs/books-v1")
    assert [(r.name, r.enabled, r.line) for r in routes.rules] == [
        ("accounts-canary", True, 6),
        ("books-canary", True, 10),
        ("paused", False, 13),
    ]
    assert routes.rules[0].description == "5% to v2"


def test_rules_win_and_the_text_is_their_fallback() -> None:
    routes = load_routes(GOOD, "routes.yaml")
    fs = FakeNamer("/#/fs", ["accounts", "accounts-v2", "books-v1", "users"])
    accounts = bind(routes.dtab, Path.read("/svc/accounts"), namers(fs))
    assert describe(accounts.tree) == "0.95*/#/fs/accounts & 0.05*/#/fs/accounts-v2"
    books = bind(routes.dtab, Path.read("/svc/books"), namers(fs))  # the rule's targets are unknown
    assert describe(books.tree) == "/#/fs/books-v1"
    users = bind(routes.dtab, Path.read("/svc/users"), namers(fs))  # the rule is disabled
    assert describe(users.tree) == "/#/fs/users"


def test_to_json() -> None:
    data = load_routes(GOOD, "routes.yaml").to_json()
    assert json.loads(json.dumps(data)) == data
    assert list(data) == ["source", "dtab", "dentries", "rules"]
    dentries, rules = data["dentries"], data["rules"]
    assert isinstance(dentries, list) and isinstance(rules, list)
    assert dentries[2] == {
        "dentry": "/svc/accounts=>0.95*/#/fs/accounts & 0.05*/#/fs/accounts-v2",
        "from": "rule accounts-canary",
    }
    last_rule = rules[2]
    assert isinstance(last_rule, dict) and last_rule["enabled"] is False


@pytest.mark.parametrize("text", ["", "# nothing\n", "dtab:\n", "dtab: ''\nrules: []\n", "rules:\n"])
def test_empty_files_are_empty_routes(text: str) -> None:
    routes = load(text)
    assert routes.dtab == Dtab() and routes.rules == ()


def test_dtab_error_in_a_block_points_at_the_file_line_and_column() -> None:
    err = error(
        """\
        # routes
        dtab: |
          /svc => /#/fs;
          /svc/users /srv;
        """
    )
    assert (err.where, err.line, err.column) == ("dtab", 4, 14)
    assert str(err).splitlines() == [
        "routes.yaml: dtab: line 4, column 14: expected '=>', found '/'",
        "3 |   /svc => /#/fs;",
        "4 |   /svc/users /srv;",
        "  |              ^",
    ]


def test_dtab_error_in_an_indented_block_with_blank_lines() -> None:
    err = error("dtab: |-\n\n      /a => /b;\n\n      /c => \n")
    assert (err.line, err.column) == (5, 13)  # just after "/c => "


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("dtab: /svc => /#/fs; /svc/users /x\n", 1, 33),
        ("dtab: '/svc => /#/fs; /svc/users /x'\n", 1, 34),
        ("x: 1\n", 1, None),
    ],
)
def test_errors_in_one_line_scalars(text: str, line: int, column: int | None) -> None:
    err = error(text)
    assert (err.line, err.column) == (line, column)


ERRORS: list[tuple[str, str, str, int, str]] = [
    # id, text, YAML path, line, start of the reason
    ("unknown-top-key", "dtb: x\n", "dtb", 1, 'unknown key "dtb"; did you mean "dtab"?'),
    ("dtab-not-text", "dtab: [1]\n", "dtab", 1, "expected text, got a list"),
    ("rules-not-a-list", "rules: {a: 1}\n", "rules", 1, "expected a list of rules"),
    ("rule-not-a-mapping", "rules:\n  - just text\n", "rules[0]", 2, "expected a rule (a mapping"),
    ("rule-without-name", "rules:\n  - prefix: /a\n    dst: /b\n", "rules[0]", 2, 'missing required key "name"'),
    ("rule-without-prefix", "rules:\n  - name: a\n    dst: /b\n", "rules[0]", 2, 'missing required key "prefix"'),
    (
        "rule-without-dst",
        "rules:\n  - name: a\n    prefix: /a\n",
        "rules[0]",
        2,
        "a rule needs exactly one of",
    ),
    (
        "rule-with-both",
        "rules:\n  - name: a\n    prefix: /a\n    dst: /b\n    weights: {/c: 1}\n",
        "rules[0]",
        2,
        "a rule needs exactly one of",
    ),
    (
        "unknown-rule-key",
        "rules:\n  - name: a\n    prefix: /a\n    dts: /b\n",
        "rules[0].dts",
        4,
        'unknown key "dts"; did you mean "dst"?',
    ),
    (
        "name-not-text",
        "rules:\n  - name: 3\n    prefix: /a\n    dst: /b\n",
        "rules[0].name",
        2,
        "expected text, got 3",
    ),
    (
        "empty-name",
        "rules:\n  - name: ' '\n    prefix: /a\n    dst: /b\n",
        "rules[0].name",
        2,
        "must not be empty",
    ),
    (
        "bad-enabled",
        "rules:\n  - name: a\n    prefix: /a\n    dst: /b\n    enabled: yes please\n",
        "rules[0].enabled",
        5,
        "expected true or false",
    ),
    (
        "duplicate-name",
        "rules:\n  - name: a\n    prefix: /a\n    dst: /b\n  - name: a\n    prefix: /c\n    dst: /d\n",
        "rules[1].name",
        5,
        'rule name "a" is already used (first at line 2)',
    ),
    ("duplicate-key", "dtab: /a=>/b\ndtab: /c=>/d\n", "dtab", 2, 'duplicate key "dtab" (first at line 1)'),
    (
        "bad-prefix",
        "rules:\n  - name: a\n    prefix: svc\n    dst: /b\n",
        "rules[0].prefix",
        3,
        "expected a prefix",
    ),
    ("bad-dst", "rules:\n  - name: a\n    prefix: /a\n    dst: /b &\n", "rules[0].dst", 4, "expected a path"),
    (
        "weights-not-mapping",
        "rules:\n  - name: a\n    prefix: /a\n    weights: [/b]\n",
        "rules[0].weights",
        4,
        "expected a mapping from destination path to weight",
    ),
    (
        "weight-not-number",
        "rules:\n  - name: a\n    prefix: /a\n    weights: {/b: lots}\n",
        'rules[0].weights["/b"]',
        4,
        'weight must be a number, got "lots"',
    ),
    (
        "negative-weight",
        "rules:\n  - name: a\n    prefix: /a\n    weights:\n      /b: 1\n      /c: -5\n",
        'rules[0].weights["/c"]',
        6,
        "weight must be a finite number >= 0",
    ),
    (
        "weight-bool",
        "rules:\n  - name: a\n    prefix: /a\n    weights: {/b: true}\n",
        'rules[0].weights["/b"]',
        4,
        "weight must be a number",
    ),
    (
        "bad-weight-path",
        "rules:\n  - name: a\n    prefix: /a\n    weights: {b: 1}\n",
        'rules[0].weights["b"]',
        4,
        "expected a path",
    ),
    ("not-a-mapping", "- a\n", "", 1, "the routing file must be a mapping"),
    ("bad-yaml", "dtab: |\n  /a => /b\n rules: x\n: :\n", "", 3, "not valid YAML"),
]


@pytest.mark.parametrize(
    ("text", "where", "line", "reason"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_name_the_yaml_path_and_line(text: str, where: str, line: int, reason: str) -> None:
    err = load_error = error(text)
    assert (err.where, err.line) == (where, line)
    assert err.reason.startswith(reason)
    assert str(load_error).startswith(f"routes.yaml: {where + ': ' if where else ''}line {line}")


def test_weights_single_destination_is_a_plain_path() -> None:
    routes = load("rules:\n  - name: a\n    prefix: /a\n    weights: {/b: 3}\n")
    assert routes.dtab.show() == "/a=>/b"


def test_weights_duplicate_destination() -> None:
    err = error("rules:\n  - name: a\n    prefix: /a\n    weights:\n      /b: 1\n      /\\x62: 2\n")
    assert err.reason == "destination /b is listed twice (first at line 5)"


def test_weights_are_stored_as_fractions_of_their_sum() -> None:
    routes = load("rules:\n  - name: a\n    prefix: /a\n    weights: {/b: 1, /c: 3, /d: 0}\n")
    assert routes.dtab.show() == "/a=>0.25*/b & 0.75*/c & 0.00*/d"
    zero = load("rules:\n  - name: a\n    prefix: /a\n    weights: {/b: 0, /c: 0}\n")
    assert zero.dtab.show() == "/a=>0.00*/b & 0.00*/c"
