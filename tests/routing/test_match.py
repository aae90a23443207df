"""Rules with `match:`: how they load (and how mistakes are reported), and how they match requests."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routing.match import HeaderMatch, Match, matched_dtab, request_path
from routing.path import Path
from routing.rules import RoutesError, load_routes


@dataclass
class Req:
    method: str = "GET"
    target: str = "/"
    headers: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def rules_text(match: str) -> str:
    return "rules:\n  - name: r\n    prefix: /svc/accounts\n    match:\n" + textwrap.indent(match, "      ") + "    dst: /#/fs/v2\n"


def test_a_match_rule_is_not_in_the_dtab_and_becomes_a_match_rule() -> None:
    routes = load_routes(rules_text("headers:\n  x-user: 42\n  x-team: {prefix: pay}\nmethod: GET\npathPrefix: /v2\n"), "r.yaml")
    assert routes.dtab.show() == ""
    (rule,) = routes.match_rules
    assert rule.dentry == "/svc/accounts=>/#/fs/v2" and rule.name == "r"
    assert rule.match == Match((HeaderMatch("x-user", "42"), HeaderMatch("x-team", "pay", "prefix")), "GET", "/v2")
    assert routes.rules[0].to_json()["match"] == {
        "headers": {"x-user": {"exact": "42"}, "x-team": {"prefix": "pay"}}, "method": "GET", "pathPrefix": "/v2"}


@pytest.mark.parametrize(
    ("match", "where", "reason"),
    [
        ("headers:\n  x-user: {regex: '(a)\\1'}\n", "rules[0].match.headers.x-user.regex",
         "RE2 cannot use this pattern: invalid escape sequence: \\1 (RE2 has no backreferences or lookaround)"),
        ("headers:\n  x-user: {regex: '(?=a)b'}\n", "rules[0].match.headers.x-user.regex",
         "RE2 cannot use this pattern: invalid perl operator: (?="),
        ("headers:\n  x-user: {regex: '.{1000}'}\n", "rules[0].match.headers.x-user.regex",
         "the pattern compiles to 8004 RE2 instructions, over the limit of 200"),
        ("headers:\n  x-user: {regex: '(a{1000}){1000}'}\n", "rules[0].match.headers.x-user.regex",
         "RE2 cannot use this pattern: invalid repetition size"),
        ("headers:\n  x-user: {regex: '\\pL{1000}'}\n", "rules[0].match.headers.x-user.regex",
         "the pattern is too large for RE2's memory limit of 1024 KiB"),
        ("headers:\n  x-user: {regex: '" + "a" * 1001 + "'}\n", "rules[0].match.headers.x-user.regex",
         "the pattern is 1001 characters, over the limit of 1000"),
        ("headers:\n  x-user: {exact: a, prefix: b}\n", "rules[0].match.headers.x-user", "give one of exact, prefix and regex"),
        ("headers:\n  x user: a\n", "rules[0].match.headers.x user", 'expected a header name, got "x user"'),
        ("headers:\n  x-user: [a]\n", "rules[0].match.headers.x-user", "expected a value, or {exact: ...}"),
        ("headers: {}\n", "rules[0].match.headers", "expected a mapping from header name to value"),
        ("method: get\n", "rules[0].match.method", 'expected an HTTP method in capitals (GET, POST, ...), got "get"'),
        ("pathPrefix: v2\n", "rules[0].match.pathPrefix", 'expected a path starting with "/" (no query), got "v2"'),
        ("header: {x: 1}\n", "rules[0].match.header", 'unknown key "header"; did you mean "headers"?'),
        ("{}\n", "rules[0].match", "give at least one of headers, method and pathPrefix"),
    ],
)
def test_mistakes_in_a_match_are_reported_at_their_key(match: str, where: str, reason: str) -> None:
    with pytest.raises(RoutesError) as info:
        load_routes(rules_text(match), "r.yaml")
    assert [(p.where, p.reason[: len(reason)]) for p in info.value.problems] == [(where, reason)]


@pytest.mark.parametrize(
    ("request_", "applies"),
    [
        (Req(headers={"x-user": "42"}), True),
        (Req(headers={"x-user": "420"}), False),
        (Req(headers={}), False),
        (Req(method="POST", headers={"x-user": "42"}), False),
    ],
)
def test_conditions_all_hold(request_: Req, applies: bool) -> None:
    (rule,) = load_routes(rules_text("headers: {x-user: 42}\nmethod: GET\n"), "r.yaml").match_rules
    assert matched_dtab([rule], Path.read("/svc/accounts"), request_) == ("/svc/accounts=>/#/fs/v2" if applies else "")
    assert matched_dtab([rule], Path.read("/svc/books"), request_) == ""  # only the names under its prefix


@pytest.mark.parametrize(
    ("target", "path"),
    [("/a/b?x=1", "/a/b"), ("http://h:80/a?q", "/a"), ("http://h", "/"), ("/", "/")],
)
def test_request_path(target: str, path: str) -> None:
    assert request_path(target) == path


SEGMENT = st.text(alphabet="abc", min_size=1, max_size=3)


@given(st.lists(SEGMENT, max_size=4), st.lists(SEGMENT, max_size=4))
def test_path_prefix_matches_whole_segments(prefix: list[str], path: list[str]) -> None:
    match = Match(path_prefix="/" + "/".join(prefix))
    holds = match.holds(Req(target="/" + "/".join(path)))
    assert holds == (path[: len(prefix)] == prefix)


def fault_rule(fault: str, extra: str = "") -> str:
    return f"rules:\n  - name: f\n    prefix: /svc/a\n    fault: {fault}\n{extra}"


def test_a_fault_rule_has_no_destination_and_is_not_in_the_dtab() -> None:
    routes = load_routes(fault_rule("{share: 0.1, abort: 503}"), "r.yaml")
    assert routes.dtab.show() == "" and routes.match_rules == ()
    (rule,) = routes.fault_rules
    assert rule.fault is not None and (rule.fault.share, rule.fault.abort, rule.fault.kind) == (0.1, 503, "abort")
    assert routes.rules[0].to_json()["fault"] == {"share": 0.1, "abort": 503} and "dst" not in routes.rules[0].to_json()


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (fault_rule("{share: 0.1, abort: 503}", "    dst: /x\n"), "rules[0]", "a fault rule has no destination"),
        (fault_rule("{share: 0, abort: 503}"), "rules[0].fault.share", "expected a fraction > 0 and <= 1, got 0"),
        (fault_rule("{share: 2, abort: 503}"), "rules[0].fault.share", "expected a fraction > 0 and <= 1, got 2"),
        (fault_rule("{share: 0.5, abort: 200}"), "rules[0].fault.abort", "expected an integer 400-599, got 200"),
        (fault_rule("{share: 0.5, abort: 503, delayMs: 5}"), "rules[0].fault", 'give exactly one of "abort"'),
        (fault_rule("{abort: 503}"), "rules[0].fault", 'missing required key "share"'),
        (fault_rule("{share: 0.5, delayMs: 0}"), "rules[0].fault.delayMs", "expected an integer 1-60000, got 0"),
    ],
)
def test_fault_mistakes(text: str, where: str, reason: str) -> None:
    with pytest.raises(RoutesError) as info:
        load_routes(text, "r.yaml")
    assert [(p.where, p.reason[: len(reason)]) for p in info.value.problems] == [(where, reason)]


def test_a_regex_condition_loads_and_shows_as_written() -> None:
    routes = load_routes(rules_text("headers:\n  x-user: {regex: '(user|admin)-[0-9]{1,6}'}\n"), "r.yaml")
    (rule,) = routes.match_rules
    assert rule.match == Match((HeaderMatch("x-user", "(user|admin)-[0-9]{1,6}", "regex"),))
    assert routes.rules[0].to_json()["match"] == {"headers": {"x-user": {"regex": "(user|admin)-[0-9]{1,6}"}}}


@pytest.mark.parametrize(
    ("value", "holds"),
    [
        ("user-42", True),
        ("admin-123456", True),
        ("user-1234567", False),  # too many digits
        ("xuser-42", False),  # anchored at the start, as Envoy's safe_regex
        ("user-42x", False),  # and at the end
        ("user-42\n", False),
        ("", False),
    ],
)
def test_a_regex_matches_the_whole_value(value: str, holds: bool) -> None:
    (rule,) = load_routes(rules_text("headers:\n  x-user: {regex: '(user|admin)-[0-9]{1,6}'}\n"), "r.yaml").match_rules
    assert rule.match.holds(Req(headers={"x-user": value})) is holds
    assert rule.match.holds(Req()) is False  # no header, no match


def test_a_refused_regex_is_reported_at_its_own_line_with_the_others() -> None:
    text = (
        "rules:\n"
        "  - name: a\n"
        "    prefix: /svc/a\n"
        "    match:\n"
        "      headers:\n"
        "        x-user: {regex: '(a)\\1'}\n"
        "    dst: /#/fs/a2\n"
        "  - name: b\n"
        "    prefix: /svc/b\n"
        "    match:\n"
        "      headers:\n"
        "        x-team:\n"
        "          regex: 'x{999}y{999}'\n"
        "    dst: /#/fs/b2\n"
    )
    with pytest.raises(RoutesError) as info:
        load_routes(text, "r.yaml")
    assert [(p.where, p.line) for p in info.value.problems] == [
        ("rules[0].match.headers.x-user.regex", 6),
        ("rules[1].match.headers.x-team.regex", 13),
    ]
    assert "r.yaml: rules[1].match.headers.x-team.regex: line 13: the pattern compiles to" in str(info.value)


@given(st.text(alphabet="ab", max_size=40))
def test_re2_full_match_agrees_with_python_re(value: str) -> None:
    # the same answers as Python's backtracking engine on patterns both accept
    import re

    for pattern in ["(a|b)*b", "a+b?", "(ab)*", ".*ba.*", "[ab]{2,5}"]:
        expected = re.fullmatch(pattern, value) is not None
        assert HeaderMatch("x", pattern, "regex").holds(Req(headers={"x": value})) is expected


def test_a_backtracking_shape_costs_linear_time() -> None:
    # `(a+)+b` against "aaaa…a" takes exponential time in a backtracking engine; RE2 answers at once.
    # The bound is generous (about 1,000 times what RE2 takes here) and still far below what a
    # backtracking engine needs for 30 characters, let alone 60,000.
    import time

    match = HeaderMatch("x", "(a+)+b", "regex")
    start = time.process_time()
    assert match.holds(Req(headers={"x": "a" * 60_000})) is False
    assert time.process_time() - start < 0.5


def mirror_rule(mirror: str, extra: str = "") -> str:
    return f"rules:\n  - name: m\n    prefix: /svc/a\n    mirror: {mirror}\n{extra}"


def test_a_mirror_rule_has_no_destination_of_its_own_and_keeps_its_limits() -> None:
    routes = load_routes(mirror_rule("{dst: /#/fs/a-shadow, share: 0.1, maxInFlight: 5, timeoutMs: 200}"), "r.yaml")
    assert routes.dtab.show() == "" and routes.match_rules == () and routes.fault_rules == ()
    (rule,) = routes.mirror_rules
    assert rule.mirror is not None
    assert (rule.mirror.dst.show(), rule.mirror.share, rule.mirror.max_in_flight, rule.mirror.max_body_bytes,
            rule.mirror.timeout_ms) == ("/#/fs/a-shadow", 0.1, 5, 65536, 200)
    assert routes.rules[0].to_json()["mirror"] == {
        "dst": "/#/fs/a-shadow", "share": 0.1, "maxInFlight": 5, "maxBodyBytes": 65536, "timeoutMs": 200}


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        (mirror_rule("{dst: /s, share: 0.1}", "    dst: /x\n"), "rules[0]", "a mirror rule has no destination of its own"),
        (mirror_rule("{dst: /s, share: 0.1}", "    fault: {share: 1, abort: 503}\n"), "rules[0]",
         'give "fault" or "mirror", not both'),
        (mirror_rule("{share: 0.1}"), "rules[0].mirror", 'missing required key "dst"'),
        (mirror_rule("{dst: /s}"), "rules[0].mirror", 'missing required key "share"'),
        (mirror_rule("{dst: s, share: 0.1}"), "rules[0].mirror.dst", "expected a path starting with '/'"),
        (mirror_rule("{dst: /s, share: 0}"), "rules[0].mirror.share", "expected a fraction > 0 and <= 1, got 0"),
        (mirror_rule("{dst: /s, share: 1, maxInFlight: 0}"), "rules[0].mirror.maxInFlight", "expected an integer 1-10000"),
        (mirror_rule("{dst: /s, share: 1, timeoutMs: 0}"), "rules[0].mirror.timeoutMs", "expected an integer 1-60000"),
        (mirror_rule("{dst: /s, share: 1, maxBody: 5}"), "rules[0].mirror.maxBody",
         'unknown key "maxBody"; did you mean "maxBodyBytes"?'),
    ],
)
def test_mirror_mistakes(text: str, where: str, reason: str) -> None:
    with pytest.raises(RoutesError) as info:
        load_routes(text, "r.yaml")
    assert [(p.where, p.reason[: len(reason)]) for p in info.value.problems] == [(where, reason)]
