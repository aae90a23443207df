"""`routesConfigMap`: what the config accepts, and what `meshd check` says about it."""

from __future__ import annotations

import pathlib

import pytest

from meshd.config import ConfigError, ConfigProblem, load_config
from meshd.config.checks import run_check
from meshd.config.model import MeshdConfig, RoutesConfigMapConfig

K8S = "namers:\n  - kind: k8s\n"
ROUTER = "routers:\n  - label: outgoing\n    routesConfigMap: {namespace: mesh, name: meshd-routes}\n"


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_config(text, MeshdConfig)
    return info.value.problems


def test_defaults_and_the_first_k8s_namer() -> None:
    config = load_config(K8S + ROUTER, MeshdConfig)
    assert config.routers[0].routes_config_map == RoutesConfigMapConfig(namespace="mesh", name="meshd-routes")
    assert config.routers[0].routes_config_map.key == "routes.yaml"
    assert config.routers[0].routes_config_map.describe() == "configmap mesh/meshd-routes key routes.yaml"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (ROUTER, ConfigProblem("routers", 1, "router outgoing, routesConfigMap: meshd reads ConfigMaps through a k8s "
                                          "namer's API connection; configure a namer of kind k8s")),
        (K8S + ROUTER.replace("}", ", namer: /#/kube}"),
         ConfigProblem("routers", 3, "router outgoing, routesConfigMap.namer: no k8s namer has the prefix /#/kube "
                                     "(k8s namers: /#/k8s)")),
        (K8S + ROUTER + "    routes: routes.yaml\n",
         ConfigProblem("routers[0].routesConfigMap", 5, "give routes (a file) or routesConfigMap, not both")),
        (K8S + ROUTER.replace("meshd-routes", "Meshd_Routes"),
         ConfigProblem("routers[0].routesConfigMap.name", 5,
                       "must be a Kubernetes name (lower-case letters, digits, '-' and '.'), got 'Meshd_Routes'")),
        (K8S + ROUTER.replace("}", ", key: 'a/b'}"),
         ConfigProblem("routers[0].routesConfigMap.key", 5,
                       "a ConfigMap key is letters, digits, '-', '_' or '.', got 'a/b'")),
    ],
    ids=["no-k8s-namer", "unknown-namer", "both-forms", "bad-name", "bad-key"],
)
def test_mistakes_are_refused_with_their_line(text: str, problem: ConfigProblem) -> None:
    assert problems_of(text) == [problem]


def test_meshd_check_says_it_does_not_read_the_api(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "meshd.yaml").write_text(K8S + ROUTER)
    report = run_check("meshd.yaml")
    assert (report.errors, report.warnings, report.blocks) == (0, 0, [])
    assert report.notes == [
        "routers[0].routesConfigMap: the routing file is the configmap mesh/meshd-routes key routes.yaml; meshd check "
        "does not read the Kubernetes API: check that text with `meshd check -c <config> --routes <file>`"
    ]
