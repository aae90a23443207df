"""Problems that are not about one value's type: unknown, missing and duplicate keys, YAML syntax,
invariants from __post_init__, collecting every problem at once, and how ConfigError reads."""

from __future__ import annotations

import pathlib

import pytest

from meshd.config import ConfigError, ConfigProblem, load_config, load_config_file
from tests.meshd.config.trees import AdminConfig, MeshConfig, ServerConfig


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(text, MeshConfig)
    return info.value.problems


# --- unknown, missing and duplicate keys ---


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("prot", 'unknown key "prot"; did you mean "port"?'),
        ("Port", 'unknown key "Port"; did you mean "port"?'),
        ("enable_5xx_page", 'unknown key "enable_5xx_page"; did you mean "enable5XXPage"?'),
        ("enable5xxPage", 'unknown key "enable5xxPage"; did you mean "enable5XXPage"?'),
        ("zzz", 'unknown key "zzz"; known keys: ip, port, enable5XXPage'),
    ],
)
def test_unknown_key_is_an_error_with_a_suggestion(key: str, message: str) -> None:
    assert problems_of(f"routers: []\nadmin:\n  ip: 0.0.0.0\n  {key}: 1\n") == [
        ConfigProblem(f"admin.{key}", 4, message)
    ]


def test_missing_required_key_is_reported_at_its_mapping() -> None:
    assert problems_of("admin: {}\n") == [ConfigProblem("", 1, 'missing required key "routers"')]
    assert problems_of("routers:\n  - dtab: /svc => /#/fs\n") == [
        ConfigProblem("routers[0]", 2, 'missing required key "label"')
    ]


def test_duplicate_key_is_an_error_at_the_second_occurrence() -> None:
    text = "routers: []\nadmin:\n  port: 1\n  ip: 0.0.0.0\n  port: 2\n"
    assert problems_of(text) == [ConfigProblem("admin.port", 5, 'duplicate key "port" (first at line 3)')]


def test_duplicate_key_does_not_hide_problems_in_other_keys() -> None:
    text = "routers: []\nadmin: {port: 1, port: 2, ip: 5}\n"
    assert problems_of(text) == [
        ConfigProblem("admin.port", 2, 'duplicate key "port" (first at line 2)'),
        ConfigProblem("admin.ip", 2, "expected a string, got 5 (quote it to make it a string)"),
    ]


def test_duplicate_top_level_key() -> None:
    assert problems_of("routers: []\nrouters: []\n") == [
        ConfigProblem("routers", 2, 'duplicate key "routers" (first at line 1)')
    ]


# --- YAML syntax ---


@pytest.mark.parametrize(
    ("text", "line", "column", "message"),
    [
        (
            "routers: []\nadmin: {port: 1\n",
            3,
            1,
            "YAML syntax error: expected ',' or '}', but got '<stream end>' (while parsing a flow mapping at line 2)",
        ),
        (
            "routers: []\nadmin:\n  ip: a\n port: 2\n",
            4,
            2,
            "YAML syntax error: expected <block end>, but found '<block mapping start>' "
            "(while parsing a block mapping at line 1)",
        ),
        (
            "a: 1\n\tb: 2\n",
            2,
            1,
            "YAML syntax error: found character '\\t' that cannot start any token (while scanning for the next token)",
        ),
        ("a: *nope\n", 1, 4, "YAML syntax error: found undefined alias 'nope'"),
        (
            "a: 1\n---\nb: 2\n",
            2,
            1,
            "YAML syntax error: but found another document (expected a single document in the stream at line 1)",
        ),
        (
            "a: 1\nb: \x07\n",
            2,
            4,
            "YAML syntax error: unacceptable character #x0007: special characters are not allowed",
        ),
    ],
)
def test_yaml_syntax_error_has_line_and_column(text: str, line: int, column: int, message: str) -> None:
    assert problems_of(text) == [ConfigProblem("", line, message, column=column)]


def test_syntax_error_reads_as_line_and_column() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("a: [1\n", MeshConfig)
    assert str(info.value).startswith("line 2, column 1: YAML syntax error: ")


# --- __post_init__ invariants ---


def test_invariant_with_a_key_prefix_points_at_that_key() -> None:
    text = "routers:\n  - label: a\n    loadBalancer:\n      kind: ewma\n      decayTimeMs: -1\n"
    assert problems_of(text) == [
        ConfigProblem("routers[0].loadBalancer.decayTimeMs", 5, "must be positive, got -1")
    ]


def test_invariant_prefixed_with_the_python_field_name_points_at_the_yaml_key() -> None:
    text = "routers:\n  - label: a\n    service:\n      responseClassifier: nonRetryable5XX\n      totalTimeoutMs: 0\n"
    assert problems_of(text) == [
        ConfigProblem("routers[0].service.totalTimeoutMs", 5, "must be positive, got 0")
    ]


def test_invariant_naming_a_key_not_in_the_mapping_is_reported_at_the_mapping() -> None:
    # maxMs is not written (it defaults to 1000), so there is no line for it: report the mapping.
    text = "routers:\n  - label: a\n    service:\n      backoff:\n        minMs: 5000\n"
    assert problems_of(text) == [
        ConfigProblem("routers[0].service.backoff", 4, "maxMs: must be at least minMs (5000), got 1000")
    ]


def test_invariant_without_a_key_prefix_is_reported_at_the_mapping() -> None:
    text = "routers:\n  - label: a\n    servers:\n      - {port: 80}\n      - {port: 80}\n"
    assert problems_of(text) == [ConfigProblem("routers[0]", 2, "servers must not share a port")]


def test_invariant_is_not_checked_when_a_part_already_failed() -> None:
    # The duplicate port would break the router's invariant, but the bad ip is the only report.
    text = "routers:\n  - label: a\n    servers: [{port: 80}, {port: 80, ip: 1}]\n"
    assert [p.path for p in problems_of(text)] == ["routers[0].servers[1].ip"]


# --- collecting ---


def test_every_problem_in_the_file_is_collected_in_file_order() -> None:
    text = """\
admin:
  port: 0
  colour: blue
namers:
  - {kind: fs}
routers:
  - label: out
    servers:
      - {ip: 127.0.0.1, port: 41x0}
    loadBalancer: {kind: ewma, decayTimeMs: 0}
    service:
      responseClassifier: always
      percentCanRetry: 2
  - label: in
    tls: maybe
    headers: {a: 1}
  - servers: []
"""
    assert problems_of(text) == [
        ConfigProblem("admin.port", 2, "expected an integer 1-65535, got 0"),
        ConfigProblem("admin.colour", 3, 'unknown key "colour"; known keys: ip, port, enable5XXPage'),
        ConfigProblem("namers[0]", 5, 'missing required key "rootDir"'),
        ConfigProblem("routers[0].servers[0].port", 9, 'expected an integer 1-65535, got "41x0"'),
        ConfigProblem("routers[0].loadBalancer.decayTimeMs", 10, "must be positive, got 0"),
        ConfigProblem(
            "routers[0].service.responseClassifier",
            12,
            'expected one of "retryableIdempotent5XX", "nonRetryable5XX", "retryableRead5XX", got "always"',
        ),
        ConfigProblem("routers[0].service.percentCanRetry", 13, "expected a number 0.0-1.0, got 2"),
        ConfigProblem("routers[1].tls", 15, 'expected true or false, got "maybe"'),
        ConfigProblem("routers[1].headers.a", 16, "expected a string, got 1 (quote it to make it a string)"),
        ConfigProblem("routers[2]", 17, 'missing required key "label"'),
    ]


def test_valid_file_loads_the_whole_tree() -> None:
    text = (
        "admin: {port: 9991, enable5XXPage: false}\nrouters:\n  - label: out\n    servers: [{port: 4141}]\n"
    )
    config = load_config(text, MeshConfig)
    assert config.admin == AdminConfig(port=9991, enable_5xx_page=False)
    assert config.routers[0].label == "out"
    assert config.routers[0].servers == (ServerConfig(port=4141),)


# --- how the error reads ---


def test_problem_string_forms() -> None:
    assert str(ConfigProblem("a.b", 3, "bad")) == "a.b: line 3: bad"
    assert str(ConfigProblem("", 3, "bad")) == "line 3: bad"
    assert str(ConfigProblem("a", None, "bad")) == "a: bad"
    assert str(ConfigProblem("", 2, "bad", column=5)) == "line 2, column 5: bad"


def test_format_names_the_source_and_quotes_the_lines() -> None:
    text = "routers:\n  - label: out\n    servers: [{port: 0}]\nadmin: {ip: 1}\n"
    with pytest.raises(ConfigError) as info:
        load_config(text, MeshConfig, source="meshd.yaml")
    assert info.value.source == "meshd.yaml"
    assert info.value.format() == (
        "meshd.yaml: 2 problems found:\n"
        "  routers[0].servers[0].port: line 3: expected an integer 1-65535, got 0\n"
        "       3 |     servers: [{port: 0}]\n"
        "  admin.ip: line 4: expected a string, got 1 (quote it to make it a string)\n"
        "       4 | admin: {ip: 1}"
    )


def test_format_points_at_the_column_of_a_syntax_error() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("a: 1\nb: c: d\n", MeshConfig, source="x.yaml")
    assert info.value.format() == (
        "x.yaml: 1 problem found:\n"
        "  line 2, column 5: YAML syntax error: mapping values are not allowed here\n"
        "       2 | b: c: d\n"
        "         |     ^"
    )


def test_config_error_needs_a_problem() -> None:
    with pytest.raises(ValueError):
        ConfigError([])


# --- files ---


def test_load_config_file_uses_the_path_as_source(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "meshd.yaml"
    path.write_text("routers: []\nadmin: {port: 80}\n", encoding="utf-8")
    assert load_config_file(path, MeshConfig).admin.port == 80
    path.write_text("routers: []\nadmin: {port: 0}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(str(path), MeshConfig)
    assert info.value.source == str(path)
    assert info.value.format().startswith(f"{path}: 1 problem found:")


def test_unreadable_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config_file(missing, MeshConfig)
    [problem] = info.value.problems
    assert (problem.path, problem.line) == ("", None)
    assert problem.message.startswith("cannot read the file: ")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config_file(binary, MeshConfig)
