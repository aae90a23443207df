"""The naming rule, and iter_fields: the walk over every configurable key that the docs test relies on."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import pytest

from meshd.config import ConfigError, field_yaml_key, iter_fields, load_config, yaml_key
from tests.meshd.config.trees import AdminConfig, Leaves, MeshConfig


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("port", "port"),
        ("decay_time_ms", "decayTimeMs"),
        ("max_retries_per_sec", "maxRetriesPerSec"),
        ("ttl_secs", "ttlSecs"),
        ("enable_5xx_page", "enable5xxPage"),
        ("ip", "ip"),
    ],
)
def test_yaml_key_is_camel_case_of_the_field_name(name: str, key: str) -> None:
    assert yaml_key(name) == key


def test_metadata_overrides_the_yaml_key() -> None:
    by_name = {f.name: f for f in fields(AdminConfig)}
    assert field_yaml_key(by_name["enable_5xx_page"]) == "enable5XXPage"
    assert field_yaml_key(by_name["ip"]) == "ip"
    assert (
        load_config("routers: []\nadmin: {enable5XXPage: false}", MeshConfig).admin.enable_5xx_page is False
    )


def test_iter_fields_lists_every_key_with_list_mapping_and_kind_markers() -> None:
    patterns = [entry.pattern for entry in iter_fields(MeshConfig)]
    assert patterns == [
        "admin",
        "admin.ip",
        "admin.port",
        "admin.enable5XXPage",
        "namers",
        "namers[*][kind=fs].rootDir",
        "namers[*][kind=dns].nameservers",
        "namers[*][kind=dns].refreshSecs",
        "routers",
        "routers[*].label",
        "routers[*].servers",
        "routers[*].servers[*].ip",
        "routers[*].servers[*].port",
        "routers[*].dtab",
        "routers[*].loadBalancer",
        "routers[*].loadBalancer[kind=ewma].decayTimeMs",
        "routers[*].loadBalancer[kind=leastLoaded].maxPending",
        "routers[*].backupBalancer",
        "routers[*].backupBalancer[kind=ewma].decayTimeMs",
        "routers[*].backupBalancer[kind=leastLoaded].maxPending",
        "routers[*].service",
        "routers[*].service.totalTimeoutMs",
        "routers[*].service.responseClassifier",
        "routers[*].service.percentCanRetry",
        "routers[*].service.backoff",
        "routers[*].service.backoff.minMs",
        "routers[*].service.backoff.maxMs",
        "routers[*].headers",
        "routers[*].weights",
        "routers[*].tls",
    ]


def test_iter_fields_gives_the_field_and_its_resolved_type() -> None:
    entries = {entry.pattern: entry for entry in iter_fields(Leaves)}
    assert entries["port"].field.name == "port"
    assert entries["port"].field.metadata["max"] == 65535
    assert entries["maybePort"].type == int | None
    assert entries["labels"].type == Mapping[str, int]
    assert entries["server.port"].type is int


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    name: str = ""
    children: tuple[Node, ...] = ()


def test_recursive_tree_is_listed_once_and_loads_to_any_depth() -> None:
    assert [entry.pattern for entry in iter_fields(Node)] == ["name", "children"]
    tree = load_config("name: a\nchildren: [{name: b, children: [{name: c}]}]", Node)
    assert tree.children[0].children[0].name == "c"


@dataclass(frozen=True, slots=True, kw_only=True)
class Unsupported:
    when: bytes = b""


@dataclass(frozen=True, slots=True, kw_only=True)
class BadUnion:
    value: int | str = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class FixedTuple:
    pair: tuple[int, int] = (0, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Clash:
    max_ms: int = 0
    other: int = field(default=0, metadata={"yaml": "maxMs"})


@pytest.mark.parametrize("cls", [Unsupported, BadUnion, FixedTuple, Clash])
def test_unsupported_config_classes_fail_loudly_for_the_programmer(cls: type) -> None:
    with pytest.raises(TypeError):
        list(iter_fields(cls))


def test_unsupported_type_is_a_type_error_not_a_config_error_when_loading() -> None:
    with pytest.raises(TypeError):
        load_config("when: x", Unsupported)
    with pytest.raises(ConfigError):
        load_config("nope: 1", Unsupported)  # an unknown key is still the user's problem
