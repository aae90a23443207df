"""examples/kubernetes/mtls: the DaemonSet-mode manifests with mutual TLS between nodes are valid,
load as meshd config, and mount what the config names."""

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
from meshd.transformers import DaemonSetConfig
from routing.path import Path

MTLS = pathlib.Path(__file__).resolve().parents[2] / "examples" / "kubernetes" / "mtls"
K8S_VERSION = kubernetes_validate.latest_version()


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(MTLS.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_for_a_current_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_node_to_node_hop_is_mutual_tls_with_the_mounted_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    [config_map] = [d for d in documents() if d["kind"] == "ConfigMap"]
    [daemonset] = [d for d in documents() if d["kind"] == "DaemonSet"]
    monkeypatch.setitem(registry.NAMERS, "k8s", K8sNamerConfig)
    config = load_config(config_map["data"]["meshd.yaml"], MeshdConfig, source="meshd.yaml")
    routers = {r.label: r for r in config.routers}
    incoming = routers["incoming"].servers[0].tls
    assert incoming is not None and incoming.require_client_cert and incoming.ca_path
    client = routers["outgoing"].client.tls
    assert client is not None and client.cert_path and client.key_path and client.ca_path
    # HTTP/2 between the meshds, HTTP/1.1 with the applications and the services on each node
    outgoing, incoming_router = routers["outgoing"], routers["incoming"]
    assert (outgoing.protocol, outgoing.upstream_protocol(outgoing.client)) == ("http", "h2")
    assert (incoming_router.protocol, incoming_router.upstream_protocol(incoming_router.client)) == ("h2", "http")
    assert incoming_router.h2.accept_http1
    # every forwarded request goes to a meshd (a pod without one would not speak TLS, nor HTTP/2)
    [transformer] = routers["outgoing"].transformers
    assert isinstance(transformer, DaemonSetConfig) and transformer.fallback == "drop"
    # only the meshds' identity may deliver to the incoming router
    policy = routers["incoming"].authorization
    assert policy is not None
    built = policy.build()
    assert built.denied_by(Path.read("/svc/ledger"), "spiffe://cluster.local/ns/mesh/sa/meshd") is None
    assert built.denied_by(Path.read("/svc/ledger"), "spiffe://cluster.local/ns/bank/sa/payments") == "meshds-only"
    # the files the config names are in the mounted Secret (mounted whole: rotation reaches meshd)
    spec = daemonset["spec"]["template"]["spec"]
    [container] = spec["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "meshd-tls" and "subPath" not in mounts["tls"]
    directory = mounts["tls"]["mountPath"]
    for path in (incoming.cert_path, incoming.key_path, incoming.ca_path, client.cert_path, client.key_path):
        assert path is not None and path.startswith(directory + "/")
        assert pathlib.PurePosixPath(path).name in ("tls.crt", "tls.key", "ca.crt")
    # meshd (uid 10001) can read the Secret's files
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
