"""examples/kubernetes: every manifest is valid for a current Kubernetes, and they fit together."""

from __future__ import annotations

import pathlib
from typing import Any

import kubernetes_validate
import pytest
import yaml

from meshd.config.loader import load_config
from meshd.config.model import MeshdConfig
from meshd.discovery import registry
from meshd.discovery.k8s import K8sNamerConfig
from meshd.transformers import DaemonSetConfig, LocalNodeConfig
from routing.path import Path
from routing.rules import load_routes

MANIFESTS = pathlib.Path(__file__).resolve().parents[2] / "examples" / "kubernetes"
KUBERNETES_MD = MANIFESTS.parents[1] / "docs" / "kubernetes.md"
BANK = ["accounts", "ledger", "payments", "merchants", "feed", "notifications"]
K8S_VERSION = kubernetes_validate.latest_version()


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def find(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(kind: str, name: str) -> dict[str, Any]:
    [doc] = find(kind, name)
    return doc


def config_map() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap", "meshd-config")["data"]
    return data


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_for_a_current_kubernetes(doc: dict[str, Any]) -> None:
    assert tuple(int(x) for x in K8S_VERSION.split(".")[:2]) >= (1, 30)
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_rbac_is_least_privilege_read_only_discovery() -> None:
    role = one("ClusterRole", "meshd")
    granted = {
        (group, resource): sorted(rule["verbs"])
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    read = ["get", "list", "watch"]
    assert granted == {
        ("discovery.k8s.io", "endpointslices"): read,
        ("", "endpoints"): read,
        ("", "services"): read,
        ("", "pods"): read,
    }
    binding = one("ClusterRoleBinding", "meshd")
    assert binding["roleRef"]["name"] == "meshd"
    sa = one("ServiceAccount", "meshd")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "meshd", "namespace": sa["metadata"]["namespace"]}
    ]


def test_rbac_grants_reading_exactly_the_routes_config_map() -> None:
    meshd = yaml.safe_load(one("ConfigMap", "meshd-config")["data"]["meshd.yaml"])
    (cm,) = [r["routesConfigMap"] for r in meshd["routers"] if "routesConfigMap" in r]
    role = one("Role", "meshd-routes")
    assert role["metadata"]["namespace"] == cm["namespace"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [cm["name"]], "verbs": ["get", "list", "watch"]}
    ]
    routes = one("ConfigMap", cm["name"])
    assert routes["metadata"]["namespace"] == cm["namespace"] and cm["key"] in routes["data"]
    binding = one("RoleBinding", "meshd-routes")
    assert binding["metadata"]["namespace"] == cm["namespace"]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "meshd-routes"}
    sa = one("ServiceAccount", "meshd")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "meshd", "namespace": sa["metadata"]["namespace"]}]


def test_embedded_meshd_yaml_and_routes_yaml_parse_and_load(monkeypatch: pytest.MonkeyPatch) -> None:
    data = config_map()
    meshd = yaml.safe_load(data["meshd.yaml"])
    assert meshd["namers"] == [{"kind": "k8s"}]
    routers = {r["label"]: r for r in meshd["routers"]}
    assert [s["port"] for s in routers["outgoing"]["servers"]] == [4140]
    assert [s["port"] for s in routers["incoming"]["servers"]] == [4141]
    assert routers["outgoing"]["dtab"] == "/svc => /#/k8s/bank/http;"
    assert routers["outgoing"]["routesConfigMap"] == {"namespace": "mesh", "name": "meshd-routes", "key": "routes.yaml"}
    # The real loaders accept both files (with the k8s namer kind registered).
    monkeypatch.setitem(registry.NAMERS, "k8s", K8sNamerConfig)
    config = load_config(data["meshd.yaml"], MeshdConfig, source="meshd.yaml")
    assert isinstance(config.namers[0], K8sNamerConfig) and config.namers[0] == K8sNamerConfig()
    routes = load_routes(one("ConfigMap", "meshd-routes")["data"]["routes.yaml"], "routes.yaml")
    assert routes is not None


def test_daemonset_runs_meshd_as_described() -> None:
    ds = one("DaemonSet", "meshd")
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    [container] = spec["containers"]
    meshd = yaml.safe_load(config_map()["meshd.yaml"])
    assert container["command"] == ["meshd", "run", "-c", "/etc/meshd/meshd.yaml"]
    assert spec["serviceAccountName"] == "meshd"
    # Longer than meshd's drain, so SIGKILL never cuts a drain short.
    assert spec["terminationGracePeriodSeconds"] == 45 > meshd["drainTimeoutMs"] / 1000
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    ports = {p["name"]: p for p in container["ports"]}
    assert (ports["outgoing"]["containerPort"], ports["outgoing"]["hostPort"]) == (4140, 4140)
    assert (ports["incoming"]["containerPort"], ports["incoming"]["hostPort"]) == (4141, 4141)
    assert ports["admin"]["containerPort"] == meshd["admin"]["port"] == 9990
    assert container["readinessProbe"]["httpGet"] == {"path": "/admin/ready", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/admin/ping", "port": "admin"}
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9990"
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["NODE_NAME"] == "spec.nodeName" and env["POD_IP"] == "status.podIP"
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    # The whole ConfigMap is mounted (no subPath), so the kubelet's ..data swap reaches meshd.
    [mount] = container["volumeMounts"]
    assert mount["mountPath"] == "/etc/meshd" and "subPath" not in mount
    [volume] = spec["volumes"]
    assert volume["configMap"]["name"] == "meshd-config"


@pytest.mark.parametrize("name", BANK)
def test_bank_service_is_wired_to_its_nodes_meshd(name: str) -> None:
    deployment = one("Deployment", name)
    service = one("Service", name)
    assert deployment["metadata"]["namespace"] == service["metadata"]["namespace"] == "bank"
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "meshd-examples:latest"
    assert container["command"] == ["python", "-m", f"examples.bank.{name}"]
    env = {e["name"]: e for e in container["env"]}
    assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["http_proxy"]["value"] == "http://$(HOST_IP):4140"
    assert "--meshd=http://$(HOST_IP):4140" in container["args"]
    # The Service port is named `http`, the name the dtab /svc => /#/k8s/bank/http uses, and
    # targets the container port of that name.
    [port] = service["spec"]["ports"]
    assert port["name"] == "http" and port["targetPort"] == "http"
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_namespaces_exist_for_everything_namespaced() -> None:
    namespaces = {d["metadata"]["name"] for d in find("Namespace")}
    used = {d["metadata"]["namespace"] for d in documents() if "namespace" in d["metadata"]}
    assert used <= namespaces == {"mesh", "bank"}


def test_daemonset_mode_routes_through_the_meshd_of_the_pods_node() -> None:
    config = load_config(config_map()["meshd.yaml"], MeshdConfig, source="meshd.yaml")
    routers = {r.label: r for r in config.routers}
    [daemonset] = routers["outgoing"].transformers
    assert daemonset == DaemonSetConfig(path="/#/k8s/mesh/incoming/meshd", fallback="direct")
    assert routers["incoming"].transformers == (LocalNodeConfig(node_name=None, fallback="all"),)
    # The path is a k8s name (/#/k8s/<namespace>/<port>/<service>) of a Service selecting the
    # DaemonSet's pods, whose port of that name reaches the incoming router's container port.
    path = Path.read(daemonset.path)
    assert path.starts_with(Path.read(K8sNamerConfig().prefix))
    namespace, port_name, name = path[2], path[3], path[4]
    svc = one("Service", name)
    ds = one("DaemonSet", "meshd")
    assert svc["metadata"]["namespace"] == ds["metadata"]["namespace"] == namespace
    assert svc["spec"]["clusterIP"] == "None"  # headless: meshd talks to the meshd pods themselves
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    [svc_port] = [p for p in svc["spec"]["ports"] if p["name"] == port_name]
    [container] = ds["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[svc_port["targetPort"]] == routers["incoming"].servers[0].port == 4141
    # localnode reads NODE_NAME, which the DaemonSet sets from the pod's node.
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    assert env["NODE_NAME"] == "spec.nodeName"
    # Other meshds (pod IPs) are trusted by the incoming router, as the applications are by outgoing.
    assert set(routers["outgoing"].trusted_sources) <= set(routers["incoming"].trusted_sources)
    assert "10.0.0.0/8" in routers["incoming"].trusted_sources


def test_daemonset_example_in_the_docs_matches_the_manifest() -> None:
    text = KUBERNETES_MD.read_text()
    block = text.split("<!-- daemonset-example -->", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    documented = load_config(block, MeshdConfig, source="docs/kubernetes.md")
    shipped = load_config(config_map()["meshd.yaml"], MeshdConfig, source="meshd.yaml")
    for doc_router, real_router in zip(documented.routers, shipped.routers, strict=True):
        assert doc_router.label == real_router.label
        assert doc_router.transformers == real_router.transformers
        assert doc_router.trusted_sources == real_router.trusted_sources
        assert doc_router.dtab == real_router.dtab
        assert [s.port for s in doc_router.servers] == [s.port for s in real_router.servers]
