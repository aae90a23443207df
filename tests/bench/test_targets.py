"""Target configuration: templates, meshd.yaml and discovery files, peer configs, target selection."""

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.targets.base import PEERS_DIR, Backend, Deployment, Service, render
from bench.targets.catalog import Selection
from bench.targets.meshd import MeshdTarget, write_disco
from bench.targets.peers import envoy_endpoints, haproxy_servers, nginx_servers

BACKENDS = (Backend("r0", "127.0.0.1", 8001), Backend("r1", "127.0.0.1", 8002))


def as_json(config: dict[str, object]) -> Any:
    """The config as YAML would carry it (plain JSON types), open to indexing."""
    return json.loads(json.dumps(config))


def test_render_fills_placeholders():
    assert render("listen {{ port }}; {{x}}", {"port": "80", "x": "y"}) == "listen 80; y"


def test_render_refuses_a_placeholder_without_value_or_a_value_without_placeholder():
    with pytest.raises(KeyError):
        render("{{port}} {{missing}}", {"port": "1"})
    with pytest.raises(KeyError):
        render("{{port}}", {"port": "1", "typo": "2"})


def test_nginx_variables_survive_rendering():
    text = render((PEERS_DIR / "nginx.conf.tmpl").read_text(),
                  {"user": "", "workdir": "/w", "listen_port": "9", "servers": nginx_servers(BACKENDS)})
    assert "proxy_set_header Host $host;" in text
    assert "listen 127.0.0.1:9 backlog=4096;" in text
    assert "server 127.0.0.1:8001 max_fails=5 fail_timeout=10s;" in text
    assert "least_conn;" in text and "worker_processes 1;" in text and "{{" not in text


def test_envoy_config_is_valid_yaml_with_one_endpoint_per_replica():
    text = render((PEERS_DIR / "envoy.yaml.tmpl").read_text(),
                  {"listen_port": "9", "admin_port": "10", "endpoints": envoy_endpoints(BACKENDS)})
    config = yaml.safe_load(text)
    cluster = config["static_resources"]["clusters"][0]
    assert cluster["lb_policy"] == "LEAST_REQUEST"
    assert cluster["outlier_detection"]["consecutive_5xx"] == 5
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in endpoints] == [8001, 8002]
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_haproxy_config_has_one_thread_leastconn_and_retry_on():
    text = render((PEERS_DIR / "haproxy.cfg.tmpl").read_text(),
                  {"listen_port": "9", "servers": haproxy_servers(BACKENDS)})
    assert "nbthread 1" in text and "balance leastconn" in text and "retry-on" in text
    assert "    server r1 127.0.0.1:8002" in text
    assert "bind 127.0.0.1:9" in text


def test_meshd_config_follows_the_documented_shape(tmp_path: Path):
    config = as_json(MeshdTarget(balancer="p2c").config(Deployment.single("bench", BACKENDS), port=4140,
                                                        admin_port=9990, disco=tmp_path / "disco"))
    router = config["routers"][0]
    assert config["admin"] == {"ip": "127.0.0.1", "port": 9990}
    assert config["namers"] == [{"kind": "fs", "rootDir": "./disco"}]
    assert router["servers"] == [{"ip": "127.0.0.1", "port": 4140}]
    assert router["identifier"] == {"kind": "header", "header": "host"}
    assert router["dtab"] == "/svc => /#/fs;"
    assert router["client"]["loadBalancer"] == {"kind": "p2c"}
    assert router["service"]["retries"]["budget"] == {"ttlSecs": 10, "minRetriesPerSec": 10, "percentCanRetry": 0.2}


def test_meshd_without_retries_uses_an_empty_budget(tmp_path: Path):
    config = as_json(MeshdTarget(retries=False).config(Deployment.single("bench", BACKENDS), port=1, admin_port=2,
                                                       disco=tmp_path))
    assert config["routers"][0]["service"] == {"retries": {"budget": {"minRetriesPerSec": 0, "percentCanRetry": 0.0}}}


def test_disco_has_one_file_per_service_with_host_port_lines(tmp_path: Path):
    deployment = Deployment(services=(Service(name="a", backends=BACKENDS), Service(name="b", backends=BACKENDS[:1])),
                            healthy=BACKENDS)
    write_disco(deployment, tmp_path)
    assert (tmp_path / "a").read_text() == "127.0.0.1 8001\n127.0.0.1 8002\n"
    assert (tmp_path / "b").read_text() == "127.0.0.1 8001\n"


def test_selection_parses_families_and_drops_meshd_on_request():
    assert Selection.parse("direct, nginx").families == {"direct", "nginx"}
    assert "meshd" not in Selection.parse(None, skip_meshd=True).families
    with pytest.raises(ValueError, match="unknown targets"):
        Selection.parse("direct,apache")


def test_direct_sends_to_healthy_replicas_only():
    deployment = Deployment.single("bench", BACKENDS, healthy=BACKENDS[:1])
    assert deployment.healthy == BACKENDS[:1]
    assert Deployment.single("bench", BACKENDS).healthy == BACKENDS
