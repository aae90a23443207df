"""Type rules: what each supported field type accepts, and the exact message, path and line when it does not."""

from __future__ import annotations

import types

import pytest

from meshd.config import ConfigError, ConfigProblem, load_config
from tests.meshd.config.trees import Leaves, ServerConfig

# Each bad value is written on line 2, after a comment, so the expected line is never just "1".
HEADER = "# leaves\n"


def load_leaves(body: str) -> Leaves:
    return load_config(HEADER + body, Leaves)


def problems_of(body: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_leaves(body)
    return info.value.problems


ACCEPTED = [
    # (yaml, field name, expected value)
    ("flag: true", "flag", True),
    ("flag: yes", "flag", True),  # YAML 1.1, as SafeLoader reads it
    ("flag: off", "flag", False),
    ("count: -3", "count", -3),
    ("count: 0x1F", "count", 31),
    ("count: 1_000", "count", 1000),
    ("port: 1", "port", 1),
    ("port: 65535", "port", 65535),
    ("floor: 0", "floor", 0),
    ("cap: 10", "cap", 10),
    ("cap: -100", "cap", -100),
    ("offset: -5", "offset", -5),
    ("ratio: 2", "ratio", 2.0),  # an integer is accepted for a float
    ("ratio: 1.5e+3", "ratio", 1500.0),
    ("ratio: .inf", "ratio", float("inf")),
    ("percent: 0", "percent", 0.0),
    ("percent: 1.0", "percent", 1.0),
    ("name: accounts", "name", "accounts"),
    ("name: '80'", "name", "80"),
    ("name: !!str 80", "name", "80"),
    ("name: ''", "name", ""),
    ("name: |\n  two\n  lines\n", "name", "two\nlines\n"),
    ("maybePort: 8080", "maybe_port", 8080),
    ("maybePort: null", "maybe_port", None),
    ("maybePort: ~", "maybe_port", None),
    ("maybePort:", "maybe_port", None),
    ("tags: [a, b]", "tags", ("a", "b")),
    ("tags: []", "tags", ()),
    ("tags:\n  - a\n  - b", "tags", ("a", "b")),
    ("ports: [1, 2]", "ports", (1, 2)),
    ("mode: slow", "mode", "slow"),
    ("level: 2", "level", 2),
    ("labels: {a: 1, b: 2}", "labels", {"a": 1, "b": 2}),
    ("labels: {}", "labels", {}),
    ("weights: {x: 1, y: 0.5}", "weights", {"x": 1.0, "y": 0.5}),
    ("server: {ip: 10.0.0.1, port: 80}", "server", ServerConfig(ip="10.0.0.1", port=80)),
    ("server: {}", "server", ServerConfig()),
    ("maybeServer: {port: 81}", "maybe_server", ServerConfig(port=81)),
    ("maybeServer: null", "maybe_server", None),
]


@pytest.mark.parametrize(("body", "name", "expected"), ACCEPTED)
def test_accepted_values_load_with_the_field_type(body: str, name: str, expected: object) -> None:
    value = getattr(load_leaves(body), name)
    assert value == expected
    assert type(value) is type(expected) or isinstance(value, types.MappingProxyType)


REJECTED = [
    # (yaml, path, line, message)
    ("flag: 1", "flag", 2, "expected true or false, got 1"),
    ("flag: 'yes'", "flag", 2, 'expected true or false, got "yes"'),
    ("flag: maybe", "flag", 2, 'expected true or false, got "maybe"'),
    ("count: true", "count", 2, "expected an integer, got true"),
    ("count: '7'", "count", 2, 'expected an integer, got "7"'),
    ("count: 1.5", "count", 2, "expected an integer, got 1.5"),
    ("count: 41x0", "count", 2, 'expected an integer, got "41x0"'),
    ("count:", "count", 2, "expected an integer, got null"),
    ("count: [1]", "count", 2, "expected an integer, got a list"),
    ("count: {a: 1}", "count", 2, "expected an integer, got a mapping"),
    ("port: 41x0", "port", 2, 'expected an integer 1-65535, got "41x0"'),
    ("port: 0", "port", 2, "expected an integer 1-65535, got 0"),
    ("port: 65536", "port", 2, "expected an integer 1-65535, got 65536"),
    ("floor: -1", "floor", 2, "expected an integer >= 0, got -1"),
    ("cap: 11", "cap", 2, "expected an integer <= 10, got 11"),
    ("offset: 6", "offset", 2, "expected an integer from -5 to 5, got 6"),
    ("ratio: false", "ratio", 2, "expected a number, got false"),
    ("ratio: '1.5'", "ratio", 2, 'expected a number, got "1.5"'),
    (
        "ratio: 1e3",  # YAML 1.1 needs a dot and a sign for an exponent
        "ratio",
        2,
        'expected a number, got "1e3" (YAML 1.1 reads an exponent without a dot and sign as text: write 1.0e+3)',
    ),
    ("percent: 1.5", "percent", 2, "expected a number 0.0-1.0, got 1.5"),
    ("percent: -1", "percent", 2, "expected a number 0.0-1.0, got -1"),
    ("name: 80", "name", 2, "expected a string, got 80 (quote it to make it a string)"),
    ("name: yes", "name", 2, "expected a string, got yes (quote it to make it a string)"),
    ("name: 2024-01-01", "name", 2, "expected a string, got 2024-01-01 (quote it to make it a string)"),
    ("name: [a]", "name", 2, "expected a string, got a list"),
    ("name:", "name", 2, "expected a string, got null (quote it to make it a string)"),
    (
        "name: !env HOME",
        "name",
        2,
        "cannot read this value: could not determine a constructor for the tag '!env'",
    ),
    ("maybePort: 0x", "maybePort", 2, 'expected an integer, got "0x"'),
    ("tags: a", "tags", 2, 'expected a list, got "a"'),
    ("tags: {a: 1}", "tags", 2, "expected a list, got a mapping"),
    ("tags: [a, 5]", "tags[1]", 2, "expected a string, got 5 (quote it to make it a string)"),
    ("tags:\n  - a\n  - [b]", "tags[1]", 4, "expected a string, got a list"),
    ("ports: [1, 0]", "ports[1]", 2, "expected an integer >= 1, got 0"),
    ("mode: medium", "mode", 2, 'expected one of "fast", "slow", got "medium"'),
    ("mode: Fast", "mode", 2, 'expected one of "fast", "slow", got "Fast"; did you mean "fast"?'),
    ("mode: sloow", "mode", 2, 'expected one of "fast", "slow", got "sloow"; did you mean "slow"?'),
    ("level: 4", "level", 2, "expected one of 1, 2, 3, got 4"),
    ("level: '1'", "level", 2, 'expected one of 1, 2, 3, got "1"'),
    ("level: true", "level", 2, "expected one of 1, 2, 3, got true"),
    ("labels: [a]", "labels", 2, "expected a mapping, got a list"),
    ("labels: {a: x}", "labels.a", 2, 'expected an integer, got "x"'),
    ("labels: {a b: x}", 'labels["a b"]', 2, 'expected an integer, got "x"'),
    ("labels: {1: 2}", "labels", 2, "keys must be strings, got 1"),
    ("labels:\n  ok: 1\n  bad: no", "labels.bad", 4, "expected an integer, got no"),
    ("weights: {x: y}", "weights.x", 2, 'expected a number, got "y"'),
    ("server: 10.0.0.1", "server", 2, 'expected a mapping, got "10.0.0.1"'),
    ("server:", "server", 2, "expected a mapping, got null"),
    ("server:\n  port: 99999", "server.port", 3, "expected an integer 1-65535, got 99999"),
    ("maybeServer: {port: x}", "maybeServer.port", 2, 'expected an integer 1-65535, got "x"'),
]


@pytest.mark.parametrize(("body", "path", "line", "message"), REJECTED)
def test_rejected_values_name_path_line_and_reason(body: str, path: str, line: int, message: str) -> None:
    assert problems_of(body) == [ConfigProblem(path, line, message)]


def test_error_string_has_one_line_per_problem_in_the_documented_shape() -> None:
    with pytest.raises(ConfigError) as info:
        load_leaves("port: 41x0\nflag: 2\n")
    assert str(info.value) == (
        'port: line 2: expected an integer 1-65535, got "41x0"\nflag: line 3: expected true or false, got 2'
    )


def test_mapping_fields_are_read_only_and_dict_fields_are_dicts() -> None:
    leaves = load_leaves("labels: {a: 1}\nweights: {a: 1}")
    assert isinstance(leaves.labels, types.MappingProxyType)
    with pytest.raises(TypeError):
        leaves.labels["b"] = 2  # type: ignore[index]
    assert type(leaves.weights) is dict


def test_empty_document_gives_all_defaults() -> None:
    assert load_config("", Leaves) == Leaves()
    assert load_config("# only a comment\n", Leaves) == Leaves()


def test_document_that_is_not_a_mapping_is_an_error_at_line_one() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("- a\n- b\n", Leaves)
    assert info.value.problems == [ConfigProblem("", 1, "expected a mapping, got a list")]


def test_anchors_and_merge_keys_work_and_explicit_keys_override() -> None:
    text = "server: &s {ip: 10.0.0.1, port: 80}\nmaybeServer:\n  <<: *s\n  port: 81\n"
    leaves = load_config(text, Leaves)
    assert leaves.server == ServerConfig(ip="10.0.0.1", port=80)
    assert leaves.maybe_server == ServerConfig(ip="10.0.0.1", port=81)


def test_problem_in_an_alias_points_at_the_anchor_line_and_the_using_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("server: &b {port: 0}\nmaybeServer: *b\n", Leaves)
    assert info.value.problems == [
        ConfigProblem("server.port", 1, "expected an integer 1-65535, got 0"),
        ConfigProblem("maybeServer.port", 1, "expected an integer 1-65535, got 0"),
    ]


def test_number_beyond_the_float_range_is_an_error_not_a_crash() -> None:
    [problem] = problems_of("ratio: 1" + "0" * 400)
    assert (problem.path, problem.line) == ("ratio", 2)
    assert problem.message.startswith("expected a number, got 1000")
    assert problem.message.endswith("... (too large)")


def test_first_merged_mapping_wins_and_merged_keys_are_not_duplicates() -> None:
    text = "server:\n  <<: [{port: 5}, {port: 6, ip: x}]\n  ip: y\n"
    assert load_config(text, Leaves).server == ServerConfig(ip="y", port=5)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("server: {<<: 5}", "expected a mapping, got 5"),
        ("? [a]\n: 1", "keys must be strings, got a list"),
        ("~: 1", "keys must be strings, got null"),
    ],
)
def test_bad_keys_and_merges_are_reported_at_their_mapping(body: str, message: str) -> None:
    [problem] = problems_of(body)
    assert problem.line == 2
    assert problem.message == message
