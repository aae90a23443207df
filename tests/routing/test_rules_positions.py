"""Positions of dtab mistakes, counted in the file: a property test over block literals and
one-line scalars, for the routing file and for meshd.yaml's router `dtab`, and the "did you
mean" rule both loaders share."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshd.config import ConfigError, load_config
from meshd.config.model import MeshdConfig
from routing.rules import RoutesError, load_routes
from routing.suggest import closest, did_you_mean

LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
DENTRY = st.builds(lambda a, b: f"/{a} => /#/fs/{b};", LABEL, LABEL)
BAD = st.builds(lambda a, b: f"/{a} /{b};", LABEL, LABEL)  # no '=>': the error is at the second path


@st.composite
def block_with_a_mistake(draw: st.DrawFn) -> tuple[list[str], int]:
    """Dtab lines (some blank) with exactly one bad dentry; returns the lines and its index."""
    lines = draw(st.lists(st.one_of(DENTRY, st.just("")), min_size=0, max_size=6))
    at = draw(st.integers(0, len(lines)))
    lines.insert(at, draw(BAD))
    if not lines[0].strip():  # a block literal's first line sets its indentation
        lines[0] = "/x => /y;"
        if at == 0:
            at = 1
            lines.insert(1, draw(BAD))
    return lines, at


def _expected(lines: list[str], at: int, indent: int, first_line: int) -> tuple[int, int]:
    bad = lines[at]
    column = bad.index(" /") + 2  # the second path
    return first_line + at, indent + column


@given(block_with_a_mistake(), st.integers(2, 8), st.sampled_from(["|", "|-", "|+"]))
def test_a_mistake_in_a_routes_block_is_reported_at_its_file_line_and_column(
    case: tuple[list[str], int], indent: int, indicator: str
) -> None:
    lines, at = case
    pad = " " * indent
    body = "\n".join(pad + line if line else "" for line in lines)
    text = f"# routes\ndtab: {indicator}\n{body}\nrules: []\n"
    with pytest.raises(RoutesError) as info:
        load_routes(text, "routes.yaml")
    line, column = _expected(lines, at, indent, first_line=3)
    assert (info.value.where, info.value.line, info.value.column) == ("dtab", line, column)
    assert text.split("\n")[line - 1][column - 1] == "/"


@given(block_with_a_mistake(), st.integers(6, 10))
def test_a_mistake_in_a_router_dtab_block_is_reported_at_its_file_line_and_column(
    case: tuple[list[str], int], indent: int
) -> None:
    lines, at = case
    pad = " " * indent
    body = "\n".join(pad + line if line else "" for line in lines)
    text = f"routers:\n  - label: outgoing\n    dtab: |\n{body}\n    client: {{pool: {{maxConnections: 0}}}}\n"
    with pytest.raises(ConfigError) as info:
        load_config(text, MeshdConfig)
    line, column = _expected(lines, at, indent, first_line=4)
    dtab_problems = [p for p in info.value.problems if p.path == "routers[0].dtab"]
    assert [(p.line, p.column) for p in dtab_problems] == [(line, column)]
    assert any(p.path == "routers[0].client.pool.maxConnections" for p in info.value.problems)  # both reported
    assert text.split("\n")[line - 1][column - 1] == "/"


@pytest.mark.parametrize(
    ("scalar", "column"),
    [("/svc /x", 16), ("'/svc /x'", 17), ('"/svc /x"', 17)],
)
def test_one_line_scalars_count_their_quotes(scalar: str, column: int) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(f"routers:\n  - label: a\n    dtab: {scalar}\n", MeshdConfig)
    (problem,) = info.value.problems
    assert (problem.path, problem.line, problem.column) == ("routers[0].dtab", 3, column)
    assert problem.message == "expected '=>', found '/'"


@pytest.mark.parametrize(
    ("word", "options", "meant"),
    [
        ("io.l5d.k8s", ["fs", "dns", "k8s"], "k8s"),
        ("io.l5d.fs", ["fs", "dns", "k8s"], "fs"),
        ("io.l5d.dnssrv", ["fs", "dns", "k8s"], "dns"),
        ("io.l5d.header.token", ["header", "path", "methodAndHost", "static"], "header"),
        ("io.l5d.methodAndHost", ["header", "path", "methodAndHost", "static"], "methodAndHost"),
        ("io.l5d.http.retryableRead5XX", ["nonRetryable5XX", "retryableRead5XX"], "retryableRead5XX"),
        ("io.l5d.k8s.daemonset", ["daemonset", "localnode"], "daemonset"),
        ("io.l5d.consecutiveFailures", ["consecutiveFailures", "successRate", "none"], "consecutiveFailures"),
        ("decay_time_ms", ["decayTimeMs", "maxEffort"], "decayTimeMs"),
        ("dts", ["name", "prefix", "dst", "weights"], "dst"),
        ("baseDtab", ["label", "dtab", "routes"], "dtab"),
        ("zzz", ["fs", "dns"], None),
        ("io.l5d.consul", ["fs", "dns", "k8s"], None),
    ],
)
def test_suggestions_are_the_same_for_every_kind_and_key(word: str, options: list[str], meant: str | None) -> None:
    assert closest(word, options) == meant
    assert did_you_mean(word, options) == (f'; did you mean "{meant}"?' if meant else "")
