"""Plug-in fields: `kind:` picks the config class from the field's registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.config import ConfigError, ConfigProblem, load_config
from tests.meshd.config.trees import (
    DnsNamerConfig,
    EwmaConfig,
    FsNamerConfig,
    LeastLoadedConfig,
    MeshConfig,
    RoundRobinConfig,
)


def router(body: str) -> str:
    """A config with one router whose extra keys are `body` (indented under it), starting at line 3."""
    indented = "".join(f"    {line}\n" for line in body.splitlines())
    return f"routers:\n  - label: out\n{indented}"


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(text, MeshConfig)
    return info.value.problems


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("loadBalancer: {kind: ewma, decayTimeMs: 5}", EwmaConfig(decay_time_ms=5)),
        ("loadBalancer: {kind: roundRobin}", RoundRobinConfig()),
        ("loadBalancer: {kind: leastLoaded, maxPending: 3}", LeastLoadedConfig(max_pending=3)),
        ("loadBalancer:\n  kind: leastLoaded", LeastLoadedConfig()),
    ],
)
def test_kind_picks_the_class(body: str, expected: object) -> None:
    config = load_config(router(body), MeshConfig)
    assert config.routers[0].load_balancer == expected
    assert type(config.routers[0].load_balancer) is type(expected)


def test_without_kind_the_class_of_the_default_is_used() -> None:
    config = load_config(router("loadBalancer: {decayTimeMs: 7}"), MeshConfig)
    assert config.routers[0].load_balancer == EwmaConfig(decay_time_ms=7)
    assert load_config(router(""), MeshConfig).routers[0].load_balancer == EwmaConfig()


def test_without_kind_and_without_a_default_lists_known_kinds() -> None:
    # backupBalancer defaults to None, so there is no class to fall back on.
    assert problems_of(router("backupBalancer: {maxPending: 2}")) == [
        ConfigProblem(
            "routers[0].backupBalancer", 3, 'missing "kind" (known kinds: ewma, roundRobin, leastLoaded)'
        )
    ]


def test_optional_plugin_accepts_null_and_a_kind() -> None:
    assert load_config(router("backupBalancer: null"), MeshConfig).routers[0].backup_balancer is None
    config = load_config(router("backupBalancer: {kind: roundRobin}"), MeshConfig)
    assert config.routers[0].backup_balancer == RoundRobinConfig()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "loadBalancer: {kind: ewmaa}",
            'unknown kind "ewmaa" (known kinds: ewma, roundRobin, leastLoaded); did you mean "ewma"?',
        ),
        (
            "loadBalancer: {kind: random}",
            'unknown kind "random" (known kinds: ewma, roundRobin, leastLoaded)',
        ),
        ("loadBalancer: {kind: 5}", "unknown kind 5 (known kinds: ewma, roundRobin, leastLoaded)"),
        (
            "loadBalancer: {kind: round_robin}",
            'unknown kind "round_robin" (known kinds: ewma, roundRobin, leastLoaded); did you mean "roundRobin"?',
        ),
    ],
)
def test_unknown_kind_is_reported_at_the_kind_key_with_known_kinds(body: str, message: str) -> None:
    assert problems_of(router(body)) == [ConfigProblem("routers[0].loadBalancer.kind", 3, message)]


def test_unknown_kind_hides_the_other_keys_of_that_mapping() -> None:
    # Keys of an unknown kind cannot be checked: only the kind is reported.
    assert [p.path for p in problems_of(router("loadBalancer: {kind: nope, whatever: 1}"))] == [
        "routers[0].loadBalancer.kind"
    ]


def test_key_of_another_kind_is_unknown_for_this_kind() -> None:
    assert problems_of(router("loadBalancer: {kind: roundRobin, decayTimeMs: 5}")) == [
        ConfigProblem(
            "routers[0].loadBalancer.decayTimeMs",
            3,
            'unknown key "decayTimeMs" for kind "roundRobin"; known keys: kind',
        )
    ]


def test_plugin_written_as_a_bare_kind_name_gets_a_hint() -> None:
    assert problems_of(router("loadBalancer: roundRobin")) == [
        ConfigProblem(
            "routers[0].loadBalancer", 3, 'expected a mapping, got "roundRobin"; write {kind: roundRobin}'
        )
    ]


def test_plugin_fields_are_checked_like_any_other() -> None:
    assert problems_of(router("loadBalancer: {kind: leastLoaded, maxPending: 0}")) == [
        ConfigProblem("routers[0].loadBalancer.maxPending", 3, "expected an integer >= 1, got 0")
    ]


def test_tuple_of_plugins_picks_a_class_per_element() -> None:
    text = "namers:\n  - {kind: fs, rootDir: /disco}\n  - kind: dns\n    nameservers: [127.0.0.1:53]\nrouters: []\n"
    config = load_config(text, MeshConfig)
    assert config.namers == (
        FsNamerConfig(root_dir="/disco"),
        DnsNamerConfig(nameservers=("127.0.0.1:53",)),
    )


def test_tuple_of_plugins_reports_each_element_at_its_index_and_line() -> None:
    text = (
        "namers:\n"
        "  - {kind: fs}\n"  # line 2: rootDir is required
        "  - {rootDir: /x}\n"  # line 3: elements have no default kind
        "  - {kind: dns, refreshSecs: 0.1}\n"  # line 4: below min
        "  - {kind: k8s}\n"  # line 5: unknown
        "routers: []\n"
    )
    assert problems_of(text) == [
        ConfigProblem("namers[0]", 2, 'missing required key "rootDir"'),
        ConfigProblem("namers[1]", 3, 'missing "kind" (known kinds: fs, dns)'),
        ConfigProblem("namers[2].refreshSecs", 4, "expected a number >= 0.5, got 0.1"),
        ConfigProblem("namers[3].kind", 5, 'unknown kind "k8s" (known kinds: fs, dns)'),
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class KindClash:
    KIND: ClassVar[str] = "clash"
    kind: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class HoldsClash:
    plugin: KindClash = field(default_factory=KindClash, metadata={"registry": {"clash": KindClash}})


def test_plugin_class_with_a_kind_field_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        load_config("plugin: {kind: clash}", HoldsClash)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=8))
def test_every_bad_element_of_a_list_is_reported_at_its_index_and_line(bad: list[bool]) -> None:
    lines = "".join(f"    - {{kind: {'nope' if is_bad else 'fs'}, rootDir: /d}}\n" for is_bad in bad)
    text = f"routers: []\nnamers:\n{lines}"
    expected = [
        ConfigProblem(f"namers[{i}].kind", i + 3, 'unknown kind "nope" (known kinds: fs, dns)')
        for i, is_bad in enumerate(bad)
        if is_bad
    ]
    if expected:
        assert problems_of(text) == expected
    else:
        assert len(load_config(text, MeshConfig).namers) == len(bad)
