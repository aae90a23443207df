"""Transformers: the daemonset and localnode rules, their live plumbing, their config, and the fs
metadata tokens (`node=`, `zone=`) that let loopback tests place replicas on nodes."""

from __future__ import annotations

import pathlib
import random

import pytest
import yaml

from meshd.config.errors import ConfigError
from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from meshd.discovery.addr import PENDING, Addr, Address, Bound, Failed, Neg
from meshd.discovery.fs import FileFormatError, FsNamer, FsNamerConfig, parse_endpoints_file
from meshd.observable import Observable
from meshd.runtime import Runtime
from meshd.transformers import (
    TRANSFORMERS,
    VIA,
    DaemonSetConfig,
    DaemonSetTransformer,
    LocalNodeConfig,
    LocalNodeTransformer,
    is_forwarded,
    on_node,
    through_daemons,
)
from routing.path import Path

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
ID = Path.read("/#/fs/accounts")


def pod(port: int, node: str | None, weight: float = 1.0, host: str = "10.0.0.1") -> Address:
    return Address(host, port, weight=weight, node_name=node)


def daemon(node: str | None, port: int = 4141, host: str = "10.9.0.1") -> Address:
    """A meshd pod of the DaemonSet, as the k8s namer reports it."""
    return Address(host, port, node_name=node, meta=(("pod", f"meshd-{node}"),))


def shown(addresses: frozenset[Address]) -> dict[str, float]:
    return {a.show(): a.weight for a in addresses}


# -- the daemonset rule --------------------------------------------------------------------------


def test_each_replica_is_replaced_by_the_meshd_of_its_node_weighted_by_its_replicas():
    a, b = daemon("node-a", host="10.9.0.1"), daemon("node-b", host="10.9.0.2")
    replicas = frozenset({pod(1, "node-a"), pod(2, "node-a", weight=2.0), pod(3, "node-b")})
    out = through_daemons(replicas, frozenset({a, b}), "direct")
    assert shown(out) == {"10.9.0.1:4141": 3.0, "10.9.0.2:4141": 1.0}
    gateway = next(x for x in out if x.host == "10.9.0.1")
    assert gateway.node_name == "node-a"
    assert dict(gateway.meta) == {"pod": "meshd-node-a", VIA: "daemonset"}
    assert all(is_forwarded(x) for x in out)


def test_replicas_on_a_node_without_meshd_are_sent_to_directly_or_dropped():
    a = daemon("node-a", host="10.9.0.1")
    on_c, nameless = pod(3, "node-c"), pod(4, None)
    replicas = frozenset({pod(1, "node-a"), on_c, nameless})
    direct = through_daemons(replicas, frozenset({a}), "direct")
    assert shown(direct) == {"10.9.0.1:4141": 1.0, "10.0.0.1:3": 1.0, "10.0.0.1:4": 1.0}
    assert not is_forwarded(on_c) and not is_forwarded(nameless)
    assert shown(through_daemons(replicas, frozenset({a}), "drop")) == {"10.9.0.1:4141": 1.0}


def test_two_meshds_on_one_node_share_its_weight():
    old, new = daemon("node-a", host="10.9.0.1"), daemon("node-a", host="10.9.0.7")
    replicas = frozenset({pod(1, "node-a"), pod(2, "node-a")})
    assert shown(through_daemons(replicas, frozenset({old, new}), "direct")) == {
        "10.9.0.1:4141": 1.0,
        "10.9.0.7:4141": 1.0,
    }


def test_while_the_daemons_are_unknown_direct_sends_directly_and_drop_sends_nowhere():
    replicas = frozenset({pod(1, "node-a"), pod(2, "node-b")})
    assert through_daemons(replicas, None, "direct") == replicas
    assert through_daemons(replicas, None, "drop") == frozenset()
    assert through_daemons(replicas, frozenset(), "direct") == replicas
    nameless = daemon(None, host="10.9.0.9")
    assert through_daemons(replicas, frozenset({nameless}), "direct") == replicas  # no node: matches nothing


# -- the localnode rule --------------------------------------------------------------------------


def test_localnode_keeps_the_replicas_of_its_node():
    replicas = frozenset({pod(1, "node-a"), pod(2, "node-b"), pod(3, "node-a"), pod(4, None)})
    assert {a.port for a in on_node(replicas, "node-a", "all")} == {1, 3}
    assert {a.port for a in on_node(replicas, "node-a", "none")} == {1, 3}


def test_localnode_without_a_local_replica_uses_all_or_none():
    replicas = frozenset({pod(2, "node-b"), pod(4, None)})
    assert on_node(replicas, "node-a", "all") == replicas
    assert on_node(replicas, "node-a", "none") == frozenset()
    assert on_node(frozenset(), "node-a", "all") == frozenset()


# -- live plumbing -------------------------------------------------------------------------------


def counting(obs: Observable[Addr]) -> list[Addr]:
    seen: list[Addr] = []
    obs.subscribe(seen.append, replay=False)
    return seen


def test_daemonset_follows_replica_and_daemon_changes_and_publishes_only_changes():
    daemons: Observable[Addr] = Observable(PENDING)
    replicas: Observable[Addr] = Observable(Bound(frozenset({pod(1, "node-a")})))
    transformer = DaemonSetTransformer(Path.read("/#/fs/meshd"), daemons, "direct")
    out = transformer.transform(ID, replicas)
    seen = counting(out)
    assert out.get() == replicas.get()  # daemons not known yet: direct
    assert transformer.statistics().known is False

    daemons.set(Bound(frozenset({daemon("node-a", host="10.9.0.1")})))
    assert shown(out.get().addresses) == {"10.9.0.1:4141": 1.0}  # type: ignore[union-attr]
    replicas.set(Bound(frozenset({pod(1, "node-a"), pod(5, "node-a")})))
    assert shown(out.get().addresses) == {"10.9.0.1:4141": 2.0}  # type: ignore[union-attr]
    replicas.set(Bound(frozenset({pod(1, "node-a"), pod(6, "node-a")})))  # same gateway, same weight
    assert len(seen) == 2

    daemons.set(Failed("API down"))  # the last known daemons keep serving
    assert shown(out.get().addresses) == {"10.9.0.1:4141": 2.0}  # type: ignore[union-attr]
    daemons.set(Neg())  # the daemon service is gone: direct
    assert shown(out.get().addresses) == {"10.0.0.1:1": 1.0, "10.0.0.1:6": 1.0}  # type: ignore[union-attr]
    assert len(seen) == 3
    stats = transformer.statistics()
    assert (stats.path, stats.known, stats.daemons, stats.clients) == ("/#/fs/meshd", True, (), 1)


@pytest.mark.parametrize("state", [PENDING, Neg(), Failed("unreadable")])
def test_replica_states_other_than_bound_pass_through(state: Addr):
    daemons: Observable[Addr] = Observable(Bound(frozenset({daemon("node-a")})))
    replicas: Observable[Addr] = Observable(state)
    assert DaemonSetTransformer(Path.read("/#/fs/meshd"), daemons, "direct").transform(ID, replicas).get() == state
    assert LocalNodeTransformer("node-a", "all").transform(ID, replicas).get() == state


def test_localnode_follows_its_input():
    replicas: Observable[Addr] = Observable(Bound(frozenset({pod(1, "node-a"), pod(2, "node-b")})))
    out = LocalNodeTransformer("node-b", "all").transform(ID, replicas)
    assert {a.port for a in out.get().addresses} == {2}  # type: ignore[union-attr]
    replicas.set(Bound(frozenset({pod(1, "node-a"), pod(3, "node-a")})))  # node-b's replica stopped
    assert {a.port for a in out.get().addresses} == {1, 3}  # type: ignore[union-attr]


# -- configuration -------------------------------------------------------------------------------


def config_with(transformers: object, router: dict[str, object] | None = None) -> str:
    return yaml.safe_dump({
        "namers": [{"kind": "fs", "rootDir": "disco"}],
        "routers": [{"label": "outgoing", "transformers": transformers, **(router or {})}],
    })


def test_yaml_transformers_load_into_their_classes_in_order():
    text = config_with([
        {"kind": "localnode", "nodeName": "node-a", "fallback": "none"},
        {"kind": "daemonset", "path": "/#/fs/meshd"},
    ])
    [router] = load_config(text, MeshdConfig).routers
    assert router.transformers == (
        LocalNodeConfig(node_name="node-a", fallback="none"),
        DaemonSetConfig(path="/#/fs/meshd", fallback="direct"),
    )
    assert load_config(config_with([]), MeshdConfig).routers[0].transformers == ()


@pytest.mark.parametrize(
    ("transformers", "where", "message"),
    [
        ([{"kind": "daemonsets", "path": "/#/fs/x"}], ".kind", "known kinds: daemonset, localnode"),
        ([{"kind": "daemonset"}], "", "path"),
        ([{"kind": "daemonset", "path": "/svc/meshd"}], ".path", "must be a bound name served by a namer"),
        ([{"kind": "daemonset", "path": "no-slash"}], ".path", ""),
        ([{"kind": "daemonset", "path": "/#/fs/x", "fallback": "retry"}], ".fallback", "direct"),
        ([{"kind": "localnode", "nodeName": " "}], ".nodeName", "must not be empty"),
    ],
)
def test_bad_transformer_config_is_an_error_at_its_line(transformers, where, message):
    with pytest.raises(ConfigError) as caught:
        load_config(config_with(transformers), MeshdConfig)
    [problem] = caught.value.problems
    assert problem.path == "routers[0].transformers[0]" + where
    assert problem.line is not None and message in problem.message


@pytest.mark.parametrize("kind", sorted(TRANSFORMERS))
def test_every_kind_is_a_frozen_config_named_in_the_docs(kind):
    config = TRANSFORMERS[kind]
    assert config.KIND == kind
    assert getattr(config, "__dataclass_params__").frozen and hasattr(config, "__slots__")  # noqa: B009
    assert f"`{kind}`" in (DOCS / "configuration.md").read_text()
    assert f"kind: {kind}" in (DOCS / "kubernetes.md").read_text()


def runtime(tmp_path: pathlib.Path) -> Runtime:
    return Runtime(rng=random.Random(1), base_dir=tmp_path)


def test_daemonset_resolves_its_path_with_the_longest_matching_namer(tmp_path: pathlib.Path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "meshd").write_text("127.0.0.1 4141 node=node-a\n")
    rt = runtime(tmp_path)
    short, long = FsNamer(FsNamerConfig(root_dir="a", prefix="/#"), rt), FsNamer(FsNamerConfig(root_dir="b"), rt)
    long.scan()
    transformer = DaemonSetConfig(path="/#/fs/meshd").build(rt, {short.prefix: short, long.prefix: long})
    assert transformer.statistics().daemons == ("127.0.0.1:4141",)
    assert transformer.statistics().nodes == ("node-a",)


def test_daemonset_without_a_namer_for_its_path_does_not_build(tmp_path: pathlib.Path):
    rt = runtime(tmp_path)
    namer = FsNamer(FsNamerConfig(root_dir="disco"), rt)
    with pytest.raises(ValueError, match=r"no namer serves /#/k8s/mesh/incoming/meshd \(namer prefixes: /#/fs\)"):
        DaemonSetConfig(path="/#/k8s/mesh/incoming/meshd").build(rt, {namer.prefix: namer})


def test_localnode_takes_its_node_from_config_or_node_name_env(tmp_path, monkeypatch: pytest.MonkeyPatch):
    rt = runtime(tmp_path)
    monkeypatch.setenv("NODE_NAME", "node-env")
    assert LocalNodeConfig().build(rt, {}).node == "node-env"
    assert LocalNodeConfig(node_name="node-cfg").build(rt, {}).node == "node-cfg"
    monkeypatch.delenv("NODE_NAME")
    with pytest.raises(ValueError, match=r"nodeName is not set and \$NODE_NAME is empty"):
        LocalNodeConfig().build(rt, {})


# -- fs line format: metadata tokens -------------------------------------------------------------


def test_fs_lines_carry_node_and_zone_after_the_weight():
    text = (
        "10.0.0.1 80\n"
        "10.0.0.2 80 2 node=node-a zone=eu-1a  # two tokens\n"
        "10.0.0.3 81 node=node-b\n"
        "[::1] 82 zone=eu-1b\n"
    )
    assert parse_endpoints_file(text) == frozenset({
        Address("10.0.0.1", 80),
        Address("10.0.0.2", 80, weight=2.0, node_name="node-a", zone="eu-1a"),
        Address("10.0.0.3", 81, node_name="node-b"),
        Address("::1", 82, zone="eu-1b"),
    })


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("10.0.0.1 80 rack=r1", "line 1: unknown metadata 'rack' in 'rack=r1' (known: node, zone)"),
        ("10.0.0.1 80 node=", "line 1: node= needs a value"),
        ("10.0.0.1 80 node=a node=b", "line 1: node= is given twice"),
        ("10.0.0.1 node=a 80", "line 1: expected 'host port [weight] [node=<name>] [zone=<name>]'"),
        ("10.0.0.1 80 node=a 2", "line 1: expected"),
        ("10.0.0.1 80 2 3 node=a", "line 1: expected"),
    ],
)
def test_fs_bad_metadata_is_a_format_error_naming_the_line(line: str, message: str):
    with pytest.raises(FileFormatError) as caught:
        parse_endpoints_file(line)
    assert str(caught.value).startswith(message)
