"""to_yaml_dict: the inverse of load_config, as /admin/config serves it."""

from __future__ import annotations

import json
from types import MappingProxyType

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshd.config import load_config, to_yaml_dict
from tests.meshd.config.trees import (
    AdminConfig,
    BackoffConfig,
    BalancerConfig,
    DnsNamerConfig,
    EwmaConfig,
    FsNamerConfig,
    LeastLoadedConfig,
    Leaves,
    MeshConfig,
    NamerConfig,
    RoundRobinConfig,
    RouterConfig,
    ServerConfig,
    ServiceConfig,
)


def test_dict_has_yaml_keys_every_field_and_kinds() -> None:
    config = MeshConfig(
        namers=(FsNamerConfig(root_dir="/d"),),
        routers=(
            RouterConfig(label="out", load_balancer=RoundRobinConfig(), headers=MappingProxyType({"a": "b"})),
        ),
    )
    dumped = to_yaml_dict(config)
    assert dumped["admin"] == {"ip": "127.0.0.1", "port": 9990, "enable5XXPage": True}
    assert dumped["namers"] == [{"kind": "fs", "rootDir": "/d"}]
    dumped_routers = dumped["routers"]
    assert isinstance(dumped_routers, list) and len(dumped_routers) == 1
    router = dumped_routers[0]
    assert router["loadBalancer"] == {"kind": "roundRobin"}
    assert router["backupBalancer"] is None
    assert router["servers"] == [{"ip": "127.0.0.1", "port": 4140}]
    assert router["service"]["backoff"] == {"minMs": 10, "maxMs": 1000}
    assert router["headers"] == {"a": "b"}
    json.dumps(dumped)  # plain data all the way down


def test_a_plugin_dumped_on_its_own_names_its_kind() -> None:
    assert to_yaml_dict(EwmaConfig(decay_time_ms=3)) == {"kind": "ewma", "decayTimeMs": 3}


def test_to_yaml_dict_needs_a_dataclass_instance() -> None:
    with pytest.raises(TypeError):
        to_yaml_dict(MeshConfig)
    with pytest.raises(TypeError):
        to_yaml_dict({"a": 1})


# --- round trip: instance -> to_yaml_dict -> yaml.safe_dump -> load_config == instance ---

texts = st.text(max_size=12)
ports = st.integers(min_value=1, max_value=65535)
finite = st.floats(allow_nan=False, allow_infinity=False)

servers = st.builds(ServerConfig, ip=texts, port=ports)
balancers: st.SearchStrategy[BalancerConfig] = st.one_of(
    st.builds(EwmaConfig, decay_time_ms=st.integers(min_value=1)),
    st.builds(RoundRobinConfig),
    st.builds(LeastLoadedConfig, max_pending=st.none() | st.integers(min_value=1)),
)
namers: st.SearchStrategy[NamerConfig] = st.one_of(
    st.builds(FsNamerConfig, root_dir=texts),
    st.builds(
        DnsNamerConfig, nameservers=st.lists(texts, max_size=3).map(tuple), refresh_secs=st.floats(0.5, 1e9)
    ),
)
backoffs = st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)).map(
    lambda pair: BackoffConfig(min_ms=min(pair), max_ms=max(pair))
)
services = st.builds(
    ServiceConfig,
    total_timeout_ms=st.none() | st.integers(min_value=1),
    response_classifier=st.sampled_from(["retryableIdempotent5XX", "nonRetryable5XX", "retryableRead5XX"]),
    percent_can_retry=st.floats(0.0, 1.0),
    backoff=backoffs,
)
routers = st.builds(
    RouterConfig,
    label=texts,
    servers=st.lists(servers, max_size=3, unique_by=lambda s: s.port).map(tuple),
    dtab=texts,
    load_balancer=balancers,
    backup_balancer=st.none() | balancers,
    service=services,
    headers=st.dictionaries(texts, texts, max_size=3).map(MappingProxyType),
    weights=st.dictionaries(texts, finite, max_size=3),
    tls=st.booleans(),
)
meshes = st.builds(
    MeshConfig,
    admin=st.builds(AdminConfig, ip=texts, port=ports, enable_5xx_page=st.booleans()),
    namers=st.lists(namers, max_size=3).map(tuple),
    routers=st.lists(routers, max_size=2).map(tuple),
)
leaves = st.builds(
    Leaves,
    flag=st.booleans(),
    count=st.integers(),
    port=ports,
    floor=st.integers(min_value=0),
    cap=st.integers(max_value=10),
    offset=st.integers(-5, 5),
    ratio=st.floats(allow_nan=False),
    percent=st.floats(0.0, 1.0),
    name=st.text(),
    maybe_port=st.none() | st.integers(),
    tags=st.lists(st.text(), max_size=3).map(tuple),
    ports=st.lists(st.integers(min_value=1), max_size=3).map(tuple),
    mode=st.sampled_from(["fast", "slow"]),
    level=st.sampled_from([1, 2, 3]),
    labels=st.dictionaries(st.text(), st.integers(), max_size=3).map(MappingProxyType),
    weights=st.dictionaries(st.text(), finite, max_size=3),
    server=servers,
    maybe_server=st.none() | servers,
)


@settings(max_examples=150, deadline=None)
@given(meshes)
def test_mesh_config_round_trips_through_yaml(config: MeshConfig) -> None:
    text = yaml.safe_dump(to_yaml_dict(config))
    assert load_config(text, MeshConfig) == config


@settings(max_examples=150, deadline=None)
@given(leaves)
def test_every_leaf_type_round_trips_through_yaml(config: Leaves) -> None:
    text = yaml.safe_dump(to_yaml_dict(config))
    assert load_config(text, Leaves) == config
