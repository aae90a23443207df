"""K8sNamerConfig: defaults, validation, connection mode, and the lazy kubernetes_asyncio import."""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancers.backoff import ExponentialBackoffConfig
from meshd.discovery.k8s import K8sBackoffConfig, K8sMetrics, K8sNamer, K8sNamerConfig, KubeApiError
from meshd.exposition import Registry
from meshd.runtime import Runtime
from routing.path import Path

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_defaults_follow_linkerd_and_the_brief():
    cfg = K8sNamerConfig()
    assert K8sNamerConfig.KIND == "k8s"
    assert (cfg.prefix, cfg.watch_timeout_secs, cfg.idle_ttl_secs) == ("/#/k8s", 300, 600.0)
    assert cfg.backoff == K8sBackoffConfig(min_ms=100, max_ms=30_000)
    assert cfg.use_endpoint_slices is None and cfg.in_cluster is None
    namer = cfg.build(Runtime(registry=Registry()))
    assert isinstance(namer, K8sNamer) and namer.prefix == Path.read("/#/k8s")
    assert namer.version.get() == 0


def test_config_is_frozen_slotted_and_keyword_only():
    cfg = K8sNamerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.prefix = "/#/x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        K8sNamerConfig("/#/k8s")  # type: ignore[call-arg]
    assert not hasattr(cfg, "__dict__")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prefix": "k8s"}, "prefix"),
    ({"api_url": "localhost:8001"}, "apiUrl"),
    ({"api_url": "http://127.0.0.1:8001", "in_cluster": True}, "apiUrl cannot"),
    ({"api_url": "http://127.0.0.1:8001", "kubeconfig": "x"}, "apiUrl cannot"),
    ({"in_cluster": True, "context": "prod"}, "inCluster"),
    ({"watch_timeout_secs": 0}, "watchTimeoutSecs"),
    ({"request_timeout_secs": 0}, "requestTimeoutSecs"),
    ({"idle_ttl_secs": -1}, "idleTtlSecs"),
])
def test_bad_values_are_plain_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        K8sNamerConfig(**kwargs)


def test_backoff_validation():
    with pytest.raises(ValueError, match="minMs"):
        K8sBackoffConfig(min_ms=0)
    with pytest.raises(ValueError, match="maxMs"):
        K8sBackoffConfig(min_ms=100, max_ms=10)


@settings(max_examples=100, deadline=None)
@given(min_ms=st.integers(1, 5000), span=st.integers(0, 100_000), seed=st.integers(0, 2**32))
def test_reconnect_backoff_is_the_one_modules_exponential_kind(min_ms, span, seed):
    # Discovery backs off with the same code as retries and failure accrual: equal jitter from
    # minMs, each failure in a row in [minMs * 2**(k-1), minMs * 2**k), then maxMs.
    ours = K8sBackoffConfig(min_ms=min_ms, max_ms=min_ms + span).build(random.Random(seed))
    kind = ExponentialBackoffConfig(start_ms=min_ms, max_ms=min_ms + span).build(random.Random(seed))
    assert list(itertools.islice(ours.delays(), 40)) == list(itertools.islice(kind.delays(), 40))


def test_connection_mode(tmp_path: pathlib.Path):
    sa = tmp_path / "sa"
    sa.mkdir()
    in_pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert K8sNamerConfig().connection_mode(in_pod, sa) == "kubeconfig"  # no token file
    (sa / "token").write_text("t")
    assert K8sNamerConfig().connection_mode(in_pod, sa) == "in_cluster"
    assert K8sNamerConfig().connection_mode({}, sa) == "kubeconfig"
    assert K8sNamerConfig(kubeconfig="kc").connection_mode(in_pod, sa) == "kubeconfig"
    assert K8sNamerConfig(in_cluster=False).connection_mode(in_pod, sa) == "kubeconfig"
    assert K8sNamerConfig(in_cluster=True).connection_mode({}, sa) == "in_cluster"
    assert K8sNamerConfig(api_url="http://127.0.0.1:8001").connection_mode(in_pod, sa) == "url"


async def test_missing_kubeconfig_fails_at_start_with_a_clear_error(tmp_path: pathlib.Path):
    runtime = Runtime(registry=Registry(), base_dir=tmp_path)
    namer = K8sNamerConfig(kubeconfig="missing.yaml").build(runtime)
    with pytest.raises(KubeApiError, match="cannot load Kubernetes client configuration") as err:
        await namer.start()
    assert err.value.code == "config"
    await namer.close()


async def test_api_url_mode_talks_plain_http_without_a_token():
    from tests.support.k8s_api import FakeKubeApi, service, service_port

    async with FakeKubeApi(token=None) as api:
        api.apply(service("shop", "web", [service_port("http", 80)]))
        namer = K8sNamerConfig(api_url=api.url).build(Runtime(registry=Registry()))
        await namer.start()
        try:
            assert namer.lookup(Path.read("/shop/grpc/web")) is None
            await namer.version.wait_for(lambda v: v > 0)
            assert "Authorization" not in api.requests[-1].headers
        finally:
            await namer.close()


def test_two_namers_on_one_registry_share_the_metrics():
    registry = Registry()
    assert K8sMetrics.on(registry) is K8sMetrics.on(registry)
    K8sNamerConfig().build(Runtime(registry=registry))
    K8sNamerConfig(prefix="/#/k8s-other").build(Runtime(registry=registry))


def test_kubernetes_asyncio_is_imported_only_when_the_namer_connects():
    code = (
        "import sys\n"
        "from meshd.exposition import Registry\n"
        "from meshd.discovery.k8s import K8sNamerConfig\n"
        "from meshd.runtime import Runtime\n"
        "K8sNamerConfig().build(Runtime(registry=Registry()))\n"
        "assert 'kubernetes_asyncio' not in sys.modules, 'imported too early'\n"
        "import meshd.discovery.k8s_client\n"
        "assert 'kubernetes_asyncio' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_yaml_example_loads_into_the_config_class():
    from meshd.config.loader import load_config

    text = """
prefix: /#/kube
kubeconfig: ./kubeconfig
context: staging
watchTimeoutSecs: 120
requestTimeoutSecs: 10
idleTtlSecs: 60
useEndpointSlices: false
backoff: {minMs: 50, maxMs: 5000}
"""
    cfg = load_config(text, K8sNamerConfig)
    assert cfg == K8sNamerConfig(prefix="/#/kube", kubeconfig="./kubeconfig", context="staging",
                                 watch_timeout_secs=120, request_timeout_secs=10.0, idle_ttl_secs=60.0,
                                 use_endpoint_slices=False, backoff=K8sBackoffConfig(min_ms=50, max_ms=5000))
