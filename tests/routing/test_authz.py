"""The authorization policy (routing/authz.py) and its section of the routes file."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.authz import DEFAULT_RULE, Policy, build_policy
from routing.path import Path
from routing.rules import RoutesError, load_routes

PAYMENTS = "spiffe://bank.local/ns/bank/sa/payments"
ACCOUNTS = "spiffe://bank.local/ns/bank/sa/accounts"
WEB = "spiffe://bank.local/ns/web/sa/frontend"


def policy(default: str = "deny") -> Policy:
    return build_policy(
        [
            ("ledger-callers", "/svc/ledger", [PAYMENTS, ACCOUNTS]),
            ("bank-internal", "/svc/*", ["spiffe://bank.local/ns/bank/*"]),
        ],
        default,
    )


@pytest.mark.parametrize(
    ("name", "identity", "denied_by"),
    [
        ("/svc/ledger", PAYMENTS, None),
        ("/svc/ledger", ACCOUNTS, None),
        ("/svc/ledger", "spiffe://bank.local/ns/bank/sa/outbox", "ledger-callers"),  # first match decides
        ("/svc/ledger/v2", WEB, "ledger-callers"),
        ("/svc/accounts", "spiffe://bank.local/ns/bank/sa/outbox", None),
        ("/svc/accounts", WEB, "bank-internal"),
        ("/svc/accounts", "", "bank-internal"),  # no certificate: matches no pattern
        ("/other/x", PAYMENTS, DEFAULT_RULE),
    ],
)
def test_the_first_matching_rule_decides(name: str, identity: str, denied_by: str | None) -> None:
    assert policy().denied_by(Path.read(name), identity) == denied_by


def test_default_allow_lets_uncovered_names_through() -> None:
    assert policy("allow").denied_by(Path.read("/other/x"), "") is None
    assert policy("allow").denied_by(Path.read("/svc/ledger"), WEB) == "ledger-callers"


def test_a_star_pattern_is_any_authenticated_caller_and_stars_elsewhere_are_refused() -> None:
    anyone = build_policy([("any", "/svc", ["*"])])
    assert anyone.denied_by(Path.read("/svc/a"), WEB) is None
    assert anyone.denied_by(Path.read("/svc/a"), "") == "any"
    with pytest.raises(ValueError, match="may only end"):
        build_policy([("bad", "/svc", ["spiffe://*/sa/x"])])
    with pytest.raises(ValueError, match="used twice"):
        build_policy([("a", "/svc", ["*"]), ("a", "/x", ["*"])])


identities = st.sampled_from([PAYMENTS, ACCOUNTS, WEB, "", "payments.bank.local"])
names = st.lists(st.sampled_from(["svc", "ledger", "accounts", "x"]), min_size=1, max_size=3).map(Path)
patterns = st.sampled_from([PAYMENTS, ACCOUNTS, "spiffe://bank.local/ns/bank/*", "*", "payments.*"])
rules = st.lists(
    st.tuples(st.sampled_from(["/svc", "/svc/ledger", "/svc/*", "/x", "/*/ledger"]), st.lists(patterns, max_size=3)),
    max_size=4,
)


@given(rules, st.booleans(), names, identities)
def test_a_decision_is_the_first_matching_rules_verdict(
    given_rules: list[tuple[str, list[str]]], default_allow: bool, name: Path, identity: str
) -> None:
    built = build_policy([(f"r{i}", p, a) for i, (p, a) in enumerate(given_rules)], "allow" if default_allow else "deny")
    expected: str | None = None if default_allow else DEFAULT_RULE
    for i, (prefix, allow) in enumerate(given_rules):
        labels = prefix.strip("/").split("/")
        if len(labels) <= len(name) and all(p in ("*", n) for p, n in zip(labels, name, strict=False)):
            ok = bool(identity) and any(
                identity == a or (a.endswith("*") and identity.startswith(a[:-1])) for a in allow
            )
            expected = None if ok else f"r{i}"
            break
    assert built.denied_by(name, identity) == expected


ROUTES = """\
dtab: |
  /svc => /#/fs;
authorization:
  default: allow
  rules:
    - name: ledger-callers
      prefix: /svc/ledger
      allow:
        - spiffe://bank.local/ns/bank/sa/payments
"""


def test_the_routes_file_carries_a_policy() -> None:
    routes = load_routes(ROUTES, "routes.yaml")
    assert routes.authorization is not None
    assert routes.authorization.default_allow
    assert routes.authorization.denied_by(Path.read("/svc/ledger"), WEB) == "ledger-callers"
    assert routes.authorization.rules[0].line == 6
    assert load_routes("dtab: /svc => /#/fs;\n", "r.yaml").authorization is None


@pytest.mark.parametrize(
    ("text", "where", "line", "words"),
    [
        ("authorization:\n  default: maybe\n", "authorization.default", 2, "must be allow or deny"),
        ("authorization:\n  rules:\n    - name: a\n      prefix: /svc\n", "authorization.rules[0]", 3, "needs 'allow'"),
        ("authorization:\n  rules:\n    - {name: a, prefix: /svc, allow: [x*y]}\n", "authorization.rules[0].allow[0]", 3, "may only end"),
        ("authorization:\n  rules:\n    - {name: a, prefix: /svc, allow: [x]}\n    - {name: a, prefix: /x, allow: [x]}\n",
         "authorization.rules[1].name", 4, "already used on line 3"),
        ("authorization:\n  rulez: []\n", "authorization.rulez", 2, 'did you mean "rules"'),
    ],
)
def test_a_bad_policy_in_the_routes_file_names_its_path_and_line(text: str, where: str, line: int, words: str) -> None:
    with pytest.raises(RoutesError) as caught:
        load_routes(text, "routes.yaml")
    assert caught.value.where == where and caught.value.line == line and words in caught.value.reason
