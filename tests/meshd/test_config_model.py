"""The meshd config tree: defaults, the data plane's limits, and the invariants each class checks.

Loading goes through the real loader (`load_config`), so every problem is also checked to name
its YAML path and line, as `meshd check` prints it.
"""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancers.configs import EwmaConfig
from meshd.config.errors import ConfigError
from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig, PoolConfig, RouterConfig, ServerConfig
from meshd.discovery.fs import FsNamerConfig
from meshd.retry.backoff import RetryJitteredBackoffConfig
from meshd.retry.classifiers import RetryableIdempotent5XXConfig
from routing.identifiers.header import HeaderIdentifierConfig
from routing.identifiers.path import PathIdentifierConfig
from routing.path import Path


def load(text: str) -> MeshdConfig:
    return load_config(textwrap.dedent(text), MeshdConfig)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(text)
    return [str(p) for p in info.value.problems]


MINIMAL = """\
routers:
  - label: outgoing
"""


def test_minimal_file_gets_linkerd_defaults_and_meshds_three_exceptions():
    config = load(MINIMAL)
    assert config.admin.ip == "127.0.0.1" and config.admin.port == 9990
    assert config.drain_timeout_ms == 30_000
    (router,) = config.routers
    assert router.servers == (ServerConfig(),)
    server = router.servers[0]
    assert (server.ip, server.port) == ("127.0.0.1", 4140)
    assert server.max_header_bytes == 64 * 1024
    assert server.header_timeout_ms == 10_000
    assert server.idle_timeout_ms == 60_000
    assert isinstance(router.identifier, HeaderIdentifierConfig) and router.identifier.header == "host"
    assert router.identifier.prefix == "/svc"
    pool = router.client.pool
    assert (pool.max_connections, pool.max_waiters, pool.idle_time_ms, pool.connect_timeout_ms) == (
        1000,
        10_000,
        10_000,
        1000,
    )
    assert router.service.total_timeout_ms is None
    assert router.service.replay_buffer_bytes == 64 * 1024
    # meshd's deliberate differences from linkerd 1
    assert isinstance(router.client.load_balancer, EwmaConfig)
    assert isinstance(router.service.response_classifier, RetryableIdempotent5XXConfig)
    assert isinstance(router.service.retries.backoff, RetryJitteredBackoffConfig)


def test_data_plane_settings_load_from_camel_case_keys():
    config = load(
        """\
        namers:
          - {kind: fs, rootDir: ./disco, pollIntervalMs: 100}
        routers:
          - label: outgoing
            servers:
              - {ip: 0.0.0.0, port: 4140, maxHeaderBytes: 8192, headerTimeoutMs: 2500, idleTimeoutMs: 30000}
              - {ip: "::1", port: 4141}
            identifier: {kind: path, segments: 2, consume: true}
            client:
              pool: {maxConnections: 8, maxWaiters: 0, idleTimeMs: 500, connectTimeoutMs: 250}
        drainTimeoutMs: 0
        """
    )
    router = config.routers[0]
    assert router.servers[0] == ServerConfig(
        ip="0.0.0.0", port=4140, max_header_bytes=8192, header_timeout_ms=2500, idle_timeout_ms=30_000
    )
    assert router.servers[1].ip == "::1"
    assert router.identifier == PathIdentifierConfig(segments=2, consume=True)
    assert router.client.pool == PoolConfig(
        max_connections=8, max_waiters=0, idle_time_ms=500, connect_timeout_ms=250
    )
    assert config.namers == (FsNamerConfig(root_dir="./disco", poll_interval_ms=100),)
    assert config.drain_timeout_ms == 0


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("{port: 41x0}", 'routers[0].servers[0].port: line 4: expected an integer 0-65535, got "41x0"'),
        ("{port: 65536}", "routers[0].servers[0].port: line 4: expected an integer 0-65535, got 65536"),
        ("{port: -1}", "routers[0].servers[0].port: line 4: expected an integer 0-65535, got -1"),
        ("{port: true}", "routers[0].servers[0].port: line 4: expected an integer 0-65535, got true"),
        (
            "{maxHeaderBytes: 1023}",
            "routers[0].servers[0].maxHeaderBytes: line 4: expected an integer 1024-16777216, got 1023",
        ),
        (
            "{maxHeaderBytes: 16777217}",
            "routers[0].servers[0].maxHeaderBytes: line 4: expected an integer 1024-16777216",
        ),
        (
            "{headerTimeoutMs: 0}",
            "routers[0].servers[0].headerTimeoutMs: line 4: expected an integer >= 1, got 0",
        ),
        (
            "{idleTimeoutMs: 0}",
            "routers[0].servers[0].idleTimeoutMs: line 4: expected an integer >= 1, got 0",
        ),
        ("{ip: localhost}", "routers[0].servers[0].ip: line 4: expected an IP address, got 'localhost'"),
        ("{ip: 10.0.0.256}", "routers[0].servers[0].ip: line 4: expected an IP address, got '10.0.0.256'"),
        ("{prot: 80}", 'routers[0].servers[0].prot: line 4: unknown key "prot"'),
    ],
)
def test_server_problems_name_path_and_line(server, expected):
    found = problems(f"routers:\n  - label: outgoing\n    servers:\n      - {server}\n")
    assert len(found) == 1
    assert found[0].startswith(expected)


@pytest.mark.parametrize(
    ("pool", "expected"),
    [
        (
            "{maxConnections: 0}",
            "routers[0].client.pool.maxConnections: line 4: expected an integer >= 1, got 0",
        ),
        ("{maxWaiters: -1}", "routers[0].client.pool.maxWaiters: line 4: expected an integer >= 0, got -1"),
        ("{idleTimeMs: -5}", "routers[0].client.pool.idleTimeMs: line 4: expected an integer >= 0, got -5"),
        (
            "{connectTimeoutMs: 0}",
            "routers[0].client.pool.connectTimeoutMs: line 4: expected an integer >= 1, got 0",
        ),
        (
            "{maxConnections: 1.5}",
            "routers[0].client.pool.maxConnections: line 4: expected an integer >= 1, got 1.5",
        ),
    ],
)
def test_pool_problems_name_path_and_line(pool, expected):
    found = problems(f"routers:\n  - label: outgoing\n    client:\n      pool: {pool}\n")
    assert found == [expected]


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            "client: {maxResponseHeaderBytes: 1023}",
            "routers[0].client.maxResponseHeaderBytes: line 3: expected an integer 1024-16777216, got 1023",
        ),
        (
            "clients: [{prefix: /#/fs/x, maxResponseHeaderBytes: 16777217}]",
            "routers[0].clients[0].maxResponseHeaderBytes: line 3: expected an integer 1024-16777216, got 16777217",
        ),
    ],
)
def test_response_header_limit_problems_name_path_and_line(section, expected):
    assert problems(f"routers:\n  - label: outgoing\n    {section}\n") == [expected]


def test_response_header_limit_defaults_and_overrides_per_prefix():
    config = load_config(
        "routers:\n  - label: outgoing\n    clients: [{prefix: /#/fs/big, maxResponseHeaderBytes: 262144}]\n",
        MeshdConfig,
    )
    router = config.routers[0]
    assert router.client_for(Path.read("/#/fs/accounts")).max_response_header_bytes == 65536
    assert router.client_for(Path.read("/#/fs/big")).max_response_header_bytes == 262144


def test_every_problem_in_the_file_is_reported_in_file_order():
    found = problems(
        """\
        admin: {port: 99999}
        routers:
          - label: outgoing
            servers: [{port: x}]
            client:
              pool: {maxConnections: 0}
        drainTimeoutMs: -1
        """
    )
    assert [p.split(":")[0] for p in found] == [
        "admin.port",
        "routers[0].servers[0].port",
        "routers[0].client.pool.maxConnections",
        "drainTimeoutMs",
    ]


@pytest.mark.parametrize(
    ("router", "expected"),
    [
        (
            "label: 'out going'",
            "routers[0].label: line 2: must be letters, digits, '-', '_' or '.', got 'out going'",
        ),
        ("label: ''", "routers[0].label: line 2: must be letters, digits"),
        ("{label: x, protocol: h3}", "routers[0].protocol: line 2: expected 'http' (HTTP/1.1) or 'h2' (HTTP/2), got 'h3'"),
        ("{label: x, servers: []}", "routers[0].servers: line 2: a router needs at least one server"),
        # the column is counted in the file: just after "/svc => ", inside the quotes
        ("{label: x, dtab: '/svc => '}", "routers[0].dtab: line 2, column 31: expected a path"),
        (
            "{label: x, trustedSources: [10.0.0.0/33]}",
            "routers[0].trustedSources: line 2: '10.0.0.0/33' is not an IP network",
        ),
    ],
)
def test_router_invariants(router, expected):
    found = problems(f"routers:\n  - {router}\n")
    assert len(found) == 1
    assert found[0].startswith(expected)


def test_router_label_is_required():
    found = problems("routers:\n  - dtab: /svc => /#/fs;\n")
    assert len(found) == 1 and "label" in found[0] and "line 2" in found[0]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("routers: []\n", "routers: line 1: at least one router is required"),
        ("admin: {}\n", "routers"),
        (
            "routers:\n  - {label: a}\n  - {label: a}\n",
            "routers: line 1: router labels must be unique, repeated: a",
        ),
        (
            "routers:\n  - {label: a, servers: [{port: 4140}]}\n  - {label: b, servers: [{port: 4140}]}\n",
            "routers: line 1: b and a both listen on 127.0.0.1:4140",
        ),
        (
            "namers:\n  - {kind: fs, rootDir: a}\n  - {kind: fs, rootDir: b}\nrouters:\n  - {label: x}\n",
            "namers: line 1: two namers share the prefix /#/fs",
        ),
    ],
)
def test_whole_file_invariants(text, expected):
    found = problems(text)
    assert len(found) == 1
    assert expected in found[0]


def test_two_routers_may_both_listen_on_port_0():
    config = load("routers:\n  - {label: a, servers: [{port: 0}]}\n  - {label: b, servers: [{port: 0}]}\n")
    assert [r.label for r in config.routers] == ["a", "b"]


def test_the_same_port_on_two_addresses_is_fine():
    config = load(
        "routers:\n  - {label: a, servers: [{ip: 127.0.0.1, port: 80}]}\n"
        "  - {label: b, servers: [{ip: 127.0.0.2, port: 80}]}\n"
    )
    assert len(config.routers) == 2


def test_classes_check_their_invariants_when_built_in_python_too():
    with pytest.raises(ValueError, match="ip: expected an IP address"):
        ServerConfig(ip="nope")
    with pytest.raises(ValueError, match="servers: a router needs at least one server"):
        RouterConfig(label="x", servers=())
    with pytest.raises(ValueError, match="routers: at least one router is required"):
        MeshdConfig(routers=())


@given(
    max_connections=st.integers(1, 1 << 20),
    max_waiters=st.integers(0, 1 << 20),
    idle_time_ms=st.integers(0, 1 << 30),
    max_header_bytes=st.integers(1024, 16 * 1024 * 1024),
    header_timeout_ms=st.integers(1, 1 << 30),
)
def test_any_value_in_range_loads_unchanged(
    max_connections, max_waiters, idle_time_ms, max_header_bytes, header_timeout_ms
):
    config = load(
        f"""\
        routers:
          - label: outgoing
            servers: [{{port: 0, maxHeaderBytes: {max_header_bytes}, headerTimeoutMs: {header_timeout_ms}}}]
            client:
              pool: {{maxConnections: {max_connections}, maxWaiters: {max_waiters}, idleTimeMs: {idle_time_ms}}}
        """
    )
    router = config.routers[0]
    assert router.servers[0].max_header_bytes == max_header_bytes
    assert router.servers[0].header_timeout_ms == header_timeout_ms
    assert router.client.pool == PoolConfig(
        max_connections=max_connections, max_waiters=max_waiters, idle_time_ms=idle_time_ms
    )
